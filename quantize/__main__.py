"""``python -m quantize --bundle BUNDLE --calib calib_data/ [--report]``: add an INT8 image graph.

1. Pre-process the fp32 image graph (``quant_pre_process``).
2. Compare S8S8 / U8S8 x MinMax / Percentile / Entropy, each calibrated on ``--compare-n`` pairs,
   by how well the INT8 masks agree with fp32 (mean IoU) on ``--holdout-n`` ShapeRef val images.
3. Per-node sensitivity report of the best scheme; nodes whose own quantization SQNR is below
   ``--sqnr-threshold`` dB stay in float.
4. Quantize with the best scheme on all calibration pairs, excluding those nodes, write
   ``image_int8.onnx`` and record the choice in the manifest.
5. With ``--report``: mIoU / oIoU on ShapeRef val at 640 for ONNX fp32 and INT8 (the checkpoint's
   PyTorch numbers come from the manifest), file sizes, written to ``quantization_report.json``
   and ``.md`` in the bundle.

The text graph stays fp32 unless dynamic INT8 keeps the cosine similarity of every output
>= 0.999 on the calibration phrases (and, with ``--report``, the mIoU drop <= 0.2 points).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pi_runtime.bundle import load_manifest, write_manifest
from pi_runtime.segmenter import Segmenter
from quantize.calib import CalibrationReader, read_pairs
from quantize.int8 import ACTIVATION_TYPES, METHODS, QuantConfig, preprocess, quantize_image_graph, sensitivity_report

INT8_FILE, TEXT_INT8_FILE = "image_int8.onnx", "text_int8.onnx"


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def holdout_feeds(seg: Segmenter, n: int) -> list[dict]:
    """Image-graph feeds for the first ``n`` ShapeRef val scenes (never used for calibration)."""
    from eris.data.shapes import get_sample
    from pi_runtime.preprocess import letterbox

    feeds = []
    for i in range(n):
        s = get_sample("val", i, long_side=seg.long_side)
        image, _ = letterbox(s.image, seg.long_side, seg.divisor)
        feeds.append({"image": image[None], **seg.encode(s.phrase)})
    return feeds


def agreement(reference: ort.InferenceSession, candidate: ort.InferenceSession, feeds: list[dict]) -> dict:
    """Mean IoU between the two graphs' masks (logit > 0) and mean logit SQNR (dB)."""
    ious, sqnrs = [], []
    for f in feeds:
        a, b = reference.run(None, f)[0], candidate.run(None, f)[0]
        ma, mb = a > 0, b > 0
        union = np.logical_or(ma, mb).sum()
        ious.append(1.0 if union == 0 else np.logical_and(ma, mb).sum() / union)
        sqnrs.append(10 * np.log10(np.square(a).sum() / max(np.square(a - b).sum(), 1e-12)))
    return {"mask_agreement_iou": float(np.mean(ious)), "logit_sqnr_db": float(np.mean(sqnrs))}


def text_dynamic_int8(bundle: Path, seg: Segmenter, phrases: list[str], threads: int | None) -> dict:
    """Dynamic INT8 of the text graph's weights; min cosine similarity of every output."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = bundle / TEXT_INT8_FILE
    quantize_dynamic(str(bundle / seg.manifest["graphs"]["text"]["file"]), str(out), weight_type=QuantType.QInt8)
    fp32, int8 = seg._text, _session(out, threads)
    names = seg.manifest["graphs"]["text"]["outputs"]
    worst = 1.0
    for p in phrases:
        ids, mask = seg.tokenize(p)
        for a, b in zip(fp32.run(names, {"input_ids": ids, "attention_mask": mask}),
                        int8.run(names, {"input_ids": ids, "attention_mask": mask})):
            a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
            worst = min(worst, float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
    return {"file": TEXT_INT8_FILE, "min_cosine": worst, "bytes": out.stat().st_size}


def evaluate_bundle(bundle: Path, precision: str, n: int, threads: int | None, text_file: str | None = None) -> dict:
    from eris.data.shapes import get_sample
    from eris.metrics import intersection_union, summarize

    seg = Segmenter(bundle, precision, threads)
    if text_file:
        seg._text = _session(bundle / text_file, threads)
    pairs = []
    for i in range(n):
        s = get_sample("val", i, long_side=640)
        pairs.append(intersection_union(seg.segment(s.image, s.phrase).mask, s.mask))
    return summarize(pairs)


def _markdown(report: dict) -> str:
    rows = ["| precision | mIoU | oIoU | image graph MB |", "|---|---|---|---|"]
    for key, label in (("torch_fp32", "PyTorch fp32"), ("onnx_fp32", "ONNX fp32"), ("onnx_int8", "ONNX INT8")):
        m = report["metrics"].get(key) or {}
        size = report["sizes_mb"].get({"onnx_fp32": "image_fp32", "onnx_int8": "image_int8"}.get(key, ""), "")
        if m:
            rows.append(f"| {label} | {m.get('mIoU', float('nan')):.2f} | {m.get('oIoU', float('nan')):.2f} | {size} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quantize", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    ap.add_argument("--bundle", required=True, type=Path, help="bundle directory from python -m convert")
    ap.add_argument("--calib", type=Path, default=Path("calib_data"), help="calibration directory (manifest.jsonl)")
    ap.add_argument("--calib-n", type=int, default=None, help="calibration pairs for the final graph (default: all)")
    ap.add_argument("--compare-n", type=int, default=24, help="calibration pairs per compared scheme")
    ap.add_argument("--holdout-n", type=int, default=24, help="ShapeRef val images to compare schemes on")
    ap.add_argument("--sensitivity-n", type=int, default=4, help="images for the per-node sensitivity report")
    ap.add_argument("--sqnr-threshold", type=float, default=15.0, help="keep nodes with own-quantization SQNR below this (dB) in float")
    ap.add_argument("--schemes", default="S8S8,U8S8", help=f"comma list of {sorted(ACTIVATION_TYPES)}")
    ap.add_argument("--methods", default="minmax,percentile,entropy", help=f"comma list of {sorted(METHODS)}")
    ap.add_argument("--report", action="store_true", help="measure mIoU/oIoU of fp32 and INT8 on ShapeRef val")
    ap.add_argument("--eval-n", type=int, default=1000, help="ShapeRef val images for --report")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    args = ap.parse_args(argv)

    bundle = args.bundle
    manifest = load_manifest(bundle)
    seg = Segmenter(bundle, "fp32", args.threads)
    pairs = read_pairs(args.calib)
    final_pairs = pairs[:args.calib_n] if args.calib_n else pairs

    def reader(subset):
        return CalibrationReader(subset, seg._text, seg._text_outputs, seg.tokenize, seg.long_side, seg.divisor,
                                 seg.max_tokens)

    fp32_path = bundle / manifest["graphs"]["image"]["fp32"]["file"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pre = preprocess(fp32_path, tmp / "pre.onnx")
        reference = _session(pre, args.threads)
        feeds = holdout_feeds(seg, args.holdout_n)
        compared = []
        for scheme in args.schemes.split(","):
            for method in args.methods.split(","):
                cfg = QuantConfig(scheme.strip(), method.strip())
                try:
                    path = quantize_image_graph(pre, tmp / f"{cfg.name}.onnx", reader(pairs[:args.compare_n]), cfg)
                except ValueError as exc:  # e.g. histogram calibration of a constant tensor
                    compared.append({"scheme": cfg.scheme, "method": cfg.method, "error": str(exc)})
                    print(f"{cfg.name:<18} failed: {exc}", flush=True)
                    continue
                row = {"scheme": cfg.scheme, "method": cfg.method,
                       **agreement(reference, _session(path, args.threads), feeds)}
                compared.append(row)
                print(f"{cfg.name:<18} mask agreement {row['mask_agreement_iou']:.4f}  "
                      f"logit SQNR {row['logit_sqnr_db']:.1f} dB", flush=True)
        usable = [r for r in compared if "error" not in r]
        if not usable:
            print("error: every quantization scheme failed; see above", file=sys.stderr)
            return 1
        best = max(usable, key=lambda r: (r["mask_agreement_iou"], r["logit_sqnr_db"]))
        best_cfg = QuantConfig(best["scheme"], best["method"])
        sensitivity = sensitivity_report(pre, tmp / f"{best_cfg.name}.onnx", reader(pairs[:args.sensitivity_n]))
        exclude = sorted({r["node"] for r in sensitivity if r["qdq_sqnr_db"] < args.sqnr_threshold and r["node"] != "?"})
        print(f"best {best_cfg.name}; keeping {len(exclude)} node(s) in float: {exclude}", flush=True)
        quantize_image_graph(pre, tmp / INT8_FILE, reader(final_pairs), best_cfg, exclude)
        final = agreement(reference, _session(tmp / INT8_FILE, args.threads), feeds)
        shutil.copyfile(tmp / INT8_FILE, bundle / INT8_FILE)

    text = text_dynamic_int8(bundle, seg, [p for _, p in pairs[:100]], args.threads)
    text["accepted"] = text["min_cosine"] >= 0.999
    spec = manifest["graphs"]["image"]["fp32"]
    manifest["graphs"]["image"]["int8"] = {
        "file": INT8_FILE, "inputs": spec["inputs"], "outputs": spec["outputs"],
        "quantization": {"format": "QDQ", "weights": "S8 per-channel", "scheme": best_cfg.scheme,
                         "calibration": best_cfg.method, "calibration_pairs": len(final_pairs),
                         "calibration_set": str(args.calib), "nodes_in_float": exclude,
                         "sqnr_threshold_db": args.sqnr_threshold, "compared": compared,
                         "holdout_agreement": final},
    }
    files = set(manifest["files"]) | {INT8_FILE}
    report = {"compared": compared, "chosen": best_cfg.name, "nodes_in_float": exclude,
              "sensitivity": sensitivity[:40], "holdout_agreement": final, "text_dynamic_int8": text}
    if args.report:
        m = manifest.setdefault("metrics", {})
        m["onnx_fp32"] = evaluate_bundle(bundle, "fp32", args.eval_n, args.threads)
        manifest["files"] = sorted(files)
        write_manifest(bundle, manifest)  # so the INT8 graph loads for evaluation
        m["onnx_int8"] = evaluate_bundle(bundle, "int8", args.eval_n, args.threads)
        if text["accepted"]:
            m["onnx_int8_text_int8"] = evaluate_bundle(bundle, "int8", args.eval_n, args.threads, TEXT_INT8_FILE)
            text["accepted"] = m["onnx_int8"]["mIoU"] - m["onnx_int8_text_int8"]["mIoU"] <= 0.2
        report["metrics"] = m
    if text["accepted"]:
        manifest["graphs"]["text"].update({"file": TEXT_INT8_FILE, "precision": "int8-dynamic"})
        files.add(TEXT_INT8_FILE)
    else:
        (bundle / TEXT_INT8_FILE).unlink(missing_ok=True)
        files.discard(TEXT_INT8_FILE)
    manifest["text_quantization"] = text
    manifest["files"] = sorted(files)
    write_manifest(bundle, manifest)
    report["sizes_mb"] = {Path(f).stem: round((bundle / f).stat().st_size / 1e6, 2) for f in sorted(files)}
    report.setdefault("metrics", manifest.get("metrics", {}))
    (bundle / "quantization_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (bundle / "quantization_report.md").write_text(_markdown(report))
    print(_markdown(report))
    print(json.dumps({"bundle": str(bundle), "chosen": best_cfg.name, "nodes_in_float": len(exclude),
                      "holdout_agreement": final, "text_int8": text["accepted"], "sizes_mb": report["sizes_mb"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
