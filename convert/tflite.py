"""``python -m convert.tflite --checkpoint DIR --out BUNDLE_DIR``: the image graph as ``.tflite``.

Converter: **litert-torch** (0.10, Google's successor of ai-edge-torch). It converts straight from
PyTorch (``torch.export``), supports our torch (it asks for torch < 2.15) and Python 3.11, and
needs no TensorFlow; onnx2tf would need the 270 MB tensorflow wheel and a second conversion hop
(ONNX -> TF -> TFLite) whose NHWC rewrites we would have to re-verify. litert-torch pulls in JAX
and torchao, so it is not a dependency of any extra: install it in its own venv
(``python -m venv --system-site-packages .venv-tflite && .venv-tflite/bin/pip install litert-torch``).

Writes, for a fixed ``--size`` (TFLite graphs are static-shaped):
* ``image_fp32.tflite`` - float32;
* ``image_int8.tflite`` - full INT8 via PT2E (per-channel symmetric weights, activations
  calibrated on ``--calib`` pairs). With litert-torch 0.10 and torch 2.13 this step fails on our
  graph (a quantized op receives the int64 attention mask); the error is recorded in the report
  and the exit code is 1;
and ``tflite_report.json`` with the max |logit| difference of each against PyTorch and the mask
agreement (IoU of logit > 0) on calibration images, measured with ``ai_edge_litert``'s interpreter.
The text tensors stay inputs (computed by the ONNX text graph), as in the ONNX image graph; the
attention mask is int32 in the ``.tflite`` signature.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from convert.graphs import ImageGraph, TextGraph
from eris.checkpoint import load_checkpoint
from pi_runtime.files import atomic_write_bytes
from pi_runtime.preprocess import letterbox, load_image
from quantize.calib import read_pairs


def _feeds(model, tokenizer, pairs, size, max_tokens):
    """(uint8 NHWC image, int64 mask, *text tensors) per pair, phrases padded to ``max_tokens``."""
    text_graph = TextGraph(model).eval()
    out = []
    for path, phrase in pairs:
        image, _ = letterbox(load_image(path), size, model.config.size_divisor)
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[: image.shape[0], : image.shape[1]] = image
        ids, mask = tokenizer([phrase])
        pad = max_tokens - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, pad))
        mask = torch.nn.functional.pad(mask, (0, pad))
        with torch.no_grad():
            text = text_graph(ids, mask)
        out.append((torch.from_numpy(canvas)[None], mask, *text))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _compare(edge_model, reference, feeds) -> dict:
    diffs, ious = [], []
    for args in feeds:
        tfl_args = [a.to(torch.int32) if a.dtype == torch.int64 else a for a in args]
        out = np.asarray(edge_model(*tfl_args))
        with torch.no_grad():
            ref = reference(*args).numpy()
        diffs.append(float(np.abs(out - ref).max()))
        ious.append(_iou(out > 0, ref > 0))
    return {"max_abs_diff": max(diffs), "mask_agreement_iou": float(np.mean(ious)), "n": len(feeds)}


def _observe_floats_only() -> None:
    """PT2E's quantizer also puts observers on integer tensors (the attention mask's arithmetic)
    and torch.histc has no int64 kernel; those tensors are never quantized, so skip observing them."""
    from torchao.quantization.pt2e import observer

    for cls in (observer.HistogramObserver, observer.MinMaxObserver, observer.PerChannelMinMaxObserver):
        original = cls.forward
        if getattr(original, "_floats_only", False):
            continue

        def forward(self, x, _original=original):
            return x if not x.is_floating_point() else _original(self, x)

        forward._floats_only = True
        cls.forward = forward


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.tflite", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    ap.add_argument("--checkpoint", required=True, help="checkpoint directory")
    ap.add_argument("--out", required=True, type=Path, help="directory for the .tflite files and report")
    ap.add_argument("--calib", type=Path, default=Path("calib_data"), help="calibration pairs (manifest.jsonl)")
    ap.add_argument("--calib-n", type=int, default=32, help="pairs used to calibrate the INT8 graph")
    ap.add_argument("--eval-n", type=int, default=8, help="other pairs used to compare with PyTorch")
    ap.add_argument("--size", type=int, default=640, help="static input side (square, multiple of 32)")
    ap.add_argument("--skip-int8", action="store_true", help="write only the float32 graph")
    args = ap.parse_args(argv)
    try:
        import litert_torch
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e
    except ImportError as exc:
        print(f"error: litert-torch is not installed ({exc}); see python -m convert.tflite --help", file=sys.stderr)
        return 2

    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    pairs = read_pairs(args.calib)
    calib = _feeds(model, tokenizer, pairs[: args.calib_n], args.size, model.config.max_tokens)
    held = _feeds(model, tokenizer, pairs[args.calib_n: args.calib_n + args.eval_n], args.size, model.config.max_tokens)
    graph = ImageGraph(model).eval()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"converter": f"litert-torch {getattr(litert_torch, '__version__', '?')}", "size": args.size}

    t0 = time.perf_counter()
    edge = litert_torch.convert(graph, calib[0])
    edge.export(str(args.out / "image_fp32.tflite"))
    report["fp32"] = {"file": "image_fp32.tflite", "bytes": (args.out / "image_fp32.tflite").stat().st_size,
                      "convert_s": round(time.perf_counter() - t0, 1), **_compare(edge, graph, held)}
    print(json.dumps({"fp32": report["fp32"]}), flush=True)

    if not args.skip_int8:
        t0 = time.perf_counter()
        try:
            _observe_floats_only()
            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
            prepared = quantize_pt2e.prepare_pt2e(torch.export.export(graph, calib[0]).module(), quantizer)
            with torch.no_grad():
                for feed in calib:
                    prepared(*feed)
            quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
            edge8 = litert_torch.convert(quantized, calib[0], quant_config=QuantConfig(pt2e_quantizer=quantizer))
            edge8.export(str(args.out / "image_int8.tflite"))
            report["int8"] = {"file": "image_int8.tflite", "bytes": (args.out / "image_int8.tflite").stat().st_size,
                              "calibration_pairs": len(calib), "convert_s": round(time.perf_counter() - t0, 1),
                              **_compare(edge8, graph, held)}
        except Exception as exc:  # noqa: BLE001 - report what the converter said and keep the fp32 result
            report["int8"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            print(f"error: INT8 .tflite failed: {report['int8']['error']}", file=sys.stderr)
        print(json.dumps({"int8": report["int8"]}), flush=True)
    atomic_write_bytes(args.out / "tflite_report.json", (json.dumps(report, indent=2) + "\n").encode())
    return 1 if "error" in report.get("int8", {}) else 0


if __name__ == "__main__":
    raise SystemExit(main())
