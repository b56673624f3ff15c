"""Training losses: BCE + Dice on mask logits, deep supervision, and distillation terms."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["bce_dice", "mask_loss", "binary_kd", "feature_kd"]


def bce_dice(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """``logits`` [B, 1, h, w] (any stride; upsampled to the target), ``target`` [B, H, W] in {0, 1}."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    logits = logits[:, 0]
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (prob * t).sum(1) + eps) / (prob.sum(1) + t.sum(1) + eps)
    return bce + dice.mean()


def mask_loss(final: Tensor, aux: list[Tensor], target: Tensor, aux_weight: float = 0.4) -> Tensor:
    """BCE + Dice on the final prediction plus ``aux_weight`` times that of each TVR step's."""
    loss = bce_dice(final, target)
    for a in aux:
        loss = loss + aux_weight * bce_dice(a, target)
    return loss


def binary_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """Per-pixel KL(teacher || student) of Bernoulli masks at temperature T, times T^2.

    Zero exactly when the two logit maps are equal (unlike BCE against soft targets, which
    leaves the teacher's entropy).
    """
    s, t = student_logits / temperature, teacher_logits / temperature
    pt = t.sigmoid()
    kl = pt * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - pt) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.mean() * temperature ** 2


def feature_kd(student: Tensor, teacher: Tensor) -> Tensor:
    """Squared distance between channel-normalised features (dim 1), averaged over positions.

    Equals 2 (1 - cosine similarity): in [0, 4] whatever the width, so its weight compares with
    the mask losses', and the two models' feature scales need not match.
    """
    diff = F.normalize(student, dim=1) - F.normalize(teacher, dim=1)
    return diff.square().sum(dim=1).mean()
