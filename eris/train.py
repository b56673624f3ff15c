"""Train an ERIS model on ShapeRef, RoboRef (or a mixture of the two) or RefCOCO.

``python -m eris.train --config stdc1-minilm --data shapes --out runs/student --steps 2000``

AdamW with linear warm-up then polynomial decay; the text encoder at a 10x lower learning rate
(or frozen); BCE + Dice on the mask plus deep supervision on the TVR steps; random scale,
placement/crop and flip (the phrase's left/right swap). AMP on CUDA; several GPUs through
``torchrun --nproc_per_node N -m eris.train ...`` (DDP). The output directory is a checkpoint
(see :mod:`eris.checkpoint`) plus ``train_state.pt`` (optimizer, step) and ``log.jsonl``; run
the same command again to resume from the last save.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from eris.builder import build_model, build_tokenizer
from eris.checkpoint import load_checkpoint, save_checkpoint
from eris.config import CONFIGS, get_config
from eris.data.datasets import Collate, RefCocoTrain, StepBatchSampler, eval_samples, parse_mixture, train_dataset
from eris.data.roboref_expressions import colour_weights, parse_kind_weights
from eris.evaluate import evaluate
from eris.losses import mask_loss

__all__ = ["build_parser", "train", "main", "poly_lr"]


def build_parser(prog: str = "python -m eris.train", description: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=description or __doc__.split("\n\n")[0])
    ap.add_argument("--config", default="stdc1-minilm",
                    help=f"model config: {', '.join(sorted(CONFIGS))}, or a config .json file")
    ap.add_argument("--init", help="start from this checkpoint's weights instead of a fresh model")
    ap.add_argument("--add-fusion-position", action="store_true",
                    help="with --init: give the fusion queries each pixel's (x, y), starting from zero weights "
                         "so the initial model computes what the checkpoint did")
    ap.add_argument("--add-tvr-position", action="store_true",
                    help="with --init: give the refinement's levels and the head's features each pixel's (x, y), "
                         "starting from zero weights (eris.modules.tvr: lets the head pick one of several alike "
                         "objects by where it lies relative to the others)")
    ap.add_argument("--position-lr-mult", type=float, default=10.0,
                    help="learning rate of the position weights (fusion and TVR) / --lr (they start at zero)")
    ap.add_argument("--narrow-deform", type=int, nargs="+", metavar="C", default=None,
                    help="with --init: make the FPN's deformable convs sample C channels (one value per level, "
                         "finest first; 0 keeps a level), factored from the checkpoint's weights on its own "
                         "inputs (eris.narrow): the float sampling of the INT8 graph moves C/128 of the data")
    ap.add_argument("--narrow-batches", type=int, default=6,
                    help="training batches the --narrow-deform factorisation measures the inputs on")
    ap.add_argument("--backbone-weights", help="official STDC ImageNet checkpoint for the backbone")
    ap.add_argument("--imagenet-kd", choices=["lite0", "lite1", "lite2"], default=None,
                    help="also pull the backbone's stage outputs towards this pretrained EfficientNet-Lite's "
                         "features (1x1 adapters, 2(1 - cos)): ImageNet object knowledge for the student")
    ap.add_argument("--imagenet-kd-weight", type=float, default=0.5, help="weight of the --imagenet-kd loss")
    ap.add_argument("--imagenet-kd-warmup", type=int, default=200,
                    help="steps during which only the --imagenet-kd adapters learn (backbone features detached)")
    ap.add_argument("--data", default="shapes",
                    help="training data: shapes, roboref, a mixture (shapes+roboref, or weighted shapes:1+roboref:3), "
                         "or refcoco")
    ap.add_argument("--kind-weights", type=_argparse_type(parse_kind_weights), default=None, metavar="KIND=W,...",
                    help="RoboRef training phrase-kind mix, overriding the defaults (attribute 0.25, size 0.1, "
                         "location 0.15, depth 0.15, ordinal 0.1, relation 0.25), e.g. location=0.3,ordinal=0.2 "
                         "to draw hard kinds more often; val is unaffected")
    ap.add_argument("--colour-weights", type=_argparse_type(colour_weights), default=None, metavar="COLOUR=W,...",
                    help="RoboRef training: draw targets of these colours W times as often as others (1), "
                         "e.g. white=3,pink=2 for the colours the model finds least; val is unaffected")
    ap.add_argument("--val-data", default=None,
                    help="validation set (shapes, roboref or refcoco; default: the first of --data)")
    ap.add_argument("--data-root", help="refcoco: directory with the refer annotations and images")
    ap.add_argument("--dataset", default="refcoco", choices=["refcoco", "refcoco+", "refcocog"], help="refcoco family")
    ap.add_argument("--split-by", default=None, help="refcoco: unc (default) or umd (refcocog)")
    ap.add_argument("--out", required=True, type=Path, help="run directory (checkpoint, log.jsonl, train_state.pt)")
    ap.add_argument("--steps", type=int, default=2000, help="total optimizer steps")
    ap.add_argument("--batch-size", type=int, default=8, help="images per step per process")
    ap.add_argument("--size", type=int, default=320, help="training canvas side (multiple of 32)")
    ap.add_argument("--lr", type=float, default=4e-4, help="peak learning rate of the vision/fusion part")
    ap.add_argument("--text-lr-mult", type=float, default=0.1, help="text encoder learning rate / --lr")
    ap.add_argument("--freeze-text", action="store_true", help="do not train the text encoder")
    ap.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    ap.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    ap.add_argument("--poly-power", type=float, default=0.9, help="polynomial decay power")
    ap.add_argument("--aux-weight", type=float, default=0.4, help="weight of each intermediate TVR prediction's loss")
    ap.add_argument("--scale-min", type=float, default=None, help="smallest augmentation scale (shapes 0.6, refcoco 0.75)")
    ap.add_argument("--scale-max", type=float, default=None, help="largest augmentation scale (shapes 1.0, refcoco 1.25)")
    ap.add_argument("--val-every", type=int, default=500, help="steps between validations (0: only at the end)")
    ap.add_argument("--val-n", type=int, default=200, help="validation samples (first N of val)")
    ap.add_argument("--val-size", type=int, default=None, help="validation long side (default: --size)")
    ap.add_argument("--save-every", type=int, default=250, help="steps between checkpoint saves")
    ap.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    ap.add_argument("--workers", type=int, default=1, help="data loader worker processes")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    ap.add_argument("--seed", type=int, default=0, help="seed for the data stream and initialisation")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return ap


def _argparse_type(parse):
    """``parse`` as an argparse ``type``: its ValueError becomes an ArgumentTypeError, whose own
    message argparse shows (not a generic one); the name stays for "invalid ... value"."""
    def parsed(spec: str):
        try:
            return parse(spec)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parsed.__name__ = parse.__name__
    return parsed


def with_position(model, fusion: bool = False, tvr: bool = False):
    """``model`` rebuilt with ``fusion_position`` / ``tvr_position`` turned on and every trained
    weight copied over; the new position weights are zero, so the result computes exactly what
    ``model`` did."""
    changes = {k: True for k, on in (("fusion_position", fusion), ("tvr_position", tvr)) if on}
    grown = build_model(model.config.replace(**changes), pretrained=False)
    result = grown.load_state_dict(model.state_dict(), strict=False)
    if result.unexpected_keys or any(not k.endswith("position.weight") for k in result.missing_keys):
        raise ValueError(f"cannot add position weights: missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    return grown


def poly_lr(step: int, total: int, warmup: int, power: float) -> float:
    """Learning-rate factor: linear warm-up to 1, then (1 - progress)^power down to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 1 - progress) ** power


class _Dist:
    """Rank/world from torchrun's environment; a no-op on one process."""

    def __init__(self, device: str | None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.world > 1:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


def _dataset(args, tokenizer):
    if args.data != "refcoco":
        scale = (args.scale_min, args.scale_max) if args.scale_min and args.scale_max else None
        return train_dataset(args.data, args.size, args.seed, scale, args.kind_weights, args.colour_weights)
    from eris.data.refcoco import RefCoco

    split_by = args.split_by or ("umd" if args.dataset == "refcocog" else "unc")
    refer = RefCoco(args.data_root, args.dataset, split_by, "train")
    return RefCocoTrain(refer, args.size, args.seed, scale_range=(args.scale_min or 0.75, args.scale_max or 1.25))


def _narrowed(model, tokenizer, args, verbose: bool):
    """``model`` with narrowed deformable convs (:func:`eris.narrow.with_narrow_sampling`), factored
    on ``--narrow-batches`` batches drawn far past any training index (the run never trains on them)."""
    from eris.narrow import with_narrow_sampling

    data = _dataset(args, tokenizer)
    collate = Collate(tokenizer)
    first = 10 ** 8
    batches = [collate([data[first + b * args.batch_size + i] for i in range(args.batch_size)])
               for b in range(args.narrow_batches)]
    model, kept = with_narrow_sampling(model, tuple(args.narrow_deform), batches)
    if verbose:
        print("narrowed deformable convs, output energy kept per level: "
              + ", ".join(f"{i}: {k:.4f}" for i, k in kept.items()))
    return model


def _validate(model, tokenizer, args, device) -> dict:
    data = args.val_data or (parse_mixture(args.data)[0][0] if args.data != "refcoco" else "refcoco")
    # the fixed val split (seed 0) whatever the training seed: curves of runs with different
    # seeds are then measured on the same samples (until session 9 each run drew its own)
    samples = eval_samples(data, "val", args.val_n, args.data_root, args.dataset,
                           args.split_by or ("umd" if args.dataset == "refcocog" else "unc"))
    return evaluate(model, tokenizer, samples, args.val_size or args.size, device)


def train(args, extra_loss=None) -> dict:
    """Runs (or resumes) training; ``extra_loss`` is a module adding loss terms (distillation):
    called as ``extra_loss(batch, output) -> (loss, {name: value})``, its parameters trained too."""
    if args.size % 32:
        raise SystemExit(f"--size {args.size} is not a multiple of 32")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = _Dist(args.device)
    device = env.device
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / "train_state.pt"
    resume = state_path.is_file() and (args.out / "model.safetensors").is_file()

    if resume:
        model, tokenizer, meta = load_checkpoint(args.out)
    elif args.init:
        model, tokenizer, _ = load_checkpoint(args.init)
        fusion = args.add_fusion_position and not model.config.fusion_position
        tvr = args.add_tvr_position and not model.config.tvr_position
        if fusion or tvr:
            model = with_position(model, fusion=fusion, tvr=tvr)
        if args.narrow_deform:
            model = _narrowed(model, tokenizer, args, env.main)
        if args.freeze_text:  # fine-tuning a checkpoint with its text encoder kept as it is
            model.config = model.config.replace(freeze_text=True)
            model.text_encoder.requires_grad_(False)
    else:
        config = get_config(args.config).replace(freeze_text=args.freeze_text)
        model = build_model(config)
        tokenizer = build_tokenizer(config)
        if args.backbone_weights:
            from eris.backbones import load_imagenet_weights

            report = load_imagenet_weights(model.backbone, args.backbone_weights)
            if env.main:
                print(f"backbone weights: {len(report.missing)} missing, {len(report.unexpected)} unexpected keys")
    model.to(device).train()
    if device.type == "cuda":  # NHWC convolutions run faster under AMP on tensor cores
        model.to(memory_format=torch.channels_last)
    if args.imagenet_kd and extra_loss is not None:
        raise SystemExit("--imagenet-kd does not combine with eris.distill's teacher losses (yet)")
    if args.imagenet_kd:
        from eris.backbone_distill import ImageNetFeatureKD

        extra_loss = ImageNetFeatureKD([f.channels for f in model.backbone.feature_info], args.imagenet_kd,
                                       args.imagenet_kd_weight, args.imagenet_kd_warmup)
    if extra_loss is not None:
        extra_loss.to(device)

    text_params = [p for p in model.text_encoder.parameters() if p.requires_grad]
    position_params = [p for n, p in model.named_parameters() if p.requires_grad and ".position." in n]
    special = {id(p) for p in text_params + position_params}
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    groups = [{"params": other, "lr": args.lr}]
    if extra_loss is not None:  # its own group when it asks for another learning rate
        extra_params = [p for p in extra_loss.parameters() if p.requires_grad]
        if getattr(extra_loss, "lr_mult", 1.0) == 1.0:
            other += extra_params
        elif extra_params:
            groups.append({"params": extra_params, "lr": args.lr * extra_loss.lr_mult})
    if position_params:
        groups.append({"params": position_params, "lr": args.lr * args.position_lr_mult})
    if text_params:
        groups.append({"params": text_params, "lr": args.lr * args.text_lr_mult})
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    base_lrs = [g["lr"] for g in groups]
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start = 0
    best = None
    if resume:
        state = torch.load(state_path, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if extra_loss is not None and "extra_loss" in state:
            extra_loss.load_state_dict(state["extra_loss"])
        start = int(state["step"])
        best = state.get("best")
        if env.main:
            print(f"resuming {args.out} at step {start}")

    net = model
    if env.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    loader = DataLoader(_dataset(args, tokenizer), batch_sampler=StepBatchSampler(
        args.batch_size, start, args.steps, env.world, env.rank), num_workers=args.workers,
        collate_fn=Collate(tokenizer), persistent_workers=False)
    log_path = args.out / "log.jsonl"
    run_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}

    def save(step: int, metrics: dict | None) -> None:
        if not env.main:
            return
        meta = {"step": step, "args": run_args, "metrics": metrics or {}, "best_val": best}
        save_checkpoint(model, args.out, tokenizer, meta=meta)
        payload = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step, "best": best}
        if extra_loss is not None:
            payload["extra_loss"] = extra_loss.state_dict()
        tmp = state_path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, state_path)

    bar = tqdm(total=args.steps, initial=start, desc=args.out.name, unit="step", disable=not env.main)
    step = start
    t0 = time.time()
    metrics = None
    for batch in loader:
        factor = poly_lr(step, args.steps, args.warmup, args.poly_power)
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr * factor
        image = batch["image"].to(device, non_blocking=True)
        if device.type == "cuda":
            image = image.contiguous(memory_format=torch.channels_last)
        target = batch["mask"].to(device, non_blocking=True)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with torch.autocast("cuda", dtype=amp_dtype) if use_amp else nullcontext():
            out = net(image, ids, mask)
            loss = mask_loss(out.logits.float(), [a.float() for a in out.aux_logits], target, args.aux_weight)
            parts = {"gt": loss.item()}
            if extra_loss is not None:
                extra, extra_parts = extra_loss(batch | {"image": image, "input_ids": ids, "attention_mask": mask}, out)
                loss = loss + extra
                parts.update(extra_parts)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        if not math.isfinite(loss.item()):
            raise SystemExit(f"loss became {loss.item()} at step {step}; lower --lr")
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if env.main and (step % args.log_every == 0 or step == args.steps):
            with log_path.open("a") as f:
                f.write(json.dumps({"step": step, "loss": loss.item(), **{f"loss_{k}": v for k, v in parts.items()},
                                    "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(time.time() - t0, 1)})
                        + "\n")
        last = step == args.steps
        if env.main and ((args.val_every and step % args.val_every == 0) or last):
            metrics = _validate(model, tokenizer, args, device)
            model.train()
            best = max(best or 0.0, metrics["mIoU"])
            with log_path.open("a") as f:
                f.write(json.dumps({"step": step, "val": metrics}) + "\n")
            bar.write(f"step {step}: val mIoU {metrics['mIoU']:.2f} oIoU {metrics['oIoU']:.2f}")
        if step % args.save_every == 0 or last:
            save(step, metrics)
    bar.close()
    env.close()
    return {"step": step, "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = train(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
