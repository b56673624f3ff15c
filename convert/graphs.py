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

__all__ = ["TextGraph", "ImageGraph", "TEXT_INPUTS", "TEXT_OUTPUTS", "IMAGE_INPUTS", "IMAGE_OUTPUTS"]

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
        pixels = image.permute(0, 3, 1, 2).float()
        return self.model.segment(pixels, features).logits
