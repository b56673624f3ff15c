"""CPU benchmark of the two deformable-conv formulations at the sizes ERIS uses.

``python -m eris.ops.bench [--size 640] [--channels 128] [--repeats 20] [--onnx]``

Times :func:`deform_conv2d_gather` (gathers) and :func:`deform_conv2d` on the FPN levels
of a ``size x size`` input (strides 8, 16, 32) in PyTorch and, with ``--onnx``, exported and run
in onnxruntime (what the Pi runs). Prints a table and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from eris.ops.deform_conv import deform_conv2d, deform_conv2d_gather

IMPLS = {"gather": deform_conv2d_gather, "grid_sample": deform_conv2d}


def time_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


class _Layer(torch.nn.Module):
    def __init__(self, fn, weight):
        super().__init__()
        self.fn = fn
        self.weight = torch.nn.Parameter(weight)

    def forward(self, x, offset, mask):
        return self.fn(x, offset, self.weight, None, 1, 1, 1, mask)


def onnx_runner(fn, weight, example, threads: int | None):
    """Exports ``fn`` as a graph and returns a callable running it in onnxruntime."""
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp()) / "dcn.onnx"
    torch.onnx.export(_Layer(fn, weight).eval(), example, str(path), dynamo=True, opset_version=18,
                      input_names=["x", "offset", "mask"], external_data=False, verbose=False)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), example)}
    return lambda: session.run(None, feeds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eris.ops.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=640, help="input side; levels are size/8, /16, /32")
    ap.add_argument("--channels", type=int, default=128, help="in and out channels (C' of the FPN)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per case")
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: theirs)")
    ap.add_argument("--onnx", action="store_true", help="also time each formulation exported to onnxruntime")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    for stride in (8, 16, 32):
        side = args.size // stride
        x = torch.randn(1, args.channels, side, side, generator=g)
        offset = torch.randn(1, 18, side, side, generator=g) * 2
        mask = torch.rand(1, 9, side, side, generator=g)
        weight = torch.randn(args.channels, args.channels, 3, 3, generator=g)
        row = {"level": f"1/{stride}", "hw": side}
        with torch.no_grad():
            for name, fn in IMPLS.items():
                row[f"{name}_ms"] = time_ms(lambda: fn(x, offset, weight, None, 1, 1, 1, mask), args.repeats)
                if args.onnx:
                    row[f"{name}_ort_ms"] = time_ms(onnx_runner(fn, weight, (x, offset, mask), args.threads),
                                                    args.repeats)
        rows.append(row)
    columns = [f"{name}{suffix}_ms" for suffix in (("", "_ort") if args.onnx else ("",)) for name in IMPLS]
    print(f"threads={torch.get_num_threads()} channels={args.channels} (median ms)")
    print(f"{'level':<7}{'HxW':>9}" + "".join(f"{c[:-3]:>18}" for c in columns))
    for r in rows:
        print(f"{r['level']:<7}{r['hw']:>4}x{r['hw']:<4}" + "".join(f"{r[c]:>18.2f}" for c in columns))
    totals = {f"total_{c}": sum(r[c] for r in rows) for c in columns}
    print(json.dumps({"threads": torch.get_num_threads(), "channels": args.channels, "levels": rows, **totals}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
