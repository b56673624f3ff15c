"""Evaluate a checkpoint: mIoU, oIoU and precision@0.5:0.9 at the original image resolution.

``python -m eris.evaluate --checkpoint DIR --data shapes --split val [--size 640]``

Each image is resized to ``--size`` on its long side and padded to a multiple of 32 (so a 4:3
image runs at 640x480); the stride-4 logits are upsampled, cropped to the unpadded region and
resized to the original resolution before thresholding at probability 0.5. JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from eris.data.datasets import EvalSample, eval_samples
from eris.data.transforms import letterbox
from eris.metrics import found_rates, intersection_union, summarize, summarize_by_kind
from eris.model import ERIS
from eris.text.tokenizer import PhraseTokenizer

__all__ = ["predict_logits", "evaluate", "main"]


@torch.no_grad()
def predict_logits(model: ERIS, tokenizer: PhraseTokenizer, image: np.ndarray, phrase: str, size: int,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Mask logits ``[H, W]`` at the image's own resolution."""
    padded, box = letterbox(image, size, model.config.size_divisor)
    x = torch.tensor(padded).permute(2, 0, 1)[None].float().to(device)
    ids, mask = tokenizer(phrase)
    logits = model(x, ids.to(device), mask.to(device)).logits
    logits = F.interpolate(logits, size=box.padded_hw, mode="bilinear", align_corners=False)
    logits = logits[:, :, :box.resized_hw[0], :box.resized_hw[1]]
    logits = F.interpolate(logits, size=box.orig_hw, mode="bilinear", align_corners=False)
    return logits[0, 0].float().cpu()


def evaluate(model: ERIS, tokenizer: PhraseTokenizer, samples: Iterable[EvalSample], size: int,
             device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """Overall metrics, plus ``by_kind`` where samples record their phrase kind, and ``found``
    (present targets answered found, absent ones not) where some targets are absent."""
    model.eval()
    pairs, kinds, found, present = [], [], [], []
    for s in tqdm(samples, desc="evaluate", unit="img", disable=not progress):
        pred = (predict_logits(model, tokenizer, s.image, s.phrase, size, device) > 0).numpy()
        pairs.append(intersection_union(pred, s.mask))
        kinds.append(s.kind)
        found.append(bool(pred.any()))
        present.append(bool(s.mask.any()))
    result = summarize(pairs)
    if any(k is not None for k in kinds):
        result["by_kind"] = summarize_by_kind(pairs, kinds)
    if not all(present):
        result["found"] = found_rates(found, present)
    return result


def main(argv: list[str] | None = None) -> int:
    from eris.checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(prog="python -m eris.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint directory (model.safetensors + config.json)")
    ap.add_argument("--data", default="shapes", choices=["shapes", "shapes-absent", "roboref", "refcoco"],
                    help="dataset (shapes-absent: the ShapeRef scenes with phrases naming what is not there)")
    ap.add_argument("--split", default="val", help="shapes, roboref: val|test; refcoco: val|testA|testB|test")
    ap.add_argument("--data-root", help="refcoco: directory with refcoco*/ annotations and images/")
    ap.add_argument("--dataset", default="refcoco", choices=["refcoco", "refcoco+", "refcocog"], help="refcoco family")
    ap.add_argument("--split-by", default=None, help="refcoco: unc (default) or umd (refcocog)")
    ap.add_argument("--size", type=int, default=640, help="long side the images are resized to")
    ap.add_argument("--n", type=int, default=None, help="evaluate only the first N samples")
    ap.add_argument("--device", default="cpu", help="torch device")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, meta = load_checkpoint(args.checkpoint, args.device)
    split_by = args.split_by or ("umd" if args.dataset == "refcocog" else "unc")
    samples = eval_samples(args.data, args.split, args.n, args.data_root, args.dataset, split_by)
    result = evaluate(model, tokenizer, samples, args.size, args.device, progress=True)
    result.update({"checkpoint": str(args.checkpoint), "data": args.data, "split": args.split, "size": args.size})
    print(" ".join(f"{k}={v:.2f}" for k, v in result.items() if isinstance(v, float)))
    for kind, m in result.get("by_kind", {}).items():
        print(f"  {kind:<16} n={m['n']:<5} mIoU={m['mIoU']:.2f} oIoU={m['oIoU']:.2f} P@0.5={m['P@0.5']:.1f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
