"""ERIS: Efficient Referring Image Segmentation (Cuttano et al., IEEE RA-L 2025).

The forward pass is split the way the Pi runs it: :meth:`ERIS.encode_text` computes every
tensor that depends only on the phrase (:class:`TextFeatures`), :meth:`ERIS.segment` takes the
image and those tensors. ``forward`` is the two in sequence and always returns the same
:class:`ErisOutput`, in training as in evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from eris.config import ErisConfig
from eris.modules import IAM, DeformableFPN, EarlyFusion, GlobalContext, JointAttentionFusion, TextVisualRefinement
from eris.modules.fpn import upsample_to_output
from eris.text.bert import BertEncoder

__all__ = ["ERIS", "ErisOutput", "TextFeatures"]


@dataclass
class TextFeatures:
    """Everything the image pass needs from the phrase; computed once per phrase."""

    key_mask: Tensor                 # [B, L] bool, True for real tokens
    fusion_keys: list[Tensor]        # per stage [B, heads, L, d], pre-scaled
    fusion_values: list[Tensor]      # per stage [B, heads, d, L]
    iam_gates: list[Tensor]          # per stage [B, C'] in (0, 1)
    query0: Tensor                   # Q_0 [B, C']


@dataclass
class ErisOutput:
    logits: Tensor                   # [B, 1, H/4, W/4], the prediction of Q^O
    aux_logits: list[Tensor]         # predictions of Q_0 .. Q_{steps-1}, same shape (deep supervision)
    coarse_features: Tensor          # F^O before its final 2x upsampling [B, C', H/8, W/8]
    query: Tensor                    # Q^O [B, C']
    # each backbone stage's output before its fusion (strides 8/16/32): what ImageNet feature
    # distillation (:class:`eris.backbone_distill.ImageNetFeatureKD`) pulls towards a Lite backbone
    stage_features: list[Tensor] = field(default_factory=list)

    @property
    def features(self) -> Tensor:
        """F^O ``[B, C', H/4, W/4]`` (feature distillation), upsampled when asked for: the
        head itself never needs it (see :mod:`eris.modules.tvr`)."""
        return upsample_to_output(self.coarse_features)


class ERIS(nn.Module):
    def __init__(self, config: ErisConfig, backbone: nn.Module, text_encoder: BertEncoder):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.text_encoder = text_encoder
        text_dim = text_encoder.config.hidden_size
        infos = backbone.feature_info
        if config.fusion not in ("cross", "joint"):
            raise ValueError(f"fusion {config.fusion!r}: choose cross (ERIS) or joint (the quadratic baseline)")
        if config.fusion == "cross":
            self.fusions = nn.ModuleList(
                EarlyFusion(f.channels, text_dim, config.fusion_dim, config.fusion_heads, config.fusion_position)
                for f in infos)
        else:
            self.fusions = nn.ModuleList(
                JointAttentionFusion(f.channels, text_dim, config.fusion_dim, config.fusion_heads) for f in infos)
        self.iams = nn.ModuleList(IAM(f.channels, text_dim, config.dim) for f in infos)
        self.global_context = GlobalContext(infos[-1].channels, config.dim)
        self.fpn = DeformableFPN(config.dim, levels=len(infos), sampling=config.deform_sampling,
                                 sample_channels=config.deform_sample_channels)
        # TVR visits levels coarse to fine; F^O sits one level below the finest (stride 4).
        out_stride = infos[0].reduction // 2
        self.tvr = TextVisualRefinement(config.dim, text_dim,
                                        tuple(f.reduction // out_stride for f in reversed(infos)),
                                        config.tvr_position)
        self.output_stride = out_stride
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)
        if config.freeze_text:
            self.text_encoder.requires_grad_(False)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        return self.project_text(self.text_encoder(input_ids, attention_mask), attention_mask.bool())

    def project_text(self, tokens: Tensor, key_mask: Tensor) -> TextFeatures:
        """The trained per-model projections of the encoder's token features ``[B, L, D]``.

        Split from :meth:`encode_text` so the exported text graph can be the (frozen) encoder
        alone: its file is then byte-identical across retrains and git stores it once, while
        these few small matmuls run in the image graph (see ``convert.graphs``)."""
        sentence = tokens[:, 0]  # [CLS]
        keys, values = zip(*(f.text_kv(tokens) for f in self.fusions))
        return TextFeatures(
            key_mask=key_mask,
            fusion_keys=list(keys),
            fusion_values=list(values),
            iam_gates=[iam.text_gate(sentence) for iam in self.iams],
            query0=self.tvr.initial_query(sentence),
        )

    def segment(self, image: Tensor, text: TextFeatures) -> ErisOutput:
        """``image``: float RGB ``[B, 3, H, W]`` in 0..255, H and W multiples of 32."""
        self._check_image(image)
        x = image - self.pixel_mean
        if self.pixel_std is not None:  # None once convert.fold has moved it into the first conv
            x = x / self.pixel_std
        return self.segment_normalized(x, text)

    def segment_normalized(self, x: Tensor, text: TextFeatures) -> ErisOutput:
        """:meth:`segment` on an image already normalised by ``pixel_mean`` (and ``pixel_std``
        unless folded); the exported image graph normalises in its own layout first."""
        x = self.backbone.forward_stem(x)
        aligned, stages = [], []
        for i, fusion in enumerate(self.fusions):
            x = self.backbone.forward_stage(i, x)
            stages.append(x)
            x = fusion(x, text.fusion_keys[i], text.fusion_values[i], text.key_mask)
            aligned.append(self.iams[i](x, text.iam_gates[i]))
        aligned[-1] = aligned[-1] + self.global_context(x)
        levels, features = self.fpn(aligned)
        query, logits = self.tvr(text.query0, levels, features)
        return ErisOutput(logits=logits[-1], aux_logits=logits[:-1], coarse_features=features, query=query,
                          stage_features=stages)

    def forward(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor) -> ErisOutput:
        return self.segment(image, self.encode_text(input_ids, attention_mask))

    def _check_image(self, image: Tensor) -> None:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return
        d = self.config.size_divisor
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        if image.shape[2] % d or image.shape[3] % d:
            raise ValueError(f"image size {tuple(image.shape[2:])} is not a multiple of {d}; "
                             f"resize or pad it first")
