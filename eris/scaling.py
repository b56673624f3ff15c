"""The paper's Fig. 1 on a CPU: latency and peak memory against input size, ERIS vs a quadratic baseline.

``python -m eris.scaling --out docs/scaling [--sizes 320 480 640 960 1280 1600 1920] [--threads 2]``

Two models with the same STDC1 backbone and widths: ERIS (``stdc1-minilm``: text->image
cross-attention, [heads, L, N], linear in pixels) and the same model with each early-fusion
block replaced by joint self-attention over ``[pixels; tokens]`` ([heads, N, N + L], the
MDETR/EEVG-style design the paper argues against). Each (model, size) runs in its own
subprocess under an address-space limit (``--mem-limit-gb``), so a baseline that runs out of
memory fails alone, is recorded as such, and larger sizes of it are skipped. Only the image
pass is timed (the phrase is encoded once, as on the Pi); weights are random (speed and memory
do not depend on them). Writes ``scaling.json``, ``scaling.md`` (a table) and ``scaling.png``
(needs matplotlib, in the ``[dev]`` extra).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["measure_one", "run", "main"]

MODELS = {"ERIS (cross-attention, linear)": "cross", "joint self-attention (quadratic)": "joint"}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(fusion: str, size: int, runs: int, threads: int) -> dict:
    """Median image-pass ms and peak RSS of one model at ``size`` x ``size`` (this process)."""
    import torch

    from eris.builder import build_model
    from eris.config import get_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = get_config("stdc1-minilm").replace(fusion=fusion, text_pretrained=None)
    model = build_model(config, pretrained=False).eval()
    ids = torch.randint(1000, 2000, (1, 8))
    ids[0, 0], ids[0, -1] = 101, 102
    with torch.inference_mode():
        text = model.encode_text(ids, torch.ones_like(ids))
        image = torch.rand(1, 3, size, size) * 255
        base = _rss_mb()
        model.segment(image, text)  # warm-up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model.segment(image, text)
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"ms": round(times[len(times) // 2], 1), "peak_rss_mb": round(_rss_mb(), 1),
            "activation_mb": round(_rss_mb() - base, 1)}


def _subprocess(fusion: str, size: int, runs: int, threads: int, mem_limit_gb: float, timeout: float) -> dict:
    limit = int(mem_limit_gb * 2 ** 30)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [sys.executable, "-m", "eris.scaling", "--worker", fusion, str(size), str(runs), str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=cap)
    except subprocess.TimeoutExpired:
        return {"error": f"took over {timeout:.0f} s"}
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    oom = "memory" in tail.lower() or "alloc" in tail.lower() or proc.returncode in (-9, 137)
    return {"error": f"out of memory under {mem_limit_gb:g} GB" if oom else tail[-200:]}


def run(sizes: list[int], runs: int, threads: int, mem_limit_gb: float, timeout: float, log=sys.stderr) -> dict:
    rows: dict[str, dict[int, dict]] = {name: {} for name in MODELS}
    failed: set[str] = set()
    for size in sizes:  # sizes outer, models inner: both see the same machine state at each size
        for name, fusion in MODELS.items():
            if name in failed:
                rows[name][size] = {"error": "skipped (a smaller size already failed)"}
                continue
            result = _subprocess(fusion, size, runs, threads, mem_limit_gb, timeout)
            rows[name][size] = result
            if "error" in result:
                failed.add(name)
            print(f"{size:>5}  {name:<34} {json.dumps(result)}", file=log, flush=True)
    return {"sizes": sizes, "threads": threads, "runs": runs, "mem_limit_gb": mem_limit_gb, "results": rows}


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
    fig.suptitle(f"STDC1 backbone, same widths; CPU, {report['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        fusion, size, runs, threads = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        print(json.dumps(measure_one(fusion, size, runs, threads)))
        return 0
    ap = argparse.ArgumentParser(prog="python -m eris.scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for scaling.json / .md / .png")
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 480, 640, 960, 1280, 1600, 1920],
                    help="square input sides (multiples of 32)")
    ap.add_argument("--runs", type=int, default=3, help="timed image passes per point (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--mem-limit-gb", type=float, default=12.0, help="address-space limit of each measurement")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a point counts as failed")
    args = ap.parse_args(argv)
    bad = [s for s in args.sizes if s % 32]
    if bad:
        ap.error(f"--sizes {bad}: must be multiples of 32")
    report = run(args.sizes, args.runs, args.threads, args.mem_limit_gb, args.timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "scaling.md").write_text(_table(report))
    try:
        _plot(report, args.out / "scaling.png")
    except ImportError:
        print("matplotlib not installed: no scaling.png (pip install -e '.[dev]')", file=sys.stderr)
    print(_table(report))
    eris_rows = report["results"][next(iter(MODELS))]
    if 640 in eris_rows and 1280 in eris_rows and "error" not in eris_rows[640] and "error" not in eris_rows[1280]:
        print(f"ERIS t(1280^2) / t(640^2) = {eris_rows[1280]['ms'] / eris_rows[640]['ms']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
