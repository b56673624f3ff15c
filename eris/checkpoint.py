"""A checkpoint is a directory: ``model.safetensors``, ``config.json``, ``tokenizer.json``,
and ``meta.json`` (training arguments, metrics, anything JSON). It rebuilds its own model.

Files are written to temporary names and renamed, so an interrupted save never leaves a
half-written checkpoint behind under the final names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from eris.builder import build_model, build_tokenizer
from eris.config import ErisConfig
from eris.model import ERIS
from eris.text.tokenizer import PhraseTokenizer
from pi_runtime.files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_FILES"]

CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json", "meta.json")


def save_checkpoint(model: ERIS, out_dir: str | Path, tokenizer: PhraseTokenizer | None = None,
                    meta: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Writes the model's weights (``dtype`` for floating tensors), config, tokenizer and ``meta``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    tokenizer = tokenizer or build_tokenizer(model.config)
    atomic_write(out / "model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"}))
    atomic_write(out / "config.json", lambda p: model.config.save(p))
    atomic_write(out / "tokenizer.json", lambda p: shutil.copyfile(tokenizer.path, p))
    atomic_write(out / "meta.json", lambda p: Path(p).write_text(json.dumps(meta or {}, indent=2) + "\n"))
    return out


def load_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[ERIS, PhraseTokenizer, dict]:
    """``(model in eval mode, its tokenizer, meta)``; errors name the missing or bad file."""
    d = Path(ckpt_dir)
    for name in CHECKPOINT_FILES:
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name}: missing from checkpoint directory")
    config = ErisConfig.load(d / "config.json")
    model = build_model(config, pretrained=False)
    state = load_file(str(d / "model.safetensors"))
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{d / 'model.safetensors'}: does not match {d / 'config.json'} "
                         f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
    meta = json.loads((d / "meta.json").read_text())
    return model.to(device).eval(), PhraseTokenizer(d / "tokenizer.json", config.max_tokens), meta
