"""The paper's Fig. 1 on a CPU: latency and peak memory against input size, ERIS vs a quadratic baseline.

``python -m eris.scaling --out docs/scaling [--engine torch|onnxruntime] [--sizes 320 480 ...] [--threads 2]``

Two models with the same STDC1 backbone and widths: ERIS (``stdc1-minilm``: text->image
cross-attention, [heads, L, N], linear in pixels) and the same model with each early-fusion
block replaced by joint self-attention over ``[pixels; tokens]`` ([heads, N, N + L], the
MDETR/EEVG-style design the paper argues against). Each (model, size) runs in its own
subprocess under an address-space limit (``--mem-limit-gb``), so a baseline that runs out of
memory fails alone, is recorded as such, and larger sizes of it are skipped. Only the image
pass is timed (the phrase is encoded once, as on the Pi); weights are random (speed and memory
do not depend on them). ``--engine torch`` times the PyTorch modules; ``--engine onnxruntime``
exports each model's image graph once (dynamic size, the deformable conv as the bundle has it)
and times it in onnxruntime, the engine the Pi runs, with the runtime's session options. Writes
``scaling.json``, ``scaling.md`` (a table) and ``scaling.png`` (needs matplotlib, in the
``[dev]`` extra).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from pi_runtime.precision import cpu_model

__all__ = ["measure_one", "measure_one_onnxruntime", "measure_ratio", "export_graphs", "run", "main"]

MODELS = {"ERIS (cross-attention, linear)": "cross", "joint self-attention (quadratic)": "joint"}


def _rss_mb() -> float:
    """This process's peak RSS in MB. Linux's ``VmHWM`` first: ``ru_maxrss`` survives fork + exec,
    so a worker would report its parent's peak (the parent holds torch and the exported models)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _random_model(fusion: str, deform_sampling: str):
    """The stdc1-minilm model with ``fusion``, random weights (seed 0), and an 8-token phrase."""
    import torch

    from eris.builder import build_model
    from eris.config import get_config

    torch.manual_seed(0)
    config = get_config("stdc1-minilm").replace(fusion=fusion, text_pretrained=None, deform_sampling=deform_sampling)
    model = build_model(config, pretrained=False).eval()
    ids = torch.randint(1000, 2000, (1, 8))
    ids[0, 0], ids[0, -1] = 101, 102
    return model, ids


def _torch_pass(fusion: str, threads: int, deform_sampling: str):
    """A function running one PyTorch image pass of the random model at a given square size."""
    import torch

    torch.set_num_threads(threads)
    model, ids = _random_model(fusion, deform_sampling)
    with torch.inference_mode():
        text = model.encode_text(ids, torch.ones_like(ids))
    images = {}

    def image_pass(size: int) -> None:
        if size not in images:
            images[size] = torch.rand(1, 3, size, size) * 255
        with torch.inference_mode():
            model.segment(images[size], text)
    return image_pass


def _timed(image_pass, size: int, runs: int) -> dict:
    base = _rss_mb()
    image_pass(size)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        image_pass(size)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"ms": round(times[len(times) // 2], 1), "peak_rss_mb": round(_rss_mb(), 1),
            "activation_mb": round(_rss_mb() - base, 1)}


def measure_one(fusion: str, size: int, runs: int, threads: int, deform_sampling: str = "grid_sample") -> dict:
    """Median image-pass ms and peak RSS of one PyTorch model at ``size`` x ``size`` (this process)."""
    return _timed(_torch_pass(fusion, threads, deform_sampling), size, runs)


def measure_ratio(image_pass, small: int = 640, large: int = 1280, pairs: int = 7) -> dict:
    """``t(large^2) / t(small^2)``, the two sizes timed alternately in this process (after a
    warm-up of each), so a machine that speeds up or slows down meanwhile moves both alike; the
    median of the per-pair ratios."""
    image_pass(small), image_pass(large)
    ratios, t_small, t_large = [], [], []
    for _ in range(pairs):
        t0 = time.perf_counter()
        image_pass(small)
        t1 = time.perf_counter()
        image_pass(large)
        t2 = time.perf_counter()
        t_small.append((t1 - t0) * 1e3), t_large.append((t2 - t1) * 1e3), ratios.append((t2 - t1) / (t1 - t0))
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {"sizes": [small, large], "pairs": pairs, "ratio": round(med(ratios), 3),
            "ms_small": round(med(t_small), 1), "ms_large": round(med(t_large), 1)}


def export_graphs(out: Path, deform_sampling: str = "conv") -> dict[str, Path]:
    """Export each model's image graph (``convert``'s exporter, dynamic H and W) and its phrase
    features to ``out``; ``{fusion: graph path}``. Runs in this process, outside the measurements."""
    import numpy as np
    import torch

    from convert.graphs import TextGraph
    from convert.onnx_export import export_image_graph

    paths = {}
    for fusion in MODELS.values():
        model, ids = _random_model(fusion, deform_sampling)
        mask = torch.ones_like(ids)
        with torch.no_grad():
            tokens, token_mask = TextGraph(model)(ids, mask)
        path = out / f"image_{fusion}.onnx"
        export_image_graph(model, lambda phrases: (ids.expand(len(phrases), -1), mask.expand(len(phrases), -1)), path)
        np.savez(path.with_suffix(".npz"), text_tokens=tokens.numpy(), token_mask=token_mask.numpy())
        paths[fusion] = path
    return paths


def _onnxruntime_pass(graph: Path, threads: int):
    """A function running one onnxruntime pass of an exported image graph at a given square size."""
    import numpy as np

    from pi_runtime.segmenter import session_options

    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), session_options(threads, image_graph=True),
                                   providers=["CPUExecutionProvider"])
    if graph.with_suffix(".npz").is_file():  # phrase features saved by export_graphs
        text = dict(np.load(graph.with_suffix(".npz")))
    else:  # any image graph (a bundle's): an 8-token random phrase of its width
        width = next(i.shape[-1] for i in session.get_inputs() if i.name == "text_tokens")
        text = {"text_tokens": np.random.default_rng(0).standard_normal((1, 8, width)).astype(np.float32),
                "token_mask": np.ones((1, 8), np.float32)}
        text = {k: v for k, v in text.items() if k in {i.name for i in session.get_inputs()}}
    images = {}

    def image_pass(size: int) -> None:
        if size not in images:
            images[size] = np.random.default_rng(size).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        session.run(None, {"image": images[size], **text})
    return image_pass


def measure_one_onnxruntime(graph: Path, size: int, runs: int, threads: int) -> dict:
    """Median ms and peak RSS of one exported image graph in onnxruntime (this process; no torch)."""
    return _timed(_onnxruntime_pass(graph, threads), size, runs)


def _subprocess(worker: list[str], mem_limit_gb: float, timeout: float) -> dict:
    limit = int(mem_limit_gb * 2 ** 30)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [sys.executable, "-m", "eris.scaling", *worker]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=cap)
    except subprocess.TimeoutExpired:
        return {"error": f"took over {timeout:.0f} s"}
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    oom = "memory" in tail.lower() or "alloc" in tail.lower() or proc.returncode in (-9, 137)
    return {"error": f"out of memory under {mem_limit_gb:g} GB" if oom else tail[-200:]}


def run(sizes: list[int], runs: int, threads: int, mem_limit_gb: float, timeout: float, log=None,
        engine: str = "torch", deform_sampling: str = "grid_sample", graphs: dict[str, Path] | None = None,
        ratio_pairs: int = 0) -> dict:
    """Every (size, model) point in its own capped subprocess; ``graphs`` (from
    :func:`export_graphs`) is needed for ``engine="onnxruntime"``; progress goes to ``log``
    (default: the current ``sys.stderr``). ``ratio_pairs > 0`` adds ERIS's t(1280^2)/t(640^2)
    timed alternately in one process (:func:`measure_ratio`): points timed minutes apart in
    separate processes drift with the machine (20 % between two sweeps on a shared VM here)."""
    log = sys.stderr if log is None else log
    rows: dict[str, dict[int, dict]] = {name: {} for name in MODELS}
    failed: set[str] = set()
    for size in sizes:  # sizes outer, models inner: both see the same machine state at each size
        for name, fusion in MODELS.items():
            if name in failed:
                rows[name][size] = {"error": "skipped (a smaller size already failed)"}
                continue
            if engine == "onnxruntime":
                worker = ["--worker-ort", str(graphs[fusion]), str(size), str(runs), str(threads)]
            else:
                worker = ["--worker", fusion, str(size), str(runs), str(threads), deform_sampling]
            result = _subprocess(worker, mem_limit_gb, timeout)
            rows[name][size] = result
            if "error" in result:
                failed.add(name)
            print(f"{size:>5}  {name:<34} {json.dumps(result)}", file=log, flush=True)
    report = {"engine": engine, "deform_sampling": deform_sampling, "sizes": sizes, "threads": threads, "runs": runs,
              "mem_limit_gb": mem_limit_gb, "cpu": cpu_model(), "results": rows}
    if ratio_pairs > 0:
        model = str(graphs["cross"]) if engine == "onnxruntime" else "cross"
        report["eris_ratio"] = _subprocess(["--worker-ratio", engine, model, str(ratio_pairs), str(threads),
                                            deform_sampling], mem_limit_gb, timeout)
        print(f"ERIS alternating 640^2 / 1280^2: {json.dumps(report['eris_ratio'])}", file=log, flush=True)
    return report


def _table(report: dict) -> str:
    names = list(report["results"])
    lines = ["| input | " + " | ".join(f"{n}: ms / peak MB" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for size in report["sizes"]:
        cells = []
        for n in names:
            r = report["results"][n][size]
            cells.append(r["error"] if "error" in r else f"{r['ms']:.0f} / {r['peak_rss_mb']:.0f}")
        lines.append(f"| {size}x{size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in report["results"].items():
        ok = [(s, r) for s, r in sorted(rows.items()) if "error" not in r]
        if not ok:
            continue
        px = [s * s / 1e6 for s, _ in ok]
        axes[0].plot(px, [r["ms"] for _, r in ok], "o-", label=name)
        axes[1].plot(px, [r["peak_rss_mb"] for _, r in ok], "o-", label=name)
        failed = [s for s, r in sorted(rows.items()) if "error" in r and "skipped" not in r["error"]]
        for s in failed:
            axes[1].axvline(s * s / 1e6, ls=":", color="grey")
            axes[1].annotate(f"{name.split()[0]} fails at {s}", (s * s / 1e6, axes[1].get_ylim()[1] * 0.9),
                             rotation=90, fontsize=7, ha="right")
    axes[0].set(xlabel="input megapixels", ylabel="image pass, ms (median)", title="latency")
    axes[1].set(xlabel="input megapixels", ylabel="peak RSS, MB", title="memory")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"STDC1 backbone, same widths; {report.get('engine', 'torch')} on CPU, {report['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        fusion, size, runs, threads, sampling = argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5]
        print(json.dumps(measure_one(fusion, size, runs, threads, sampling)))
        return 0
    if argv[:1] == ["--worker-ort"]:
        print(json.dumps(measure_one_onnxruntime(Path(argv[1]), int(argv[2]), int(argv[3]), int(argv[4]))))
        return 0
    if argv[:1] == ["--worker-ratio"]:  # engine, model (fusion or graph), pairs, threads, sampling
        engine, model, pairs, threads, sampling = argv[1], argv[2], int(argv[3]), int(argv[4]), argv[5]
        image_pass = (_onnxruntime_pass(Path(model), threads) if engine == "onnxruntime"
                      else _torch_pass(model, threads, sampling))
        print(json.dumps(measure_ratio(image_pass, pairs=pairs)))
        return 0
    ap = argparse.ArgumentParser(prog="python -m eris.scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="directory for scaling.json / .md / .png (required unless --ratio-of)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 480, 640, 960, 1280, 1600, 1920],
                    help="square input sides (multiples of 32)")
    ap.add_argument("--runs", type=int, default=3, help="timed image passes per point (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch or onnxruntime)")
    ap.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch",
                    help="time the PyTorch modules, or their exported image graphs in onnxruntime (what the Pi runs)")
    ap.add_argument("--deform-sampling", choices=["conv", "grid_sample", "gather"],
                    help="deformable-conv formulation (default: grid_sample for torch, as training runs it; "
                         "conv for onnxruntime, as bundles ship it)")
    ap.add_argument("--ratio-pairs", type=int, default=7,
                    help="ERIS's t(1280^2)/t(640^2) from this many alternating pairs in one process (0: skip)")
    ap.add_argument("--mem-limit-gb", type=float, default=12.0, help="address-space limit of each measurement")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a point counts as failed")
    ap.add_argument("--ratio-of", type=Path, metavar="GRAPH.onnx",
                    help="instead: only the alternating t(1280^2)/t(640^2) of this image graph (e.g. a bundle's)")
    args = ap.parse_args(argv)
    if args.ratio_of is not None:
        print(json.dumps(measure_ratio(_onnxruntime_pass(args.ratio_of, args.threads), pairs=args.ratio_pairs)))
        return 0
    if args.out is None:
        ap.error("--out is required")
    if args.deform_sampling is None:
        args.deform_sampling = "conv" if args.engine == "onnxruntime" else "grid_sample"
    bad = [s for s in args.sizes if s % 32]
    if bad:
        ap.error(f"--sizes {bad}: must be multiples of 32")
    args.out.mkdir(parents=True, exist_ok=True)
    graphs = None
    if args.engine == "onnxruntime":
        import tempfile

        tmp = tempfile.TemporaryDirectory(prefix="eris-scaling-")
        graphs = export_graphs(Path(tmp.name), args.deform_sampling)
    report = run(args.sizes, args.runs, args.threads, args.mem_limit_gb, args.timeout, engine=args.engine,
                 deform_sampling=args.deform_sampling, graphs=graphs, ratio_pairs=args.ratio_pairs)
    (args.out / "scaling.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "scaling.md").write_text(_table(report))
    try:
        _plot(report, args.out / "scaling.png")
    except ImportError:
        print("matplotlib not installed: no scaling.png (pip install -e '.[dev]')", file=sys.stderr)
    print(_table(report))
    eris_rows = report["results"][next(iter(MODELS))]
    if 640 in eris_rows and 1280 in eris_rows and "error" not in eris_rows[640] and "error" not in eris_rows[1280]:
        print(f"ERIS t(1280^2) / t(640^2) = {eris_rows[1280]['ms'] / eris_rows[640]['ms']:.2f} (sweep points)")
    if "ratio" in report.get("eris_ratio", {}):
        print(f"ERIS t(1280^2) / t(640^2) = {report['eris_ratio']['ratio']:.2f} "
              f"(alternating, median of {report['eris_ratio']['pairs']} pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
