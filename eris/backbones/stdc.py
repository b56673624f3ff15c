"""STDC backbones (Fan et al., CVPR 2021, "Rethinking BiSeNet For Real-time Semantic Segmentation").

``stdc1`` is STDC-Seg's ``STDCNet813`` (stages of [2, 2, 2] CatBottlenecks) and ``stdc2`` its
``STDCNet1446`` ([4, 5, 3]). Layers sit in one ``features`` Sequential with the official
indices, so an official ImageNet checkpoint loads by key with :func:`load_imagenet_weights`.
The classifier (``conv_last``, ``fc``, ``bn``, ``linear``) is not built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["STDCNet", "FeatureInfo", "build_stdc", "load_imagenet_weights", "STDC_LAYERS"]

STDC_LAYERS = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}
IGNORED_CHECKPOINT_PREFIXES = ("fc.", "bn.", "linear.", "conv_last.")


@dataclass(frozen=True)
class FeatureInfo:
    """One output level: its channels and its stride (reduction) relative to the input."""

    channels: int
    reduction: int


class ConvX(nn.Module):
    """Conv-BN-ReLU, STDC's basic unit."""

    def __init__(self, in_planes: int, out_planes: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class CatBottleneck(nn.Module):
    """Short-Term Dense Concatenate module: channels halve block by block, outputs concatenated.

    A stride-2 block downsamples the first block's output with a depthwise 3x3 (``avd_layer``)
    before the second block and skips it through a 3x3 average pool into the concatenation.
    """

    def __init__(self, in_planes: int, out_planes: int, block_num: int = 4, stride: int = 1):
        super().__init__()
        self.stride = stride
        if stride == 2:
            half = out_planes // 2
            self.avd_layer = nn.Sequential(
                nn.Conv2d(half, half, 3, 2, 1, groups=half, bias=False),
                nn.BatchNorm2d(half),
            )
            self.skip = nn.AvgPool2d(3, 2, 1)
        self.conv_list = nn.ModuleList()
        for idx in range(block_num):
            if idx == 0:
                self.conv_list.append(ConvX(in_planes, out_planes // 2, kernel=1))
            elif idx == 1 and block_num == 2:
                self.conv_list.append(ConvX(out_planes // 2, out_planes // 2))
            elif idx == 1:
                self.conv_list.append(ConvX(out_planes // 2, out_planes // 4))
            elif idx < block_num - 1:
                self.conv_list.append(ConvX(out_planes // 2 ** idx, out_planes // 2 ** (idx + 1)))
            else:
                self.conv_list.append(ConvX(out_planes // 2 ** idx, out_planes // 2 ** idx))

    def forward(self, x: Tensor) -> Tensor:
        out1 = self.conv_list[0](x)
        out = self.avd_layer(out1) if self.stride == 2 else out1
        outs = [self.skip(out1) if self.stride == 2 else out1]
        for conv in self.conv_list[1:]:
            out = conv(out)
            outs.append(out)
        return torch.cat(outs, dim=1)


class StagedBackbone(nn.Module):
    """What ERIS needs of a backbone: ``forward_stem``, ``forward_stage(i, x)`` for the stages
    ending at strides 8, 16, 32, and ``feature_info``; ``forward`` runs them without fusion."""

    stage_bounds: list[tuple[int, int]]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Plain backbone pass (no fusion): features at strides 8, 16, 32."""
        x = self.forward_stem(x)
        outs = []
        for i in range(len(self.stage_bounds)):
            x = self.forward_stage(i, x)
            outs.append(x)
        return outs


class STDCNet(StagedBackbone):
    """STDC feature extractor run stage by stage.

    ``stem`` is ``features[0:2]`` (stride 4); stage ``i`` of ``stage_bounds`` ends at strides
    8, 16 and 32 with ``base * 4, * 8, * 16`` channels (256/512/1024 for base 64). ERIS fuses
    text after each stage, so the model calls :meth:`forward_stem` and :meth:`forward_stage`.
    """

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2), base: int = 64, block_num: int = 4):
        super().__init__()
        features: list[nn.Module] = [ConvX(3, base // 2, 3, 2), ConvX(base // 2, base, 3, 2)]
        self.stage_bounds: list[tuple[int, int]] = []
        for i, n_blocks in enumerate(layers):
            start = len(features)
            for j in range(n_blocks):
                if j == 0:
                    c_in = base if i == 0 else base * 2 ** (i + 1)
                    features.append(CatBottleneck(c_in, base * 2 ** (i + 2), block_num, 2))
                else:
                    features.append(CatBottleneck(base * 2 ** (i + 2), base * 2 ** (i + 2), block_num, 1))
            self.stage_bounds.append((start, len(features)))
        self.features = nn.Sequential(*features)
        self.feature_info = [FeatureInfo(base * 2 ** (i + 2), 2 ** (i + 3)) for i in range(len(layers))]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.features[1](self.features[0](x))

    def forward_stage(self, i: int, x: Tensor) -> Tensor:
        start, end = self.stage_bounds[i]
        for j in range(start, end):
            x = self.features[j](x)
        return x


def build_stdc(name: str) -> STDCNet:
    """``stdc1`` (STDCNet813) or ``stdc2`` (STDCNet1446)."""
    if name not in STDC_LAYERS:
        raise ValueError(f"unknown STDC backbone {name!r}; choose from {sorted(STDC_LAYERS)}")
    return STDCNet(STDC_LAYERS[name])


@dataclass
class LoadReport:
    missing: list[str]
    unexpected: list[str]
    ignored: list[str]


def load_imagenet_weights(backbone: STDCNet, path: str | Path) -> LoadReport:
    """Loads an official STDC ImageNet checkpoint (``STDCNet813M_73.91.tar`` and the like).

    Accepts a bare state dict or one under ``state_dict``, strips a ``module.`` prefix (from
    DataParallel), drops the classifier keys, and loads the ``features.*`` tensors. Returns which
    backbone keys stayed missing and which checkpoint keys matched nothing; raises ``ValueError``
    naming the file when it holds no ``features.*`` key or a tensor has the wrong shape.
    """
    path = Path(path)
    state = read_state_dict(path)
    ignored = sorted(k for k in state if k.startswith(IGNORED_CHECKPOINT_PREFIXES))
    candidates = {k: v for k, v in state.items() if k not in ignored}
    if not any(k.startswith("features.") for k in candidates):
        raise ValueError(f"{path}: no 'features.*' keys; is this an STDC ImageNet checkpoint?")
    return load_matching(backbone, candidates, path, ignored)


def read_state_dict(path: Path) -> dict:
    """A state dict from a ``.safetensors`` file or a PyTorch checkpoint (bare or under
    ``state_dict``), with DataParallel's ``module.`` prefix stripped; errors name the file."""
    try:
        if path.suffix == ".safetensors":  # e.g. the output of python -m eris.backbone_distill
            from safetensors.torch import load_file

            ckpt = load_file(str(path))
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - surface any unpickling problem with the path
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(ckpt).__name__}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_matching(backbone: nn.Module, candidates: dict, path: Path, ignored: list[str]) -> LoadReport:
    """Loads ``candidates`` by key after checking shapes; reports what stayed missing or matched nothing."""
    own = backbone.state_dict()
    for k, v in candidates.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, backbone expects {tuple(own[k].shape)}")
    result = backbone.load_state_dict(candidates, strict=False)
    return LoadReport(missing=list(result.missing_keys), unexpected=list(result.unexpected_keys), ignored=ignored)
