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

__all__ = ["FORMAT_VERSION", "BundleError", "sha256", "write_manifest", "load_manifest", "check_files", "verify_bundle"]

FORMAT_VERSION = 1


class BundleError(RuntimeError):
    """A bundle file is missing, corrupted or does not match its manifest (the message names it)."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(bundle: Path, manifest: dict) -> Path:
    """Fills ``files`` with the sha256 of every listed file and writes ``manifest.json`` atomically."""
    manifest = dict(manifest)
    manifest["files"] = {name: {"sha256": sha256(bundle / name), "bytes": (bundle / name).stat().st_size}
                         for name in sorted(manifest["files"])}
    return atomic_write_bytes(bundle / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())


def load_manifest(bundle: str | Path) -> dict:
    """The parsed manifest; :class:`BundleError` naming the file if it is missing, not JSON or of
    another format version."""
    path = Path(bundle) / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{path}: missing; not a bundle directory")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version!r}, this code reads version {FORMAT_VERSION}")
    return manifest


def check_files(bundle: Path, manifest: dict) -> None:
    """Every file the manifest lists exists and has its recorded sha256."""
    for name, info in manifest["files"].items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{path}: listed in manifest.json but missing")
        if sha256(path) != info["sha256"]:
            raise BundleError(f"{path}: checksum mismatch (file corrupted or replaced)")


def _check_graph(path: Path, spec: dict):
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for bad files
        raise BundleError(f"{path}: onnxruntime cannot load it ({exc})") from exc
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != spec["inputs"] or outputs != spec["outputs"]:
        raise BundleError(f"{path}: inputs/outputs {inputs} -> {outputs} differ from manifest.json's "
                          f"{spec['inputs']} -> {spec['outputs']}")
    return session


def verify_bundle(bundle: str | Path) -> dict:
    """Checks checksums, graph inputs/outputs against the manifest, and runs one sample through
    every precision. Returns ``{precision: logits shape}``; raises :class:`BundleError`."""
    from tokenizers import Tokenizer

    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    check_files(bundle, manifest)
    tok = Tokenizer.from_file(str(bundle / manifest["tokenizer"]["file"]))
    enc = tok.encode("the red circle on the left")
    ids = np.array([enc.ids], np.int64)
    mask = np.array([enc.attention_mask], np.int64)
    text_spec = manifest["graphs"]["text"]
    text = _check_graph(bundle / text_spec["file"], text_spec).run(None, {"input_ids": ids, "attention_mask": mask})
    d = manifest["preprocessing"]["size_divisor"]
    image = np.zeros((1, 2 * d, 3 * d, 3), np.uint8)
    shapes = {}
    for precision, spec in manifest["graphs"]["image"].items():
        session = _check_graph(bundle / spec["file"], spec)
        feeds = {"image": image, "attention_mask": mask, **dict(zip(text_spec["outputs"], text))}
        logits = session.run(None, feeds)[0]
        stride = manifest["output"]["stride"]
        if logits.shape != (1, 1, 2 * d // stride, 3 * d // stride) or not np.isfinite(logits).all():
            raise BundleError(f"{bundle / spec['file']}: unexpected output {logits.shape} for a {2 * d}x{3 * d} image")
        shapes[precision] = list(logits.shape)
    return shapes
