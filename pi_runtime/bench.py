"""``python -m pi_runtime bench``: how fast this machine runs the bundle.

Measures, each over ``--runs`` repetitions after ``--warmup`` ones:
* cold start: loading the bundle plus the first mask (text graph, image graph, post-processing);
* text graph: a new phrase each time (cache bypassed), and a repeated phrase (the cache);
* image graph alone, on a ``--size`` frame already letterboxed (``--aspect 1:1`` by default);
* the whole per-frame path a camera frame takes (letterbox, image graph, resize, threshold,
  bbox/centroid) with a cached phrase.
With ``--peer MODEL.onnx`` another ONNX model (e.g. YOLO11n-seg exported by its user) is timed
alternately with our image graph, in the same process with the same threads and session options,
and the ratio of the two p50s is reported (ours / peer: below 1 means we are faster).
With ``--profile`` the image graph runs instead under onnxruntime's own profiler, and its node
time is summed by op type (where a graph spends its time: which float ops an INT8 graph still
runs). Prints a table, then the same figures as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pi_runtime.__main__ import add_backend_arguments
from pi_runtime.bundle import BundleError, load_manifest
from pi_runtime.litert import BackendUnavailable, interpreter_package
from pi_runtime.precision import alternate
from pi_runtime.segmenter import Segmenter, default_bundle_dir, onnxruntime_importable, session_options

__all__ = ["main", "pi_health"]

PHRASES = ["the red circle on the left", "a big blue square", "the green star next to the ring",
           "the second triangle from the right", "the smallest yellow hexagon", "a purple diamond at the top",
           "the cross below the orange circle", "the leftmost ring"]


def _percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def _time(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pi_health() -> dict:
    """CPU temperature and throttling flags where ``vcgencmd`` exists (Raspberry Pi OS)."""
    if not shutil.which("vcgencmd"):
        return {}
    out = {}
    for key, cmd in (("temp", "measure_temp"), ("throttled", "get_throttled")):
        try:
            out[key] = subprocess.run(["vcgencmd", cmd], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            out[key] = f"unavailable ({exc})"
    return out


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
               "tensor(int8)": np.int8, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def peer_feeds(session, shape_arg: str | None) -> dict:
    """Random inputs for every input of ``session``: the first takes ``--peer-input`` (e.g.
    1x3x640x640) if given; dynamic dimensions of the others (or of the first, without it) are 1."""
    rng = np.random.default_rng(0)
    feeds = {}
    for k, inp in enumerate(session.get_inputs()):
        if k == 0 and shape_arg:
            shape = [int(v) for v in shape_arg.lower().split("x")]
        else:
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = _ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise ValueError(f"peer input {inp.name}: type {inp.type} is not supported by bench")
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        else:
            feeds[inp.name] = rng.integers(0, 255 if dtype == np.uint8 else 2, shape).astype(dtype)
    return feeds


def op_profile(graph: Path, feeds: dict, threads: int, runs: int, warmup: int) -> dict:
    """Node time of ``graph`` by op type per call, over ``runs`` calls after ``warmup`` untimed ones,
    from onnxruntime's profiler (``SessionOptions.enable_profiling``): ``{op: {"ms", "share",
    "nodes"}}``, largest first. Only the kernels' own time counts; the share is of their sum."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(threads, image_graph=True)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(starts) != warmup + runs:
        raise RuntimeError(f"{graph}: the profile holds {len(starts)} runs, expected {warmup + runs}")
    first_timed = starts[warmup]
    by_op: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < first_timed:
            continue
        entry = by_op.setdefault(e.get("args", {}).get("op_name", "?"), {"us": 0, "nodes": set()})
        entry["us"] += e["dur"]
        entry["nodes"].add(e["name"])
    total = sum(v["us"] for v in by_op.values()) or 1
    rows = sorted(by_op.items(), key=lambda kv: -kv[1]["us"])
    return {op: {"ms": round(v["us"] / 1e3 / runs, 3), "share": round(v["us"] / total, 4), "nodes": len(v["nodes"])}
            for op, v in rows}


def profile(args, frame: np.ndarray) -> int:
    """``--profile``: the image graph's node time by op type (see :func:`op_profile`)."""
    try:
        seg = Segmenter.from_bundle(args.bundle, args.precision, args.threads, long_side=args.size,
                                    backend="onnxruntime")
    except (BundleError, BackendUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    padded, _ = seg.canvas(frame)
    feeds = {"image": padded[None], **seg.encode(PHRASES[0])}
    graph = seg.bundle / seg.manifest["graphs"]["image"][seg.precision]["file"]
    ops = op_profile(graph, feeds, seg.threads, args.runs, args.warmup)
    total = sum(v["ms"] for v in ops.values())
    print(f"bundle {seg.bundle}  {graph.name}  input {padded.shape[1]}x{padded.shape[0]}  threads {seg.threads}  "
          f"{args.runs} profiled runs: node time {total:.2f} ms per call")
    print(f"{'op type':<24}{'nodes':>7}{'ms/call':>10}{'share':>9}")
    for op, v in ops.items():
        print(f"{op:<24}{v['nodes']:>7}{v['ms']:>10.3f}{100 * v['share']:>8.1f}%")
    print(json.dumps({"profile": ops, "node_ms": round(total, 3), "graph": graph.name,
                      "input_hw": list(padded.shape[:2]), "precision": seg.precision, "threads": seg.threads,
                      "runs": args.runs}))
    return 0


def backend_name(seg: Segmenter) -> str:
    if seg.backend == "litert":
        return f"litert ({seg._image.package}, XNNPACK)"
    return "onnxruntime " + __import__("onnxruntime").__version__ + " CPUExecutionProvider"


def compare(args, frame: np.ndarray) -> int:
    """Every (backend, precision) image graph the bundle has and this machine can run, timed
    alternately on the same frame and phrase; the table, then one JSON line."""
    bundle = args.bundle or default_bundle_dir()
    try:
        graphs = load_manifest(bundle)["graphs"]
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    candidates = []
    if "image" in graphs and onnxruntime_importable():
        candidates += [("onnxruntime", p) for p in sorted(graphs["image"])]
    if "litert" in graphs and interpreter_package():
        candidates += [("litert", p) for p in sorted(graphs["litert"]["image"])]
    if not candidates:
        print(f"error: {bundle}: no image graph this machine can run (install onnxruntime or ai-edge-litert)",
              file=sys.stderr)
        return 2
    runners = {}
    for backend, precision in candidates:
        try:
            seg = Segmenter.from_bundle(args.bundle, precision, args.threads,
                                        long_side=args.size if backend == "onnxruntime" else None, backend=backend)
        except (BundleError, BackendUnavailable, ValueError) as exc:
            print(f"error: {backend} {precision}: {exc}", file=sys.stderr)
            return 2
        padded, _ = seg.canvas(frame)
        feeds = {"image": padded[None], **seg.encode(PHRASES[0])}
        runners[f"{backend} {precision}"] = (seg, feeds, list(padded.shape[:2]))
    times = alternate({k: (lambda s=seg, f=feeds: s._image.run(None, f)) for k, (seg, feeds, _) in runners.items()},
                      args.runs, args.warmup)
    h, w = frame.shape[:2]
    print(f"bundle {bundle}  frame {w}x{h}  threads {args.threads or next(iter(runners.values()))[0].threads}  "
          f"{args.runs} alternating runs")
    print(f"{'image graph':<24}{'input':>12}{'p50 ms':>10}{'p95 ms':>10}")
    rows = {}
    for k, (seg, _, hw) in runners.items():
        p50, p95 = _percentiles(times[k])
        rows[k] = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "input_hw": hw, "backend": backend_name(seg)}
        print(f"{k:<24}{hw[1]:>6}x{hw[0]:<5}{p50:>10.2f}{p95:>10.2f}")
    print(json.dumps({"compare": rows, "frame_hw": [h, w], "machine": f"{platform.machine()} {platform.system()}"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pi_runtime bench", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the shipped one)")
    add_backend_arguments(ap)
    ap.add_argument("--size", type=int, default=640,
                    help="long side of the benchmark frame and of the model input (multiple of 32; .tflite graphs "
                         "take their own static size)")
    ap.add_argument("--compare", action="store_true",
                    help="instead: time every image graph of the bundle (each backend installed here, each "
                         "precision) alternately in this one process on the same frame, and report them side by side")
    ap.add_argument("--profile", action="store_true",
                    help="instead: run the image graph under onnxruntime's profiler and print its node time by "
                         "op type (onnxruntime graphs only)")
    ap.add_argument("--aspect", default="1:1", help="frame aspect W:H, e.g. 4:3 for a camera frame (default 1:1)")
    ap.add_argument("--runs", type=int, default=30, help="timed repetitions")
    ap.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    ap.add_argument("--peer", type=Path, default=None,
                    help="another ONNX model to time alternately with our image graph (same threads and options)")
    ap.add_argument("--peer-input", default=None,
                    help="shape of the peer's first input, e.g. 1x3x640x640 (default: its static shape)")
    args = ap.parse_args(argv)
    if args.peer is not None and not args.peer.is_file():
        print(f"error: --peer {args.peer}: no such file", file=sys.stderr)
        return 2
    try:
        aw, ah = (int(v) for v in args.aspect.split(":"))
    except ValueError:
        print(f"error: --aspect {args.aspect}: expected W:H, e.g. 4:3", file=sys.stderr)
        return 2
    w, h = (args.size, round(args.size * ah / aw)) if aw >= ah else (round(args.size * aw / ah), args.size)
    frame = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)

    if args.compare:
        return compare(args, frame)
    if args.profile:
        return profile(args, frame)
    t0 = time.perf_counter()
    try:
        seg = Segmenter.from_bundle(args.bundle, args.precision, args.threads,
                                    long_side=args.size if args.backend != "litert" else None, backend=args.backend)
    except (BundleError, BackendUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seg.segment(frame, PHRASES[0])
    cold_ms = (time.perf_counter() - t0) * 1e3

    counter = iter(range(10 ** 9))

    def new_phrase():  # bypass the cache: every call encodes a phrase not seen before
        i = next(counter)
        seg.encode(f"{PHRASES[i % len(PHRASES)]} {i}")

    text_ms = _time(new_phrase, args.runs, args.warmup)
    cached_ms = _time(lambda: seg.encode(PHRASES[0]), args.runs, args.warmup)
    padded, _ = seg.canvas(frame)
    feeds = {"image": padded[None], **seg.encode(PHRASES[0])}
    # Alternately, so that the per-frame overhead (frame - image) is not a drift of the machine
    # between two blocks of runs (on a shared VM that drift exceeded the overhead itself).
    both = alternate({"image": lambda: seg._image.run(None, feeds), "frame": lambda: seg.segment(frame, PHRASES[0])},
                     args.runs, args.warmup)
    image_ms, frame_ms = both["image"], both["frame"]

    (t50, t95), (i50, i95), (f50, f95) = _percentiles(text_ms), _percentiles(image_ms), _percentiles(frame_ms)
    report = {
        "image_p50_ms": round(i50, 2), "image_p95_ms": round(i95, 2),
        "frame_p50_ms": round(f50, 2), "frame_p95_ms": round(f95, 2),
        "text_p50_ms": round(t50, 2), "text_p95_ms": round(t95, 2),
        "text_cached_p50_ms": round(_percentiles(cached_ms)[0], 4),
        "fps": round(1000.0 / f50, 2), "frame_overhead_pct": round(100.0 * (f50 - i50) / i50, 1),
        "cold_start_ms": round(cold_ms, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        "input_hw": list(padded.shape[:2]), "frame_hw": [h, w],
        "backend": backend_name(seg), "backend_source": seg.backend_source,
        "precision": seg.precision, "precision_source": seg.precision_source, "threads": seg.threads,
        "runs": args.runs,
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
        **({"pi": pi_health()} if pi_health() else {}),
    }
    rows = [("image graph", i50, i95), ("per-frame path", f50, f95), ("text graph (new phrase)", t50, t95),
            ("text (cached phrase)", *_percentiles(cached_ms))]
    print(f"bundle {seg.bundle}  precision {seg.precision} ({seg.precision_source})  threads {seg.threads}  "
          f"frame {w}x{h} -> input {padded.shape[1]}x{padded.shape[0]}")
    print(f"{'':<26}{'p50 ms':>10}{'p95 ms':>10}")
    for name, p50, p95 in rows:
        print(f"{name:<26}{p50:>10.2f}{p95:>10.2f}")
    print(f"FPS {report['fps']:.1f}   per-frame overhead {report['frame_overhead_pct']:.1f} %   "
          f"cold start {cold_ms:.0f} ms   peak RSS {report['peak_rss_mb']:.0f} MB")
    for key, value in report.get("pi", {}).items():
        print(f"{key}: {value}")
    if args.peer is not None:
        import onnxruntime as ort

        options = session_options(seg.threads, image_graph=True)  # the same options as our image graph
        try:
            peer = ort.InferenceSession(str(args.peer), options, providers=["CPUExecutionProvider"])
            pfeeds = peer_feeds(peer, args.peer_input)
            peer.run(None, pfeeds)
        except Exception as exc:  # noqa: BLE001 - any load or run failure of the user's model
            print(f"error: --peer {args.peer}: {exc}", file=sys.stderr)
            return 2
        timed = alternate({"ours": lambda: seg._image.run(None, feeds), "peer": lambda: peer.run(None, pfeeds)},
                          args.runs, args.warmup)
        ours_ms, peer_ms = timed["ours"], timed["peer"]
        o50, p50 = _percentiles(ours_ms)[0], _percentiles(peer_ms)[0]
        report["peer"] = {"model": str(args.peer), "input": {k: list(v.shape) for k, v in pfeeds.items()},
                          "ours_image_p50_ms": round(o50, 2), "peer_p50_ms": round(p50, 2),
                          "ratio": round(o50 / p50, 3)}
        print(f"alternating with {args.peer.name}: ours {o50:.2f} ms, peer {p50:.2f} ms, ratio {o50 / p50:.3f}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
