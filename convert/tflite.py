"""``python -m convert.tflite --checkpoint DIR --bundle BUNDLE``: add ``.tflite`` graphs to a bundle.

Converter: **litert-torch** (Google's successor of ai-edge-torch) straight from PyTorch
(``torch.export``; no TensorFlow, no ONNX -> TF hop), then Google's **ai-edge-quantizer** on the
``.tflite`` file for the reduced precisions. litert-torch pulls in JAX and torchao, so it belongs
to no extra: install it in its own venv,
``python -m venv --system-site-packages .venv-tflite && .venv-tflite/bin/pip install litert-torch``,
and run this module with that venv's python.

Writes into the bundle, for one static ``--input-hw`` (TFLite graphs are static-shaped; phrases
are padded to the bundle's ``max_tokens``):
* ``text_fp16.tflite`` - the text graph (the encoder alone, as in ONNX), weights stored fp16;
* ``image_fp32.tflite``, ``image_fp16.tflite`` (weights fp16, arithmetic fp32 or, where XNNPACK
  chooses, fp16), ``image_int8.tflite`` (INT8 weights and activations, calibrated on
  ``--calib`` pairs, each image with its own phrase; ``--int8-scope`` says which ops);
and records them under ``graphs.litert`` in ``manifest.json`` (signature names, shapes, dtypes),
with ``tflite_report.json``: max |logit difference| and mask agreement (IoU of logit > 0) of
every graph against PyTorch on held-out calibration pairs, measured in the LiteRT interpreter.

The deformable convs are exported in their ``gather`` formulation: litert-torch lowers
``grid_sample`` to per-element GATHER_ND, which ran ~10x slower than the gather form here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from convert.graphs import IMAGE_INPUTS, IMAGE_OUTPUTS, TEXT_INPUTS, TEXT_OUTPUTS, ImageGraph, TextGraph
from eris.ops import DeformConv2d
from pi_runtime.bundle import load_manifest, write_manifest
from pi_runtime.files import atomic_write_bytes
from pi_runtime.preprocess import letterbox_into, load_image

__all__ = ["export_litert", "litert_section", "add_to_manifest", "INT8_SCOPES", "main"]

# Which ops the INT8 graph quantizes: (ai-edge-quantizer regex over tensor names, op name).
# litert-torch names tensors by module path. "all" quantizes every supported op; "convs" every
# convolution (what the ONNX INT8 graph quantizes); "backbone" only the STDC convolutions, where
# most of the arithmetic is and where INT8 costs the least accuracy.
INT8_SCOPES = {"all": (".*", "*"), "convs": (".*", "CONV_2D"), "backbone": (".*eris\\.backbones\\..*", "*")}
FP16_RECIPE = [{"regex": ".*", "operation": "*", "algorithm_key": "float_casting",
                "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                              "compute_precision": "FLOAT", "explicit_dequantize": True}}]


def _int8_recipe(scope: tuple[str, str]) -> list[dict]:
    regex, operation = scope
    return [{"regex": regex, "operation": operation, "algorithm_key": "min_max_uniform_quantize",
             "op_config": {"activation_tensor_config": {"num_bits": 8, "symmetric": False,
                                                        "granularity": "TENSORWISE", "dtype": "INT"},
                           "weight_tensor_config": {"num_bits": 8, "symmetric": True,
                                                    "granularity": "CHANNELWISE", "dtype": "INT"},
                           "compute_precision": "INTEGER", "explicit_dequantize": False}}]


def _signature(path: Path, names_in: list[str], names_out: list[str]) -> dict:
    """The manifest's description of one ``.tflite`` graph, read back from the file itself."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    ins, outs = runner.get_input_details(), runner.get_output_details()
    sig_in = sorted(ins, key=lambda k: int(k.rsplit("_", 1)[-1]))   # args_0, args_1, ... = argument order
    sig_out = sorted(outs, key=lambda k: int(k.rsplit("_", 1)[-1]))
    return {"file": path.name, "inputs": names_in, "outputs": names_out,
            "signature_inputs": sig_in, "signature_outputs": sig_out,
            "input_shapes": [list(map(int, ins[k]["shape"])) for k in sig_in],
            "input_dtypes": [np.dtype(ins[k]["dtype"]).name for k in sig_in],
            "output_shapes": [list(map(int, outs[k]["shape"])) for k in sig_out]}


def _open(path: Path, spec: dict):
    from pi_runtime.litert import LiteRTGraph

    return LiteRTGraph(path, spec, 2, path.stem)


def _pairs_feeds(model, tokenizer, pairs, hw, max_tokens) -> list[tuple]:
    """``(image uint8 [1,H,W,3], ids int32, mask int32)`` per pair: static shapes, padded phrase."""
    out = []
    for path, phrase in pairs:
        canvas, _ = letterbox_into(load_image(path), hw)
        ids, mask = tokenizer([phrase])
        pad = max_tokens - ids.shape[1]
        out.append((torch.from_numpy(canvas)[None], torch.nn.functional.pad(ids, (0, pad)).int(),
                    torch.nn.functional.pad(mask, (0, pad)).int()))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _quantize(src: Path, dst: Path, recipe: list[dict], calibration: list[dict] | None = None) -> None:
    from ai_edge_quantizer import quantizer

    qt = quantizer.Quantizer(str(src), recipe)
    result = qt.calibrate({"serving_default": calibration}) if calibration else None
    qt.quantize(result).export_model(str(dst), overwrite=True)


def export_litert(model, tokenizer, bundle: Path, pairs: list, hw: tuple[int, int], precisions: list[str],
                  calib_n: int, eval_n: int, int8_scope: str = "convs") -> dict:
    """Converts, quantizes and checks; returns the report. Writes the ``.tflite`` files into
    ``bundle`` and returns their manifest entries under ``report["graphs"]``."""
    import litert_torch

    model = model.eval()
    for m in model.modules():
        if isinstance(m, DeformConv2d):
            m.sampling = "gather"
    max_tokens = model.config.max_tokens
    text_graph, image_graph = TextGraph(model).eval(), ImageGraph(model).eval()
    feeds = _pairs_feeds(model, tokenizer, pairs[:calib_n + eval_n], hw, max_tokens)
    calib, held = feeds[:calib_n], feeds[calib_n:]
    with torch.no_grad():
        text_of = [text_graph(ids, mask) for _, ids, mask in feeds]
    report = {"converter": f"litert-torch {getattr(litert_torch, '__version__', '?')} + ai-edge-quantizer",
              "input_hw": list(hw), "max_tokens": max_tokens, "held_out_pairs": len(held), "graphs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        litert_torch.convert(text_graph, feeds[0][1:]).export(str(tmp / "text_fp32.tflite"))
        _quantize(tmp / "text_fp32.tflite", bundle / "text_fp16.tflite", FP16_RECIPE)
        (bundle / "text_fp16.tflite").chmod(0o644)
        spec = _signature(bundle / "text_fp16.tflite", TEXT_INPUTS, TEXT_OUTPUTS)
        cos, text16 = [], _open(bundle / "text_fp16.tflite", spec)
        for (_, ids, mask), want in zip(held, text_of[calib_n:]):
            got = text16.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
            a, b = got[0].ravel().astype(np.float64), want[0].numpy().ravel().astype(np.float64)
            cos.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
        report["graphs"]["text"] = {**spec, "precision": "fp16", "min_cosine_vs_torch": min(cos, default=1.0),
                                    "convert_s": round(time.perf_counter() - t0, 1)}

        t0 = time.perf_counter()
        litert_torch.convert(image_graph, (feeds[0][0], *text_of[0])).export(str(tmp / "image_fp32.tflite"))
        fp32_s = round(time.perf_counter() - t0, 1)
        with torch.no_grad():  # PyTorch's logits on the held-out pairs, the reference of every precision
            wanted = [image_graph(img, *t).numpy() for (img, _, _), t in zip(held, text_of[calib_n:])]
        for precision in precisions:
            t0 = time.perf_counter()
            dst = bundle / f"image_{precision}.tflite"
            if precision == "fp32":
                dst.write_bytes((tmp / "image_fp32.tflite").read_bytes())
            elif precision == "fp16":
                _quantize(tmp / "image_fp32.tflite", dst, FP16_RECIPE)
            else:
                spec32 = _signature(tmp / "image_fp32.tflite", IMAGE_INPUTS, IMAGE_OUTPUTS)
                data = [dict(zip(spec32["signature_inputs"], (img.numpy(), t[0].numpy(), t[1].numpy())))
                        for (img, _, _), t in zip(calib, text_of)]
                _quantize(tmp / "image_fp32.tflite", dst, _int8_recipe(INT8_SCOPES[int8_scope]), data)
            dst.chmod(0o644)  # ai-edge-quantizer writes its files executable
            spec = _signature(dst, IMAGE_INPUTS, IMAGE_OUTPUTS)
            diffs, ious, graph = [], [], _open(dst, spec)
            for (img, _, _), t, want in zip(held, text_of[calib_n:], wanted):
                got = graph.run(None, {"image": img.numpy(), "text_tokens": t[0].numpy(), "token_mask": t[1].numpy()})[0]
                diffs.append(float(np.abs(got - want).max()))
                ious.append(_iou(got > 0, want > 0))
            report["graphs"][precision] = {**spec, "max_abs_diff_vs_torch": max(diffs, default=0.0),
                                           "mask_agreement_iou": float(np.mean(ious)) if ious else None,
                                           "bytes": dst.stat().st_size,
                                           "convert_s": round(time.perf_counter() - t0 + (fp32_s if precision == "fp32" else 0), 1),
                                           **({"int8_scope": int8_scope, "calibration_pairs": len(calib)}
                                              if precision == "int8" else {})}
            print(json.dumps({precision: {k: v for k, v in report["graphs"][precision].items()
                                          if k.endswith(("diff_vs_torch", "iou", "bytes", "_s"))}}), flush=True)
    return report


def litert_section(report: dict) -> dict:
    """``graphs.litert`` of the manifest, from :func:`export_litert`'s report."""
    keep = ("file", "inputs", "outputs", "signature_inputs", "signature_outputs", "input_shapes", "input_dtypes",
            "output_shapes")
    g = report["graphs"]
    return {"input_hw": report["input_hw"],
            "text": {**{k: g["text"][k] for k in keep}, "precision": "fp16"},
            "image": {p: {k: v[k] for k in keep} for p, v in g.items() if p != "text"}}


def add_to_manifest(bundle: Path, report: dict, command: str) -> None:
    manifest = load_manifest(bundle)
    manifest["graphs"]["litert"] = litert_section(report)
    files = set(manifest["files"]) | {"tflite_report.json", *(v["file"] for v in report["graphs"].values())}
    manifest["files"] = sorted(files)
    manifest.setdefault("provenance", {}).setdefault("commands", []).append(command)
    write_manifest(bundle, manifest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.tflite", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    ap.add_argument("--checkpoint", required=True, help="checkpoint directory the bundle was exported from")
    ap.add_argument("--bundle", required=True, type=Path, help="bundle directory to add the .tflite graphs to")
    ap.add_argument("--input-hw", default="480x640", help="static image input HxW (default 480x640: a 4:3 camera frame)")
    ap.add_argument("--precisions", default="int8,fp16,fp32", help="image graphs to write (comma-separated)")
    ap.add_argument("--int8-scope", choices=sorted(INT8_SCOPES), default="convs",
                    help="ops the INT8 graph quantizes: convs (every convolution; default), backbone (STDC convs "
                         "only) or all (unusable here: mask agreement 0.01)")
    ap.add_argument("--calib", type=Path, default=Path("calib_data"), help="calibration pairs (directory with manifest.jsonl)")
    ap.add_argument("--calib-n", type=int, default=64, help="pairs that calibrate the INT8 graph")
    ap.add_argument("--eval-n", type=int, default=16, help="further pairs that compare every graph with PyTorch")
    args = ap.parse_args(argv)
    try:
        import litert_torch  # noqa: F401
        import ai_edge_quantizer  # noqa: F401
    except ImportError as exc:
        print(f"error: {exc.name} is not installed; see python -m convert.tflite --help", file=sys.stderr)
        return 2
    from eris.checkpoint import load_checkpoint
    from quantize.calib import read_pairs

    try:
        hw = tuple(int(v) for v in args.input_hw.lower().split("x"))
        precisions = [p for p in args.precisions.split(",") if p]
        if len(hw) != 2 or not set(precisions) <= {"int8", "fp16", "fp32"} or not precisions:
            raise ValueError
    except ValueError:
        print(f"error: --input-hw {args.input_hw} / --precisions {args.precisions}: expected HxW and a list of "
              "int8, fp16, fp32", file=sys.stderr)
        return 2
    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    if any(x % model.config.size_divisor for x in hw):
        print(f"error: --input-hw {args.input_hw}: not multiples of {model.config.size_divisor}", file=sys.stderr)
        return 2
    load_manifest(args.bundle)  # refuse a broken bundle before minutes of conversion
    report = export_litert(model, tokenizer, args.bundle, read_pairs(args.calib), hw, precisions,
                           args.calib_n, args.eval_n, args.int8_scope)
    atomic_write_bytes(args.bundle / "tflite_report.json", (json.dumps(report, indent=2) + "\n").encode())
    add_to_manifest(args.bundle, report, "python -m convert.tflite " + " ".join(argv or sys.argv[1:]))
    print(json.dumps({"bundle": str(args.bundle), "graphs": sorted(report["graphs"])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
