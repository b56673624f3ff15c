"""Deformable cross-modal FPN: top-down over the text-gated features with DCNv2 3x3 blocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from eris.ops import DeformConv2d

__all__ = ["DeformableFPN"]


class DeformConvBlock(nn.Sequential):
    def __init__(self, dim: int, sampling: str):
        super().__init__(DeformConv2d(dim, dim, 3, padding=1, bias=False, sampling=sampling),
                         nn.BatchNorm2d(dim), nn.ReLU(inplace=True))


class DeformableFPN(nn.Module):
    """F_i^O = F_i^A + Up(DefConv(F_{i+1}^O)) top-down; F^O = Up(DefConv(F_1^O)) one level finer.

    ``blocks[i]`` reads level ``i`` (0 = finest), so ``blocks[0]`` makes the stride-4 map.
    """

    def __init__(self, dim: int, levels: int = 3, sampling: str = "grid_sample"):
        super().__init__()
        self.blocks = nn.ModuleList(DeformConvBlock(dim, sampling) for _ in range(levels))

    def forward(self, aligned: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """``aligned`` fine to coarse, the coarsest already holding F_g.

        Returns the FPN levels coarse to fine ``[F_3^O, F_2^O, F_1^O]`` and F^O.
        """
        f = aligned[-1]
        levels = [f]
        for i in range(len(aligned) - 2, -1, -1):
            up = F.interpolate(self.blocks[i + 1](f), size=aligned[i].shape[-2:], mode="bilinear", align_corners=False)
            f = aligned[i] + up
            levels.append(f)
        out = F.interpolate(self.blocks[0](f), scale_factor=2.0, mode="bilinear", align_corners=False)
        return levels, out
