"""Text-Visual Refinement and the parameter-free dot-product head.

The sentence query Q_0 attends, one FPN level at a time (coarse to fine), to the pixels its
own current prediction marks as foreground: Q_j = softmax(Q_{j-1} K_i^T / sqrt(D)) V_i + Q_{j-1}.
The prediction of Q_{j-1} is the head at stride 4, average-pooled to level i; where it marks no
pixel of an image, that image's step attends everywhere. One query per image: O(N) attention.

The head reads F^O before the FPN's last 2x bilinear upsampling and upsamples its one-channel
logits instead: Q . Up(F) = Up(Q . F) exactly, since that upsampling is linear and the same for
every channel, and it then moves 1 channel instead of C'.

With ``position=True`` the refinement's levels and the head's features get ``W_pos [x, y]``
added (each pixel's centre in the frame, -1..1; one W_pos shared by all of them). Why: a phrase
like "the mug on the left" picks one of several alike objects by where it is *relative to the
others*, and a dot-product head over translation-equivariant features marks them all. With a
position term the head's logits gain a ramp (W_posᵀQ)·(x, y) whose slope the query chooses, and
a refinement step that pools the candidates' values also pools their mean position into Q, so
the next prediction can be "left of the candidates' mean". ``W_pos`` starts at zero, so adding
it to a trained model keeps that model's function exactly until training moves it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eris.modules.fpn import upsample_to_output
from eris.modules.fusion import frame_coordinates

__all__ = ["TextVisualRefinement", "dot_product_head"]


def dot_product_head(query: Tensor, features: Tensor) -> Tensor:
    """Mask logits ``[B, 1, H, W]`` = Q . F at every pixel; no parameters."""
    b, c, h, w = features.shape
    return (query.unsqueeze(1) @ features.reshape(b, c, h * w)).reshape(b, 1, h, w)


class TextVisualRefinement(nn.Module):
    def __init__(self, dim: int, text_dim: int, pool_factors: tuple[int, ...], position: bool = False):
        """``pool_factors[j]``: how many stride-4 pixels span one pixel of the level of step j."""
        super().__init__()
        self.position = None
        if position:
            self.position = nn.Conv2d(2, dim, 1, bias=False)  # W_pos, shared by every level and the head
            nn.init.zeros_(self.position.weight)
        self.pool_factors = tuple(pool_factors)
        self.query0 = nn.Linear(text_dim, dim)
        self.keys = nn.ModuleList(nn.Conv2d(dim, dim, 1) for _ in pool_factors)
        self.values = nn.ModuleList(nn.Conv2d(dim, dim, 1) for _ in pool_factors)
        self.scale = 1.0 / math.sqrt(dim)

    def _placed(self, x: Tensor) -> Tensor:
        return x if self.position is None else x + self.position(frame_coordinates(x))

    def initial_query(self, sentence: Tensor) -> Tensor:
        """Phrase-only part: Q_0 ``[B, dim]``."""
        return self.query0(sentence)

    def forward(self, q0: Tensor, levels: list[Tensor], features: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``levels`` coarse to fine, ``features`` = F^O before its final upsampling (stride 8).

        Returns Q^O and the head's logits at stride 4 for Q_0 .. Q_steps (the last is the final
        prediction).
        """
        q = q0
        features = self._placed(features)
        logits = [upsample_to_output(dot_product_head(q, features))]
        for j, level in enumerate(levels):
            level = self._placed(level)
            b, c, h, w = level.shape
            foreground = F.avg_pool2d(logits[-1], self.pool_factors[j]).reshape(b, 1, h * w) > 0
            keep = foreground | ~foreground.any(dim=-1, keepdim=True)
            keys = self.keys[j](level).reshape(b, c, h * w)
            values = self.values[j](level).reshape(b, c, h * w)
            scores = (q.unsqueeze(1) @ keys) * self.scale                     # [B, 1, N]
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
            q = (scores.softmax(-1) @ values.transpose(1, 2)).squeeze(1) + q  # [B, dim]
            logits.append(upsample_to_output(dot_product_head(q, features)))
        return q, logits
