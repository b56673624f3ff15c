"""Parameter counts and GFLOPs of an ERIS config, by part.

``python -m eris.profile --config stdc1-minilm --size 640 [--tokens 20]``

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions, linear layers and
matmuls, with a multiply-add counted as 2 FLOPs. Element-wise ops, normalisation, softmax,
pooling and the bilinear sampling of the deformable conv are not counted (as in the
papers' tables, which count the same layers). Parts: ``backbone`` (STDC), ``text`` (the BERT
encoder), ``eris`` (everything else: fusion, IAM, FPN, TVR, head). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from eris.builder import build_model
from eris.config import CONFIGS

__all__ = ["profile_model", "main"]


def _flops(fn, *args) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(*args)
    return int(counter.get_total_flops())


def profile_model(config: str, height: int, width: int, tokens: int) -> dict:
    """Counts for one image of ``height x width`` and a phrase of ``tokens`` tokens ([CLS]/[SEP] included)."""
    model = build_model(config, pretrained=False).eval()
    image = torch.zeros(1, 3, height, width)
    ids = torch.full((1, tokens), 1000, dtype=torch.long)
    mask = torch.ones(1, tokens, dtype=torch.long)
    # FLOPs do not depend on values, so the parts are counted in passes of their own: the
    # backbone without fusion does the same convolutions as inside the full model.
    total = _flops(model, image, ids, mask)
    backbone = _flops(model.backbone, image)
    text = _flops(model.text_encoder, ids, mask)

    def n_params(module) -> int:
        return sum(p.numel() for p in module.parameters())

    params = n_params(model)
    params_backbone, params_text = n_params(model.backbone), n_params(model.text_encoder)
    return {
        "config": model.config.name, "height": height, "width": width, "tokens": tokens,
        "params": params, "params_backbone": params_backbone, "params_text": params_text,
        "params_eris": params - params_backbone - params_text,
        "gflops": total / 1e9, "gflops_backbone": backbone / 1e9, "gflops_text": text / 1e9,
        "gflops_eris": (total - backbone - text) / 1e9,
        "flop_convention": "multiply-add = 2 FLOPs; conv/linear/matmul only",
    }


def _table(r: dict) -> str:
    rows = [("backbone", r["params_backbone"], r["gflops_backbone"]), ("text encoder", r["params_text"], r["gflops_text"]),
            ("ERIS modules", r["params_eris"], r["gflops_eris"]), ("total", r["params"], r["gflops"])]
    head = f"{r['config']} at {r['height']}x{r['width']}, {r['tokens']} tokens ({r['flop_convention']})"
    lines = [head, f"{'part':<14}{'params (M)':>12}{'GFLOPs':>10}"]
    lines += [f"{name:<14}{p / 1e6:>12.2f}{g:>10.2f}" for name, p, g in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eris.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="stdc1-minilm", choices=sorted(CONFIGS), help="named model config")
    ap.add_argument("--size", type=int, default=640, help="square input side in pixels (multiple of 32)")
    ap.add_argument("--height", type=int, help="input height, overrides --size")
    ap.add_argument("--width", type=int, help="input width, overrides --size")
    ap.add_argument("--tokens", type=int, default=20, help="phrase length in tokens, [CLS] and [SEP] included")
    args = ap.parse_args(argv)
    h, w = args.height or args.size, args.width or args.size
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        ap.error(f"input size {h}x{w} must be positive multiples of 32")
    if args.tokens < 2:
        ap.error("--tokens must be at least 2 ([CLS] and [SEP])")
    result = profile_model(args.config, h, w, args.tokens)
    print(_table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
