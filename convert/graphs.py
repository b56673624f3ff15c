"""Trace-friendly wrappers that split ERIS into the two graphs the Pi runs.

* **text graph** ``(input_ids, attention_mask) -> (text_tokens, token_mask)``: the text encoder
  alone, run once per phrase and cached. ``text_tokens`` are the encoder's token features
  ``[B, L, D]``; ``token_mask`` is the attention mask as float ``[B, L]`` (1 = real token).
  With a frozen encoder this graph is the same file for every retrained model, so the
  repository's history stores it once.
* **image graph** ``(image, text_tokens, token_mask) -> logits``: ``image`` is **uint8 NHWC
  RGB** (what PIL, numpy and picamera2 hand over), cast and normalised inside the graph; the
  model's trained text projections (fusion keys/values, IAM gates, Q_0: a few small matmuls)
  run here too; ``logits`` are ``[B, 1, H/4, W/4]``. Every phrase-side input is float, so any
  quantizer (onnxruntime's, LiteRT's PT2E) sees no int64 tensor in this graph.

Names are fixed here so the runtime and the manifest agree on them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eris.model import ERIS

__all__ = ["TextGraph", "ImageGraph", "normalize_nhwc", "TEXT_INPUTS", "TEXT_OUTPUTS", "IMAGE_INPUTS", "IMAGE_OUTPUTS"]

TEXT_INPUTS = ["input_ids", "attention_mask"]
TEXT_OUTPUTS = ["text_tokens", "token_mask"]
IMAGE_INPUTS = ["image", *TEXT_OUTPUTS]
IMAGE_OUTPUTS = ["logits"]


class TextGraph(nn.Module):
    def __init__(self, model: ERIS):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.model.text_encoder(input_ids, attention_mask)
        return tokens, attention_mask.to(torch.float32)


class ImageGraph(nn.Module):
    def __init__(self, model: ERIS):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, text_tokens: Tensor, token_mask: Tensor) -> Tensor:
        features = self.model.project_text(text_tokens, token_mask > 0.5)
        pixels = normalize_nhwc(image.float(), self.model.pixel_mean, self.model.pixel_std)
        return self.model.segment_normalized(pixels.permute(0, 3, 1, 2), features).logits


def normalize_nhwc(pixels: Tensor, mean: Tensor, std: Tensor | None) -> Tensor:
    """``(pixels - mean) / std`` for NHWC ``pixels``, computed over a ``[B, H, W*3]`` view.

    Why not simply ``permute`` then subtract a ``[1, 3, 1, 1]`` mean: onnxruntime moves that
    transpose past the subtraction into its NHWC convolution, and its broadcasting kernel then
    loops over spans of 3 values, one per pixel: 10 % of the INT8 image graph's node time at
    640x480 (Sub + Div, onnxruntime 1.32). Tiling the 3 means along the row makes the span a
    whole image row. Same values, same rounding."""
    b, h, w, c = pixels.shape

    def along_row(v: Tensor) -> Tensor:  # per-channel [c] values tiled to one row's [w * c]
        return v.reshape(1, 1, 1, c).expand(1, 1, w, c).reshape(1, 1, w * c)

    x = pixels.reshape(b, h, w * c) - along_row(mean)
    if std is not None:  # None once convert.fold has moved it into the first conv
        x = x / along_row(std)
    return x.reshape(b, h, w, c)
