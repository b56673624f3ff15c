"""Image-text Alignment: per-scale projection gated by the sentence token, and global context."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["IAM", "GlobalContext"]


class IAM(nn.Module):
    """F^A = proj(F) * sigmoid(W Q_s): channels of the visual feature gated by the sentence."""

    def __init__(self, channels: int, text_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(channels, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.gate = nn.Linear(text_dim, dim)

    def text_gate(self, sentence: Tensor) -> Tensor:
        """Phrase-only part: ``[B, dim]`` gate in (0, 1)."""
        return torch.sigmoid(self.gate(sentence))

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        return self.proj(x) * gate[:, :, None, None]


class GlobalContext(nn.Module):
    """F_g: the deepest fused feature averaged over the image and projected to ``dim``."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(channels, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.mean(dim=(2, 3)))[:, :, None, None]
