"""The bundle: a directory the Pi runtime loads, described by ``manifest.json``.

Reading and checking bundles lives here, on the device side (numpy, tokenizers, onnxruntime;
no torch); ``convert`` writes bundles with :func:`write_manifest` and ``python -m convert.verify``
calls :func:`verify_bundle`, so both sides agree on one format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pi_runtime.files import atomic_write_bytes

__all__ = ["FORMAT_VERSION", "BundleError", "sha256", "write_manifest", "load_manifest", "validate_manifest",
           "check_files", "check_graph_io", "verify_bundle", "MANIFEST_HASH"]

FORMAT_VERSION = 1
MANIFEST_HASH = "manifest.sha256"   # sha256 of manifest.json itself, sha256sum's format
TEXT_INPUTS = ["input_ids", "attention_mask"]
_HEX = set("0123456789abcdef")


class BundleError(RuntimeError):
    """A bundle file is missing, corrupted or does not match its manifest (the message names it)."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(bundle: Path, manifest: dict) -> Path:
    """Fills ``files`` with the sha256 of every listed file, checks the result against the schema,
    and writes ``manifest.json`` and its own hash (``manifest.sha256``) atomically."""
    manifest = dict(manifest)
    manifest["files"] = {name: {"sha256": sha256(bundle / name), "bytes": (bundle / name).stat().st_size}
                         for name in sorted(manifest["files"])}
    validate_manifest(manifest, bundle / "manifest.json")
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    path = atomic_write_bytes(bundle / "manifest.json", data)
    atomic_write_bytes(bundle / MANIFEST_HASH, f"{hashlib.sha256(data).hexdigest()}  manifest.json\n".encode())
    return path


def _plain(name) -> bool:
    """A single file-name component: no directories, no parent, not absolute, no NUL."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\x00")
            and not name.startswith("~"))


class _Schema:
    """Checks one manifest, naming the first key that is wrong (``graphs.image.int8.file: ...``)."""

    def __init__(self, manifest: dict, where: Path):
        self.m, self.where = manifest, where

    def fail(self, key: str, problem: str):
        raise BundleError(f"{self.where}: {key}: {problem}")

    def get(self, key: str, kind, parent=None):
        node = self.m if parent is None else parent
        name = key.rsplit(".", 1)[-1]
        if not isinstance(node, dict) or name not in node:
            self.fail(key, "missing")
        value = node[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if value is None or isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            self.fail(key, f"must be {' or '.join(k.__name__ for k in kinds)}, got {json.dumps(value)[:40]}")
        return value

    def number(self, key, parent, lo, hi, integer=False, exclusive=False):
        v = self.get(key, int if integer else (int, float), parent)
        if (v <= lo or v >= hi) if exclusive else (v < lo or v > hi):
            self.fail(key, f"{v} is out of range ({'(' if exclusive else '['}{lo}, {hi}{')' if exclusive else ']'})")
        return v

    def name(self, key, parent):
        v = self.get(key, str, parent)
        if not _plain(v):
            self.fail(key, f"{v!r} must be a plain file name inside the bundle")
        return v

    def names(self, key, parent):
        v = self.get(key, list, parent)
        if not v or not all(isinstance(x, str) and x for x in v) or len(set(v)) != len(v):
            self.fail(key, "must be a non-empty list of distinct names")
        return v


def _validate_category_check(s: "_Schema", spec: dict) -> str:
    """The optional crop classifier (pi_runtime.categories): its file, classes, the nouns that
    name them, and the rule's numbers."""
    file = s.name("category_check.file", spec)
    classes = s.names("category_check.classes", spec)
    nouns = s.get("category_check.nouns", dict, spec)
    if not nouns:
        s.fail("category_check.nouns", "must name at least one noun")
    for noun, named in nouns.items():
        if not isinstance(named, list) or not named or not all(isinstance(c, str) and c in classes for c in named):
            s.fail(f"category_check.nouns.{noun}", "must be a non-empty list of the classes")
    s.number("category_check.share", spec, 0, 1)
    s.number("category_check.power", spec, 0, 10)
    if "pick_power" in spec:
        s.number("category_check.pick_power", spec, 0, 10)
    s.number("category_check.found_min", spec, 0, 1)
    return file


def validate_manifest(manifest, where: Path | str = "manifest.json") -> None:
    """Types, ranges and required keys of a manifest; graph and tokenizer paths must be plain
    names listed (and hashed) in ``files``. :class:`BundleError` names the wrong key."""
    where = Path(where)
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: must hold a JSON object")
    s = _Schema(manifest, where)
    version = s.get("format_version", int)
    if version != FORMAT_VERSION:
        s.fail("format_version", f"bundle format version {version}, this code reads version {FORMAT_VERSION}")
    pre = s.get("preprocessing", dict)
    divisor = s.number("preprocessing.size_divisor", pre, 1, 256, integer=True)
    long_side = s.number("preprocessing.long_side", pre, 2 * divisor, 8192, integer=True)
    if long_side % divisor:
        s.fail("preprocessing.long_side", f"{long_side} is not a multiple of size_divisor {divisor}")
    for key in ("mean", "std"):
        v = s.get(f"preprocessing.{key}", list, pre)
        if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            s.fail(f"preprocessing.{key}", "must be three numbers")
        if key == "std" and min(v) <= 0:
            s.fail("preprocessing.std", "must be positive")
    tok = s.get("tokenizer", dict)
    tok_file = s.name("tokenizer.file", tok)
    s.number("tokenizer.max_tokens", tok, 3, 4096, integer=True)
    out = s.get("output", dict)
    stride = s.number("output.stride", out, 1, divisor, integer=True)
    if divisor % stride:
        s.fail("output.stride", f"{stride} does not divide size_divisor {divisor}")
    s.number("output.threshold", out, 0, 1, exclusive=True)
    if "found_threshold" in out:
        s.number("output.found_threshold", out, 0, 1, exclusive=True)
    graphs = s.get("graphs", dict)
    graph_files = {}
    if "text" in graphs or "image" in graphs or "litert" not in graphs:
        graph_files.update(_validate_onnx_graphs(s, graphs))
    if "litert" in graphs:
        graph_files.update(_validate_litert_graphs(s, graphs))
    if "category_check" in manifest:
        graph_files["category_check.file"] = _validate_category_check(s, s.get("category_check", dict))
    files = s.get("files", dict)
    for name, info in files.items():
        if not _plain(name):
            s.fail("files", f"{name!r} must be a plain file name inside the bundle")
        if not isinstance(info, dict):
            s.fail(f"files.{name}", "must be an object with sha256 and bytes")
        digest = s.get(f"files.{name}.sha256", str, info)
        if len(digest) != 64 or not set(digest) <= _HEX:
            s.fail(f"files.{name}.sha256", "must be 64 lowercase hex digits")
        s.number(f"files.{name}.bytes", info, 0, 1 << 40, integer=True)
    for key, name in [*graph_files.items(), ("tokenizer.file", tok_file)]:
        if name not in files:
            s.fail(key, f"{name} is not listed (with its sha256) in files")


def _validate_image_inputs(s: "_Schema", images: dict, key: str, text_outputs: list[str], graph_files: dict) -> None:
    if not images:
        s.fail(key, "lists no image graph")
    first_inputs = None
    for precision, spec in images.items():
        k = f"{key}.{precision}"
        s.get(k, dict, images)
        graph_files[f"{k}.file"] = s.name(f"{k}.file", spec)
        inputs = s.names(f"{k}.inputs", spec)
        missing = [n for n in ["image", *text_outputs] if n not in inputs]
        if missing:
            s.fail(f"{k}.inputs", f"lacks {missing} (the image graph takes the image and the text graph's outputs)")
        extra = sorted(set(inputs) - {"image", *text_outputs, *TEXT_INPUTS})
        if extra:
            s.fail(f"{k}.inputs", f"{extra} come from neither the image nor the text graph")
        if first_inputs is not None and sorted(inputs) != first_inputs:
            s.fail(f"{k}.inputs", "differ from the other image graphs' (they share one text graph)")
        first_inputs = sorted(inputs)
        s.names(f"{k}.outputs", spec)


def _validate_onnx_graphs(s: "_Schema", graphs: dict) -> dict:
    text = s.get("graphs.text", dict, graphs)
    graph_files = {"graphs.text.file": s.name("graphs.text.file", text)}
    if s.names("graphs.text.inputs", text) != TEXT_INPUTS:
        s.fail("graphs.text.inputs", f"must be {TEXT_INPUTS}")
    text_outputs = s.names("graphs.text.outputs", text)
    _validate_image_inputs(s, s.get("graphs.image", dict, graphs), "graphs.image", text_outputs, graph_files)
    return graph_files


def _validate_signature(s: "_Schema", key: str, spec: dict) -> None:
    """A LiteRT graph's static signature: names, shapes and dtypes, one per manifest input/output."""
    for side in ("inputs", "outputs"):
        names = s.names(f"{key}.{side}", spec)
        sig = s.names(f"{key}.signature_{side}", spec)
        shapes = s.get(f"{key}.{side[:-1]}_shapes", list, spec)
        if len(sig) != len(names) or len(shapes) != len(names):
            s.fail(f"{key}.signature_{side}", f"must name one signature tensor and shape per {side[:-1]}")
        if not all(isinstance(d, list) and d and all(isinstance(x, int) and x > 0 for x in d) for d in shapes):
            s.fail(f"{key}.{side[:-1]}_shapes", "must be lists of positive integers")
    dtypes = s.get(f"{key}.input_dtypes", list, spec)
    if len(dtypes) != len(spec["inputs"]) or not set(dtypes) <= {"uint8", "int32", "int64", "float32"}:
        s.fail(f"{key}.input_dtypes", "must give one of uint8, int32, int64, float32 per input")


def _validate_litert_graphs(s: "_Schema", graphs: dict) -> dict:
    lite = s.get("graphs.litert", dict, graphs)
    hw = s.get("graphs.litert.input_hw", list, lite)
    if len(hw) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in hw):
        s.fail("graphs.litert.input_hw", "must be [height, width] in pixels")
    text = s.get("graphs.litert.text", dict, lite)
    graph_files = {"graphs.litert.text.file": s.name("graphs.litert.text.file", text)}
    if s.names("graphs.litert.text.inputs", text) != TEXT_INPUTS:
        s.fail("graphs.litert.text.inputs", f"must be {TEXT_INPUTS}")
    _validate_signature(s, "graphs.litert.text", text)
    images = s.get("graphs.litert.image", dict, lite)
    _validate_image_inputs(s, images, "graphs.litert.image", text["outputs"], graph_files)
    for precision, spec in images.items():
        _validate_signature(s, f"graphs.litert.image.{precision}", spec)
        if spec["input_shapes"][spec["inputs"].index("image")][1:3] != hw:
            s.fail(f"graphs.litert.image.{precision}.input_shapes", f"image is not {hw} (graphs.litert.input_hw)")
    return graph_files


def load_manifest(bundle: str | Path) -> dict:
    """The parsed manifest; :class:`BundleError` naming the file if it is missing, not JSON or of
    another format version."""
    path = Path(bundle) / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{path}: missing; not a bundle directory")
    data = path.read_bytes()
    hash_path = path.parent / MANIFEST_HASH
    if not hash_path.is_file():
        raise BundleError(f"{hash_path}: missing; the manifest's own checksum is needed to trust it "
                          f"(rebuild the bundle with python -m convert)")
    recorded = hash_path.read_text(errors="replace").split()[:1]
    if recorded != [hashlib.sha256(data).hexdigest()]:
        raise BundleError(f"{path}: checksum mismatch with {MANIFEST_HASH} (manifest edited or corrupted)")
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    validate_manifest(manifest, path)
    return manifest


def check_files(bundle: Path, manifest: dict) -> None:
    """Every file the manifest lists exists and has its recorded sha256."""
    for name, info in manifest["files"].items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{path}: listed in manifest.json but missing")
        if sha256(path) != info["sha256"]:
            raise BundleError(f"{path}: checksum mismatch (file corrupted or replaced)")


def check_graph_io(session, path: Path, spec: dict, role: str) -> None:
    """The loaded graph's input and output names are the manifest's (a swapped or foreign graph is
    refused here, before any frame runs)."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if sorted(inputs) != sorted(spec["inputs"]) or outputs != spec["outputs"]:
        raise BundleError(f"{path}: not the {role} graph manifest.json describes: its inputs/outputs "
                          f"{inputs} -> {outputs} differ from {spec['inputs']} -> {spec['outputs']}")


def _check_graph(path: Path, spec: dict, role: str):
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for bad files
        raise BundleError(f"{path}: onnxruntime cannot load it ({exc})") from exc
    check_graph_io(session, path, spec, role)
    return session


def phrase_tensors(attention_mask: np.ndarray, text_outputs: list[str], values) -> dict:
    """Every phrase-side tensor an image graph may take: the text graph's outputs by name, and
    the tokenizer's ``attention_mask`` (image graphs of bundles exported before the text graph
    was the encoder alone take it)."""
    return {"attention_mask": attention_mask, **dict(zip(text_outputs, values))}


def phrase_feeds(inputs: list[str], phrase: dict) -> dict:
    """The phrase tensors an image graph's manifest ``inputs`` name (all but ``image``)."""
    return {n: phrase[n] for n in inputs if n != "image"}


def image_feeds(inputs: list[str], image: np.ndarray, phrase: dict) -> dict:
    """The image graph's feeds: ``image`` plus the phrase tensors its manifest ``inputs`` name."""
    return {"image": image, **phrase_feeds(inputs, phrase)}


def verify_bundle(bundle: str | Path) -> dict:
    """Checks checksums, graph inputs/outputs against the manifest, and runs one sample through
    every image graph: ``{precision: logits shape}`` for ONNX, ``{"litert_<precision>": ...}``
    for ``.tflite`` (``"skipped: ..."`` where no LiteRT package is installed). Raises
    :class:`BundleError`."""
    from tokenizers import Tokenizer

    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    check_files(bundle, manifest)
    tok = Tokenizer.from_file(str(bundle / manifest["tokenizer"]["file"]))
    ids = np.array([tok.encode("the red circle on the left").ids], np.int64)
    mask = np.ones_like(ids)
    graphs, stride = manifest["graphs"], manifest["output"]["stride"]
    shapes = {}

    def check_logits(logits, path: Path, hw) -> list:
        if logits.shape != (1, 1, hw[0] // stride, hw[1] // stride) or not np.isfinite(logits).all():
            raise BundleError(f"{path}: unexpected output {logits.shape} for a {hw[0]}x{hw[1]} image")
        return list(logits.shape)

    if "text" in graphs:
        text_spec = graphs["text"]
        text = _check_graph(bundle / text_spec["file"], text_spec, "text").run(
            None, {"input_ids": ids, "attention_mask": mask})
        d = manifest["preprocessing"]["size_divisor"]
        image = np.zeros((1, 2 * d, 3 * d, 3), np.uint8)
        for precision, spec in graphs["image"].items():
            session = _check_graph(bundle / spec["file"], spec, f"{precision} image")
            feeds = image_feeds(spec["inputs"], image, phrase_tensors(mask, text_spec["outputs"], text))
            shapes[precision] = check_logits(session.run(None, feeds)[0], bundle / spec["file"], image.shape[1:3])
    if "litert" in graphs:
        from pi_runtime.litert import INSTALL_HINT, LiteRTGraph, interpreter_package

        lite = graphs["litert"]
        if interpreter_package() is None:
            return {**shapes, **{f"litert_{p}": f"skipped: {INSTALL_HINT}" for p in lite["image"]}}
        n = int(manifest["tokenizer"]["max_tokens"])
        padded, pmask = np.zeros((1, n), np.int64), np.zeros((1, n), np.int64)
        padded[0, :min(n, ids.shape[1])] = ids[0, :n]
        pmask[0, :min(n, ids.shape[1])] = 1
        text_spec = lite["text"]
        text = LiteRTGraph(bundle / text_spec["file"], text_spec, 1, "text").run(
            None, {"input_ids": padded, "attention_mask": pmask})
        image = np.zeros((1, *lite["input_hw"], 3), np.uint8)
        for precision, spec in lite["image"].items():
            graph = LiteRTGraph(bundle / spec["file"], spec, 1, f"{precision} image")
            feeds = image_feeds(spec["inputs"], image, phrase_tensors(pmask, text_spec["outputs"], text))
            shapes[f"litert_{precision}"] = check_logits(graph.run(None, feeds)[0], bundle / spec["file"],
                                                         lite["input_hw"])
    return shapes
