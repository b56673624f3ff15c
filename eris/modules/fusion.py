"""Early Fusion: text -> image cross-attention after a backbone stage.

F <- F + F * W_up(softmax(Q K^T / sqrt(d)) V), Q = W_q F (per pixel), K, V from the token
features, padded tokens masked out. Attention runs over the L tokens for each of the N pixels,
so it costs O(N * L): the only matrices are [heads, L, N].

With ``position=True`` the query also gets ``W_pos [x, y]``, each pixel's centre in the frame
scaled to -1..1. Convolutions are translation-equivariant, so without it a word like "left" or
"leftmost" can only find where it points from padding effects; with it the word's key can
match the pixels that lie there. ``W_pos`` starts at zero, so adding it to a trained model keeps
that model's function exactly until training moves it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["EarlyFusion", "JointAttentionFusion", "frame_coordinates"]


def frame_coordinates(like: Tensor) -> Tensor:
    """``[1, 2, H, W]`` (x, y) of each pixel centre of ``like`` (``[B, C, H, W]``) in -1..1;
    the same relative position at every input size, since training and inference sizes differ."""
    h, w = like.shape[-2:]
    xs = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) * (2.0 / w) - 1.0
    ys = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) * (2.0 / h) - 1.0
    return torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)]).unsqueeze(0)


class EarlyFusion(nn.Module):
    def __init__(self, channels: int, text_dim: int, dim: int, heads: int, position: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Conv2d(channels, dim, 1)
        self.position = None
        if position:
            self.position = nn.Conv2d(2, dim, 1, bias=False)  # W_pos
            nn.init.zeros_(self.position.weight)
        self.key = nn.Linear(text_dim, dim)
        self.value = nn.Linear(text_dim, dim)
        self.out = nn.Conv2d(dim, channels, 1)  # W_up

    def text_kv(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Phrase-only part: keys ``[B, h, L, d]`` (pre-scaled by 1/sqrt(d)) and values ``[B, h, d, L]``."""
        b, l, _ = tokens.shape
        k = self.key(tokens).view(b, l, self.heads, -1).transpose(1, 2)
        k = k / math.sqrt(k.shape[-1])
        v = self.value(tokens).view(b, l, self.heads, -1).permute(0, 2, 3, 1)
        return k, v

    def forward(self, x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
        """``key_mask`` is ``[B, L]`` bool, True for real tokens."""
        b, c, h, w = x.shape
        q = self.query(x)
        if self.position is not None:
            q = q + self.position(frame_coordinates(x))
        q = q.reshape(b, self.heads, -1, h * w)                       # [B, h, d, N]
        scores = k @ q                                                # [B, h, L, N]
        scores = scores.masked_fill(~key_mask[:, None, :, None], torch.finfo(scores.dtype).min)
        attended = v @ scores.softmax(dim=2)                          # [B, h, d, N]
        return x + x * self.out(attended.reshape(b, -1, h, w))


class JointAttentionFusion(EarlyFusion):
    """The quadratic baseline ERIS argues against (MDETR/EEVG-style): pixels attend jointly over
    ``[pixels; tokens]``, so the scores are ``[heads, N, N + L]``. Same widths and the same
    residual gate as :class:`EarlyFusion`; used only by ``python -m eris.scaling`` (config
    ``fusion="joint"``), never exported."""

    def __init__(self, channels: int, text_dim: int, dim: int, heads: int):
        super().__init__(channels, text_dim, dim, heads)
        self.pixel_key = nn.Conv2d(channels, dim, 1)
        self.pixel_value = nn.Conv2d(channels, dim, 1)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = h * w
        q = self.query(x).reshape(b, self.heads, -1, n)                          # [B, h, d, N]
        kp = self.pixel_key(x).reshape(b, self.heads, -1, n) / math.sqrt(q.shape[2])
        vp = self.pixel_value(x).reshape(b, self.heads, -1, n)
        pixel_scores = q.transpose(2, 3) @ kp                                   # [B, h, N, N]: quadratic
        token_scores = (k @ q).transpose(2, 3)                                  # [B, h, N, L]
        token_scores = token_scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(q.dtype).min)
        attn = torch.cat([pixel_scores, token_scores], dim=3).softmax(dim=3)
        attended = attn[..., :n] @ vp.transpose(2, 3) + attn[..., n:] @ v.transpose(2, 3)  # [B, h, N, d]
        return x + x * self.out(attended.transpose(2, 3).reshape(b, -1, h, w))
