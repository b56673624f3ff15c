"""Distil a trained teacher into a student.

``python -m eris.distill --teacher runs/teacher --config stdc1-minilm --out runs/student_kd --steps 2000``

Takes every flag of ``python -m eris.train`` (the student's training) plus the teacher and the
loss weights. Loss = ground truth (BCE + Dice + deep supervision, as in training)
+ ``--kd-weight`` x KL between the teacher's and the student's per-pixel mask probabilities
at temperature ``--kd-temperature`` (times T^2)
+ ``--feat-weight`` x squared distance between channel-normalised F^O maps, 2 (1 - cos),
averaged over pixels (student through a 1x1 conv adapter where widths differ)
+ ``--query-weight`` x the same for the refined query Q^O (through a linear adapter).
Defaults: 1.0, T = 2, 1.0, 1.0. The adapters train with the student and are not part of its
checkpoint.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from eris.checkpoint import load_checkpoint
from eris.config import get_config
from eris.losses import binary_kd, feature_kd
from eris.model import ERIS, ErisOutput
from eris.train import build_parser, train

__all__ = ["Distiller", "main"]


class Distiller(nn.Module):
    """The distillation loss terms; call as ``(batch, student_output) -> (loss, parts)``."""

    def __init__(self, teacher: ERIS, student_dim: int, kd_weight: float = 1.0, temperature: float = 2.0,
                 feat_weight: float = 1.0, query_weight: float = 1.0):
        super().__init__()
        self._teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule, not saved
        teacher_dim = teacher.config.dim
        same = student_dim == teacher_dim
        self.feature_adapter = nn.Identity() if same else nn.Conv2d(student_dim, teacher_dim, 1)
        self.query_adapter = nn.Identity() if same else nn.Linear(student_dim, teacher_dim)
        self.kd_weight, self.temperature = kd_weight, temperature
        self.feat_weight, self.query_weight = feat_weight, query_weight

    @property
    def teacher(self) -> ERIS:
        return self._teacher[0]

    def forward(self, batch: dict, out: ErisOutput) -> tuple[torch.Tensor, dict]:
        image = batch["image"]
        if next(self.teacher.parameters()).device != image.device:
            self.teacher.to(image.device)
        with torch.no_grad():
            t = self.teacher(image, batch["input_ids"], batch["attention_mask"])
        kd = binary_kd(out.logits.float(), t.logits.float(), self.temperature)
        feat = feature_kd(self.feature_adapter(out.features.float()), t.features.float())
        query = feature_kd(self.query_adapter(out.query.float()), t.query.float())
        loss = self.kd_weight * kd + self.feat_weight * feat + self.query_weight * query
        return loss, {"kd": kd.item(), "feat": feat.item(), "query": query.item()}


def main(argv: list[str] | None = None) -> int:
    ap = build_parser("python -m eris.distill", __doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="teacher checkpoint directory")
    ap.add_argument("--kd-weight", type=float, default=1.0, help="weight of the mask-logit KD term")
    ap.add_argument("--kd-temperature", type=float, default=2.0, help="temperature of the mask-logit KD term")
    ap.add_argument("--feat-weight", type=float, default=1.0, help="weight of the F^O feature KD term")
    ap.add_argument("--query-weight", type=float, default=1.0, help="weight of the Q^O query KD term")
    args = ap.parse_args(argv)
    teacher, _, _ = load_checkpoint(args.teacher)
    student_dim = get_config(args.config).dim
    distiller = Distiller(teacher, student_dim, args.kd_weight, args.kd_temperature, args.feat_weight,
                          args.query_weight)
    result = train(args, extra_loss=distiller)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
