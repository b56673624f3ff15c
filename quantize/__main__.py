"""``python -m quantize --bundle BUNDLE --calib calib_data/ [--report]``: add an INT8 image graph.

1. Pre-process the fp32 image graph (``quant_pre_process``).
2. Which op types to quantize (``--op-sets``, e.g. only Conv; Conv and MatMul; everything), then
   S8S8 / U8S8 x MinMax / Percentile / Entropy on the chosen set, each calibrated on
   ``--compare-n`` pairs and judged by how well the INT8 masks agree with fp32 (mean IoU) on
   ``--holdout-n`` val images (ShapeRef and RoboRef in turn), and by latency on this machine, the candidates of one
   comparison timed alternately (``--latency-runs`` calls each): the fastest candidate within
   ``--agreement-tolerance`` of the best agreement wins.
3. Per-node sensitivity report of the best scheme; nodes whose own quantization SQNR is below
   ``--sqnr-threshold`` dB are proposed for float, and kept in float only if that wins on the
   same agreement/latency rule, timed alternately against the all-INT8 graph.
4. Quantize with the best scheme on all calibration pairs, excluding those nodes, write
   ``image_int8.onnx`` and record the choice in the manifest.
5. With ``--report``: mIoU / oIoU on ShapeRef val at 640 for ONNX fp32 and INT8 (the checkpoint's
   PyTorch numbers come from the manifest), file sizes, written to ``quantization_report.json``
   and ``.md`` in the bundle.

Text graph: two INT8 candidates are measured, onnxruntime's dynamic INT8 and int8 storage of the
word-embedding table alone (fp32 arithmetic, ``convert.weights.int8_embedding``). The smallest one
that keeps the cosine similarity of every output >= 0.999 on the calibration phrases (and, with
``--report``, loses <= 0.2 mIoU end to end) replaces the float text graph; otherwise it stays.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from convert.weights import int8_embedding, store_fp16, unpack_fp16
from pi_runtime.bundle import load_manifest, write_manifest
from pi_runtime.files import atomic_write_bytes
from pi_runtime.precision import alternate
from pi_runtime.segmenter import Segmenter, session_options
from quantize.calib import CalibrationReader, read_pairs
from quantize.int8 import ACTIVATION_TYPES, METHODS, QuantConfig, preprocess, quantize_image_graph, sensitivity_report

INT8_FILE = "image_int8.onnx"
TEXT_DYNAMIC_FILE, TEXT_EMB8_FILE = "text_dynamic_int8.onnx", "text_int8_embedding.onnx"
TEXT_MIN_COSINE, TEXT_MAX_MIOU_DROP = 0.999, 0.2


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    """The runtime's own session options (no spinning threads): with onnxruntime's default,
    the thread pool of the session just run spins on the cores while the next one runs, and
    alternating two graphs on 2 cores read 64 ms for one that runs in 44."""
    return ort.InferenceSession(str(path), session_options(threads or 0, image_graph=True),
                                providers=["CPUExecutionProvider"])


HOLDOUT_SOURCES = ("shapes", "roboref")


def holdout_feeds(seg: Segmenter, n: int, sources: tuple[str, ...] = HOLDOUT_SOURCES) -> list[dict]:
    """Image-graph feeds for ``n`` val scenes (never used for calibration), taken from ``sources``
    in turn: the first ShapeRef val scene, the first RoboRef one, the second ShapeRef one, ...

    Why both and why 96 by default: in session 11, 24 ShapeRef scenes alone voted to keep 32 ReLUs
    in float (mask agreement 0.966 against 0.935 all-INT8); on all 1000 val scenes of each set the
    all-INT8 graph was the more accurate one (ShapeRef 53.76 against 53.62 mIoU, RoboRef 45.55
    against 45.44) and 8-10 % faster (alternating, 2 threads, 640x480 and 640x640)."""
    from eris.data import roboref, shapes
    from pi_runtime.preprocess import letterbox

    getters = {"shapes": shapes.get_sample, "roboref": roboref.get_sample}
    unknown = [s for s in sources if s not in getters]
    if unknown:
        raise SystemExit(f"--holdout-data: unknown source(s) {unknown}; choose from {sorted(getters)}")
    feeds = []
    for i in range(n):
        s = getters[sources[i % len(sources)]]("val", i // len(sources), long_side=seg.long_side)
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


def _min_cosine(reference: ort.InferenceSession, candidate: ort.InferenceSession, seg: Segmenter,
                phrases: list[str]) -> float:
    names = seg.manifest["graphs"]["text"]["outputs"]
    worst = 1.0
    for p in phrases:
        ids, mask = seg.tokenize(p)
        feeds = {"input_ids": ids, "attention_mask": mask}
        for a, b in zip(reference.run(names, feeds), candidate.run(names, feeds)):
            a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
            worst = min(worst, float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
    return worst


def alternating_latency_ms(sessions: list[ort.InferenceSession], feeds: dict, runs: int) -> list[float]:
    """Median latency (ms) of one image-graph call of each session on this (the build) machine,
    timed in turn (``pi_runtime.precision.alternate``), so that the candidates being compared
    share whatever else the machine is doing: timed one after the other on a shared VM, two
    graphs' medians drifted apart by 15 % with no change to either."""
    times = alternate({i: (lambda s=s: s.run(None, feeds)) for i, s in enumerate(sessions)}, runs)
    return [round(float(np.median(times[i])), 2) for i in range(len(sessions))]


def _time_rows(rows: list[dict], feeds: dict, runs: int) -> None:
    """Fills ``ms`` of each candidate row (its open ``row['session']``) by alternating timing,
    then drops the sessions from the rows."""
    ok = [r for r in rows if "error" not in r]
    if ok:
        for r, ms in zip(ok, alternating_latency_ms([r["session"] for r in ok], feeds, runs)):
            r["ms"] = ms
    for r in rows:
        r.pop("session", None)


def _fastest_good(rows: list[dict], tolerance: float) -> dict | None:
    """The fastest row whose mask agreement is within ``tolerance`` of the best one. Speed counts
    because the INT8 variants differ by up to 1.7x on the same CPU (x86: S8S8 convs run far
    slower than U8S8), while their agreement differs by a few thousandths."""
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return None
    top = max(r["mask_agreement_iou"] for r in ok)
    return min((r for r in ok if r["mask_agreement_iou"] >= top - tolerance), key=lambda r: r["ms"])


def text_candidates(bundle: Path, seg: Segmenter, phrases: list[str], threads: int | None, tmp: Path) -> list[dict]:
    """The text graph's INT8 options, each with the min cosine similarity of every output against
    the float graph over ``phrases``: onnxruntime's dynamic INT8 (weights and, at run time,
    activations), and int8 storage of the word-embedding table only (``convert.weights``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = bundle / seg.manifest["graphs"]["text"]["file"]
    unpacked = onnx.load(str(src))
    unpack_fp16(unpacked)  # quantize_dynamic finds weights only as plain fp32 initializers
    onnx.save(unpacked, str(tmp / "text_unpacked.onnx"))
    quantize_dynamic(str(tmp / "text_unpacked.onnx"), str(tmp / TEXT_DYNAMIC_FILE), weight_type=QuantType.QInt8,
                     per_channel=True)
    emb = onnx.load(str(src))
    tables = int8_embedding(emb)
    onnx.save(emb, str(tmp / TEXT_EMB8_FILE))
    out = []
    options = [("dynamic_int8", TEXT_DYNAMIC_FILE, {})]
    if tables:  # nothing to gain when no table is large enough
        options.append(("int8_embedding", TEXT_EMB8_FILE, {"tables": {k: list(v) for k, v in tables.items()}}))
    for kind, name, extra in options:
        cos = _min_cosine(seg._text, _session(tmp / name, threads), seg, phrases)
        out.append({"kind": kind, "file": name, "min_cosine": cos, "bytes": (tmp / name).stat().st_size,
                    "accepted_cosine": cos >= TEXT_MIN_COSINE, **extra})
        print(f"text {kind:<15} min cosine {cos:.5f}  {(tmp / name).stat().st_size / 1e6:.1f} MB", flush=True)
    return out


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
    labels = [("torch_fp32", "PyTorch fp32"), ("onnx_fp32", "ONNX fp32"), ("onnx_int8", "ONNX INT8 image")]
    labels += [(k, "ONNX INT8 image + " + k.removeprefix("onnx_int8_text_").replace("_", " ") + " text")
               for k in report["metrics"] if k.startswith("onnx_int8_text_")]
    for key, label in labels:
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
    ap.add_argument("--holdout-n", type=int, default=96, help="val images to compare schemes on")
    ap.add_argument("--holdout-data", default=",".join(HOLDOUT_SOURCES),
                    help="comma list of val sets the holdout images alternate between (shapes, roboref)")
    ap.add_argument("--sensitivity-n", type=int, default=4, help="images for the per-node sensitivity report")
    ap.add_argument("--sqnr-threshold", type=float, default=15.0, help="keep nodes with own-quantization SQNR below this (dB) in float")
    ap.add_argument("--op-sets", default="Conv;Conv,Relu;Conv,Relu,Add,Concat,AveragePool;Conv,MatMul,Gemm;all",
                    help="semicolon-separated op-type sets to compare ('all': every quantizable op)")
    ap.add_argument("--agreement-tolerance", type=float, default=0.01,
                    help="among candidates whose mask agreement is within this of the best, take the fastest")
    ap.add_argument("--latency-runs", type=int, default=15,
                    help="alternating timed calls per candidate (the median decides among equally accurate ones)")
    ap.add_argument("--schemes", default="S8S8,U8S8", help=f"comma list of {sorted(ACTIVATION_TYPES)}")
    ap.add_argument("--methods", default="minmax,percentile,entropy", help=f"comma list of {sorted(METHODS)}")
    ap.add_argument("--report", action="store_true", help="measure mIoU/oIoU of fp32 and INT8 on ShapeRef val")
    ap.add_argument("--eval-n", type=int, default=1000, help="ShapeRef val images for --report")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    ap.add_argument("--keep-float-text", action="store_true",
                    help="keep the float text graph as the bundle's text graph even when an INT8 one passes")
    args = ap.parse_args(argv)

    bundle = args.bundle
    manifest = load_manifest(bundle)
    seg = Segmenter(bundle, "fp32", args.threads)
    pairs = read_pairs(args.calib)
    final_pairs = pairs[:args.calib_n] if args.calib_n else pairs

    def reader(subset):
        return CalibrationReader(subset, seg._text, seg._text_outputs, seg.tokenize, seg.long_side, seg.divisor,
                                 seg.max_tokens, seg._image_inputs)

    fp32_path = bundle / manifest["graphs"]["image"]["fp32"]["file"]
    phrases = [p for _, p in pairs[:100]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        unpacked = onnx.load(str(fp32_path))
        unpack_fp16(unpacked)
        onnx.save(unpacked, str(tmp / "image_unpacked.onnx"))
        pre = preprocess(tmp / "image_unpacked.onnx", tmp / "pre.onnx")
        reference = _session(pre, args.threads)
        feeds = holdout_feeds(seg, args.holdout_n, tuple(x.strip() for x in args.holdout_data.split(",")))
        def trial(cfg: QuantConfig, ops: list[str] | None, label: str) -> dict:
            try:
                path = quantize_image_graph(pre, tmp / f"{cfg.name}.onnx", reader(pairs[:args.compare_n]), cfg,
                                            op_types=ops)
            except ValueError as exc:  # e.g. histogram calibration of a constant tensor
                print(f"{label:<32} failed: {exc}", flush=True)
                return {"scheme": cfg.scheme, "method": cfg.method, "op_types": ops, "error": str(exc)}
            session = _session(path, args.threads)
            return {"scheme": cfg.scheme, "method": cfg.method, "op_types": ops, "label": label,
                    **agreement(reference, session, feeds), "session": session}

        def timed(rows: list[dict]) -> list[dict]:
            _time_rows(rows, feeds[0], args.latency_runs)
            for r in rows:
                if "error" not in r:
                    print(f"{r.pop('label'):<32} mask agreement {r['mask_agreement_iou']:.4f}  "
                          f"logit SQNR {r['logit_sqnr_db']:.1f} dB  {r['ms']:.1f} ms", flush=True)
                r.pop("label", None)
            return rows

        op_sets = [None if o.strip() == "all" else [t.strip() for t in o.split(",")] for o in args.op_sets.split(";")]
        first = QuantConfig("U8S8", "minmax")
        op_rows = timed([trial(first, ops, f"ops {','.join(ops) if ops else 'all'} ({first.name})")
                         for ops in op_sets])
        op_best = _fastest_good(op_rows, args.agreement_tolerance) or {"op_types": None}
        op_types = op_best["op_types"]
        configs = [QuantConfig(scheme.strip(), method.strip())
                   for scheme in args.schemes.split(",") for method in args.methods.split(",")]
        compared = timed([trial(cfg, op_types, cfg.name) for cfg in configs])
        usable = [r for r in compared if "error" not in r]
        if not usable:
            print("error: every quantization scheme failed; see above", file=sys.stderr)
            return 1
        best = _fastest_good(usable, args.agreement_tolerance)
        best_cfg = QuantConfig(best["scheme"], best["method"])
        quantize_image_graph(pre, tmp / f"{best_cfg.name}.onnx", reader(pairs[:args.compare_n]), best_cfg,
                             op_types=op_types)
        sensitivity = sensitivity_report(pre, tmp / f"{best_cfg.name}.onnx", reader(pairs[:args.sensitivity_n]))
        proposed = sorted({r["node"] for r in sensitivity if r["qdq_sqnr_db"] < args.sqnr_threshold and r["node"] != "?"})
        # The report proposes; the end-to-end agreement and latency decide whether keeping those
        # nodes in float is worth it (a low SQNR at a ReLU output, say, may not matter for the mask).
        exclude, exclusion_trial = [], None
        if proposed:
            path = quantize_image_graph(pre, tmp / "excluded.onnx", reader(pairs[:args.compare_n]), best_cfg,
                                        proposed, op_types)
            session = _session(path, args.threads)
            exclusion_trial = {**agreement(reference, session, feeds), "nodes": proposed}
            # timed against the all-INT8 graph in one alternating run: their difference is what decides
            all_int8 = dict(best)
            pair = [_session(tmp / f"{best_cfg.name}.onnx", args.threads), session]
            all_int8["ms"], exclusion_trial["ms"] = alternating_latency_ms(pair, feeds[0], args.latency_runs)
            exclusion_trial["all_int8_ms"] = all_int8["ms"]
            print(f"{'with ' + str(len(proposed)) + ' node(s) in float':<32} mask agreement "
                  f"{exclusion_trial['mask_agreement_iou']:.4f}  {exclusion_trial['ms']:.1f} ms "
                  f"(all INT8 {all_int8['ms']:.1f} ms, alternating)", flush=True)
            if _fastest_good([all_int8, exclusion_trial], args.agreement_tolerance) is exclusion_trial:
                exclude = proposed
        print(f"best {best_cfg.name}; keeping {len(exclude)} node(s) in float: {exclude}", flush=True)
        quantize_image_graph(pre, tmp / INT8_FILE, reader(final_pairs), best_cfg, exclude, op_types)
        final = agreement(reference, _session(tmp / INT8_FILE, args.threads), feeds)
        # The weights left in float (text projections, biases, attention) are mostly exact in
        # fp16 (the checkpoint is fp16): store those as fp16 behind a Cast, lossless.
        int8_graph = onnx.load(str(tmp / INT8_FILE))
        leftover = store_fp16(int8_graph)
        onnx.save(int8_graph, str(bundle / INT8_FILE))
        print(f"INT8 graph: float weights stored as fp16 where exact: {leftover['fp16_exact'] / 1e6:.1f} MB "
              f"of fp32 halved, {leftover['fp32'] / 1e6:.1f} MB kept", flush=True)

        text_spec = manifest["graphs"]["text"]
        if text_spec.get("precision", "fp32") != "fp32":
            # Quantized before (re-running quantize to try other op sets): its text graph is an
            # INT8 one already, and quantizing that again would fail inside onnxruntime.
            print(f"text graph: {text_spec['file']} is {text_spec['precision']} already; left as it is", flush=True)
            candidates, text_choice = None, None
        else:
            candidates = text_candidates(bundle, seg, phrases, args.threads, tmp)
            # Smallest candidate that keeps every output's cosine >= TEXT_MIN_COSINE.
            passing = sorted((c for c in candidates if c["accepted_cosine"]), key=lambda c: c["bytes"])
            text_choice = passing[0] if passing else None
            if text_choice:
                shutil.copyfile(tmp / text_choice["file"], bundle / text_choice["file"])

    spec = manifest["graphs"]["image"]["fp32"]
    manifest["graphs"]["image"]["int8"] = {
        "file": INT8_FILE, "inputs": spec["inputs"], "outputs": spec["outputs"],
        "quantization": {"format": "QDQ", "weights": "S8 per-channel", "scheme": best_cfg.scheme,
                         "calibration": best_cfg.method, "calibration_pairs": len(final_pairs),
                         "calibration_set": str(args.calib), "nodes_in_float": exclude,
                         "op_types": op_types or "all", "op_sets_compared": op_rows,
                         "exclusion_trial": exclusion_trial,
                         "sqnr_threshold_db": args.sqnr_threshold, "compared": compared,
                         "holdout_agreement": final,
                         "holdout": {"n": args.holdout_n, "data": args.holdout_data},
                         "float_weight_bytes": {"stored_fp16": leftover["fp16_exact"], "kept_fp32": leftover["fp32"]}},
    }
    files = set(manifest["files"]) | {INT8_FILE}
    float_text = manifest["graphs"]["text"]["file"]
    report = {"op_sets_compared": op_rows, "op_types": op_types or "all",
              "compared": compared, "chosen": best_cfg.name, "nodes_in_float": exclude,
              "sensitivity": sensitivity[:40], "holdout_agreement": final, "text_candidates": candidates}
    m = manifest.setdefault("metrics", {})
    if args.report:
        m["onnx_fp32"] = evaluate_bundle(bundle, "fp32", args.eval_n, args.threads)
        manifest["files"] = sorted(files)
        write_manifest(bundle, manifest)  # so the INT8 graph loads for evaluation
        m["onnx_int8"] = evaluate_bundle(bundle, "int8", args.eval_n, args.threads)
        if text_choice:
            key = f"onnx_int8_text_{text_choice['kind']}"
            m[key] = evaluate_bundle(bundle, "int8", args.eval_n, args.threads, text_choice["file"])
            text_choice["miou_drop"] = m["onnx_int8"]["mIoU"] - m[key]["mIoU"]
            if text_choice["miou_drop"] > TEXT_MAX_MIOU_DROP:
                print(f"text {text_choice['kind']}: mIoU drop {text_choice['miou_drop']:.2f} > "
                      f"{TEXT_MAX_MIOU_DROP}; keeping the float text graph", flush=True)
                (bundle / text_choice["file"]).unlink()
                text_choice = None
    if text_choice and not args.keep_float_text:
        manifest["graphs"]["text"].update({"file": text_choice["file"], "precision": text_choice["kind"]})
        files = (files - {float_text}) | {text_choice["file"]}
        (bundle / float_text).unlink()
        print(f"text graph: {text_choice['file']} replaces {float_text}", flush=True)
    elif text_choice:
        files.add(text_choice["file"])
    if candidates is not None:  # else the record of the run that quantized the text graph stays
        manifest["text_quantization"] = {"criteria": {"min_cosine": TEXT_MIN_COSINE, "max_miou_drop": TEXT_MAX_MIOU_DROP},
                                         "candidates": candidates, "chosen": text_choice and text_choice["kind"]}
    manifest["files"] = sorted(files)
    write_manifest(bundle, manifest)
    report["sizes_mb"] = {Path(f).stem: round((bundle / f).stat().st_size / 1e6, 2) for f in sorted(files)}
    report["metrics"] = m
    atomic_write_bytes(bundle / "quantization_report.json", (json.dumps(report, indent=2) + "\n").encode())
    atomic_write_bytes(bundle / "quantization_report.md", _markdown(report).encode())
    print(_markdown(report))
    print(json.dumps({"bundle": str(bundle), "chosen": best_cfg.name, "nodes_in_float": len(exclude),
                      "holdout_agreement": final,
                      "text": text_choice["kind"] if text_choice else manifest["graphs"]["text"].get("precision"),
                      "sizes_mb": report["sizes_mb"], "total_mb": round(sum(report["sizes_mb"].values()), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
