"""Deformable cross-modal FPN: top-down over the text-gated features with DCNv2 3x3 blocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from eris.ops import DeformConv2d

__all__ = ["DeformableFPN", "upsample_to_output"]


class DeformConvBlock(nn.Sequential):
    def __init__(self, dim: int, sampling: str, sample_channels: int | None = None):
        super().__init__(DeformConv2d(dim, dim, 3, padding=1, bias=False, sampling=sampling,
                                      sample_channels=sample_channels),
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

    ``sample_channels[i]`` (0 or absent: all ``dim``) narrows what block ``i``'s deformable conv
    samples (see :class:`eris.ops.DeformConv2d`): the finest block samples 16x the pixels of the
    coarsest, so that is where its float sampling costs.
    """

    def __init__(self, dim: int, levels: int = 3, sampling: str = "grid_sample",
                 sample_channels: tuple[int, ...] = ()):
        super().__init__()
        if len(sample_channels) > levels:
            raise ValueError(f"sample_channels {sample_channels} names more than {levels} levels")
        widths = [(sample_channels[i] if i < len(sample_channels) else 0) or None for i in range(levels)]
        self.blocks = nn.ModuleList(DeformConvBlock(dim, sampling, w) for w in widths)

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
