"""``python -m convert --checkpoint DIR --out BUNDLE_DIR``: export a checkpoint to a bundle.

Writes ``text.onnx`` (phrase -> phrase tensors), ``image_fp32.onnx`` (uint8 NHWC RGB image +
phrase tensors -> stride-4 mask logits), ``tokenizer.json`` and ``manifest.json``, after
checking that both graphs hold only standard ONNX ops and that onnxruntime matches PyTorch to
``--tolerance`` on 640x640, 480x640 and 320x320 images, phrases of 3, 10 and 30 tokens, batch
1 and 3. ``python -m quantize`` adds the INT8 image graph to the same bundle.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import onnx
import torch

from pi_runtime.bundle import FORMAT_VERSION, sha256, write_manifest
from pi_runtime.files import atomic_write
from convert.graphs import IMAGE_INPUTS, IMAGE_OUTPUTS, TEXT_INPUTS, TEXT_OUTPUTS
from convert.fold import fold_pixel_std
from convert.onnx_export import OPSET, ExportError, check_standard_ops, export_image_graph, export_text_graph
from convert.weights import store_fp16
from convert.parity import DEFAULT_CASES, check_parity
from eris.checkpoint import load_checkpoint
from eris.ops import SAMPLERS, DeformConv2d

TEXT_FILE, IMAGE_FILE = "text.onnx", "image_fp32.onnx"


def build_manifest(model, meta: dict, checkpoint: str, parity: list, command: str) -> dict:
    cfg = model.config
    return {
        "format_version": FORMAT_VERSION,
        "model": {"name": cfg.name, "config": cfg.to_dict()},
        "preprocessing": {"long_side": cfg.long_side, "size_divisor": cfg.size_divisor, "channel_order": "RGB",
                          "layout": "NHWC", "dtype": "uint8", "mean": list(cfg.pixel_mean), "std": list(cfg.pixel_std),
                          "normalization": "inside the image graph: (pixel - mean) / std, 0..255 units",
                          "resize": "long side to long_side, pad bottom/right with zeros to size_divisor"},
        "tokenizer": {"file": "tokenizer.json", "sha256": None, "max_tokens": cfg.max_tokens, "padding": "right"},
        "output": {"stride": cfg.output_stride, "threshold": 0.5, "logits": "[B, 1, H/stride, W/stride]",
                   "threshold_on": "sigmoid(logits)"},
        "graphs": {"text": {"file": TEXT_FILE, "precision": "fp32", "inputs": TEXT_INPUTS, "outputs": TEXT_OUTPUTS},
                   "image": {"fp32": {"file": IMAGE_FILE, "inputs": IMAGE_INPUTS, "outputs": IMAGE_OUTPUTS}}},
        "files": [TEXT_FILE, IMAGE_FILE, "tokenizer.json"],
        "metrics": {"torch_fp32": meta.get("metrics_shaperef_val_640") or meta.get("metrics", {})},
        "parity": {"max_abs_diff": max(p["max_abs_diff"] for p in parity) if parity else None, "cases": parity},
        "provenance": {"checkpoint": checkpoint, "step": meta.get("step"), "training_args": meta.get("args"),
                       "commands": [command], "created": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        "opset": OPSET,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    ap.add_argument("--checkpoint", required=True, help="checkpoint directory (from eris.train / eris.distill)")
    ap.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="max |logit difference| allowed against PyTorch")
    ap.add_argument("--parity", choices=["full", "quick", "off"], default="full",
                    help="parity cases: full (18), quick (3: one per size), off")
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    ap.add_argument("--weights", choices=["fp16", "fp32"], default="fp16",
                    help="how graph files store fp32 weights: fp16 = fp16 values (times an fp32 per-channel "
                         "scale where a BatchNorm was folded in), cast to fp32 at session start; the "
                         "arithmetic stays fp32 either way (parity is checked on the written files)")
    ap.add_argument("--deform-sampling", choices=sorted(SAMPLERS), default="conv",
                    help="deformable-conv formulation in the exported graph (same weights, same result): conv = "
                         "grid_sample then the weights as a 1x1 Conv (INT8 QLinearConv once quantized, no "
                         "transposes; default), grid_sample = then a MatMul, gather = no GridSample op at all")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, meta = load_checkpoint(args.checkpoint)
    for m in model.modules():  # the formulation changes no weight (eris.ops.deform_conv)
        if isinstance(m, DeformConv2d):
            m.sampling = args.deform_sampling
    model.config = model.config.replace(deform_sampling=args.deform_sampling)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        export_text_graph(model, tokenizer, out / TEXT_FILE)
        # (the export strips the exporter's metadata, which listed the whole model's parameters
        # and buffers, so the fold's missing buffer no longer changes the text graph's bytes)
        fold_pixel_std(model)  # the input std moves into the first conv: one full-resolution float op fewer
        export_image_graph(model, tokenizer, out / IMAGE_FILE)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    storage = {}
    if args.weights == "fp16":
        originals = {k: v.detach().numpy() for k, v in model.state_dict().items() if v.is_floating_point()}
        for name in (TEXT_FILE, IMAGE_FILE):
            graph = onnx.load(str(out / name))
            storage[name] = store_fp16(graph, originals)
            atomic_write(out / name, lambda p, g=graph: onnx.save(g, p))
            check_standard_ops(out / name)
            print(f"{name}: weights stored as " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in storage[name].items()))
    cases = {"full": DEFAULT_CASES, "quick": [c for c in DEFAULT_CASES if c.tokens == 10 and c.batch == 1],
             "off": []}[args.parity]
    parity = [asdict(c) for c in check_parity(model, tokenizer, out / TEXT_FILE, out / IMAGE_FILE, cases,
                                              threads=args.threads)] if cases else []
    for c in parity:
        print(f"parity {c['batch']}x{c['height']}x{c['width']} {c['tokens']:>2} tokens: "
              f"max |dlogit| {c['max_abs_diff']:.2e} (logits up to {c['max_abs_logit']:.1f})")
    shutil.copyfile(tokenizer.path, out / "tokenizer.json")
    manifest = build_manifest(model, meta, str(args.checkpoint), parity, "python -m convert " + " ".join(argv or sys.argv[1:]))
    manifest["tokenizer"]["sha256"] = sha256(out / "tokenizer.json")
    manifest["weight_storage"] = {"mode": args.weights, "bytes_by_treatment": storage}
    write_manifest(out, manifest)
    worst = max((c["max_abs_diff"] for c in parity), default=0.0)
    print(json.dumps({"bundle": str(out), "parity_max_abs_diff": worst, "cases": len(parity)}))
    if worst > args.tolerance:
        print(f"error: onnxruntime differs from PyTorch by {worst:.2e} > {args.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
