"""ERIS referring image segmentation, training side (PyTorch).

The names below load on first use (PEP 562), so a module of this package that needs no torch
(``eris.scaling``'s onnxruntime worker, which measures onnxruntime's own memory) can run
without importing it.
"""

from importlib import import_module

_HOMES = {"build_model": "eris.builder", "build_tokenizer": "eris.builder",
          "load_checkpoint": "eris.checkpoint", "save_checkpoint": "eris.checkpoint",
          "CONFIGS": "eris.config", "ErisConfig": "eris.config", "get_config": "eris.config",
          "ERIS": "eris.model", "ErisOutput": "eris.model", "TextFeatures": "eris.model"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'eris' has no attribute {name!r}")
