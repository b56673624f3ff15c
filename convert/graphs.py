"""Trace-friendly wrappers that split ERIS into the two graphs the Pi runs.

* **text graph** ``(input_ids, attention_mask) -> TEXT_OUTPUTS``: everything that depends only
  on the phrase; run once per phrase and cached.
* **image graph** ``(image, attention_mask, *TEXT_OUTPUTS) -> logits``: ``image`` is **uint8
  NHWC RGB** (what PIL, numpy and picamera2 hand over), cast and normalised inside the graph;
  ``logits`` are ``[B, 1, H/4, W/4]``.

Names are fixed here so the runtime and the manifest agree on them.
"""

from __future__ import annotations

from torch import Tensor, nn

from eris.model import ERIS, TextFeatures

__all__ = ["TextGraph", "ImageGraph", "TEXT_INPUTS", "TEXT_OUTPUTS", "IMAGE_INPUTS", "IMAGE_OUTPUTS"]

TEXT_INPUTS = ["input_ids", "attention_mask"]
TEXT_OUTPUTS = ["fusion_key_0", "fusion_key_1", "fusion_key_2", "fusion_value_0", "fusion_value_1", "fusion_value_2",
                "iam_gate_0", "iam_gate_1", "iam_gate_2", "query0"]
IMAGE_INPUTS = ["image", "attention_mask", *TEXT_OUTPUTS]
IMAGE_OUTPUTS = ["logits"]


class TextGraph(nn.Module):
    def __init__(self, model: ERIS):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        t = self.model.encode_text(input_ids, attention_mask)
        return (*t.fusion_keys, *t.fusion_values, *t.iam_gates, t.query0)


class ImageGraph(nn.Module):
    def __init__(self, model: ERIS):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, attention_mask: Tensor, *text: Tensor) -> Tensor:
        n = len(self.model.fusions)
        features = TextFeatures(key_mask=attention_mask.bool(), fusion_keys=list(text[:n]),
                                fusion_values=list(text[n:2 * n]), iam_gates=list(text[2 * n:3 * n]),
                                query0=text[3 * n])
        pixels = image.permute(0, 3, 1, 2).float()
        return self.model.segment(pixels, features).logits
