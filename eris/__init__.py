"""ERIS referring image segmentation, training side (PyTorch)."""

from eris.builder import build_model, build_tokenizer
from eris.checkpoint import load_checkpoint, save_checkpoint
from eris.config import CONFIGS, ErisConfig, get_config
from eris.model import ERIS, ErisOutput, TextFeatures

__all__ = ["CONFIGS", "ERIS", "ErisConfig", "ErisOutput", "TextFeatures", "build_model", "build_tokenizer",
           "get_config", "load_checkpoint", "save_checkpoint"]
