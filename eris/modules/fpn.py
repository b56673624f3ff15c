"""Deformable cross-modal FPN: top-down over the text-gated features with DCNv2 3x3 blocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from eris.ops import DeformConv2d

__all__ = ["DeformableFPN", "upsample_to_output"]


class DeformConvBlock(nn.Sequential):
    def __init__(self, dim: int, sampling: str):
        super().__init__(DeformConv2d(dim, dim, 3, padding=1, bias=False, sampling=sampling),
                         nn.BatchNorm2d(dim), nn.ReLU(inplace=True))


def upsample_to_output(x: Tensor) -> Tensor:
    """The last FPN step's 2x bilinear upsampling, from the finest level (stride 8) to F^O's
    stride 4. Linear and per channel, so it commutes with the dot-product head: ERIS applies
    it to the one-channel logits rather than to the C'-channel features (see the TVR)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class DeformableFPN(nn.Module):
    """F_i^O = F_i^A + Up(DefConv(F_{i+1}^O)) top-down; F^O = Up(DefConv(F_1^O)) one level finer.

    ``blocks[i]`` reads level ``i`` (0 = finest), so ``blocks[0]`` makes the map that, upsampled
    by :func:`upsample_to_output`, is F^O at stride 4. The FPN returns it *before* that last
    upsampling: every consumer of F^O is linear in it (the dot-product head), so upsampling
    after the head moves one channel instead of C' (exact; 7 % of the INT8 image graph's node
    time at 640x480 was that Resize and its layout reorder).
    """

    def __init__(self, dim: int, levels: int = 3, sampling: str = "grid_sample"):
        super().__init__()
        self.blocks = nn.ModuleList(DeformConvBlock(dim, sampling) for _ in range(levels))

    def forward(self, aligned: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """``aligned`` fine to coarse, the coarsest already holding F_g.

        Returns the FPN levels coarse to fine ``[F_3^O, F_2^O, F_1^O]`` and F^O before its
        final 2x upsampling (``upsample_to_output(out)`` is F^O).
        """
        f = aligned[-1]
        levels = [f]
        for i in range(len(aligned) - 2, -1, -1):
            up = F.interpolate(self.blocks[i + 1](f), size=aligned[i].shape[-2:], mode="bilinear", align_corners=False)
            f = aligned[i] + up
            levels.append(f)
        return levels, self.blocks[0](f)
