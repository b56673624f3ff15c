"""``--precision auto``: pick the faster image graph by timing both on this machine, once.

CPU flags do not predict it: on an AVX2-only x86 (no VNNI) the INT8 graph still ran in 177 ms
against fp32's 253 ms, and nobody has measured a Pi 4 (no int8 dot product). So the first time a
bundle runs on a machine, both graphs run a few warm frames alternately (the bundle's input size,
4:3) and the faster wins; the choice is cached under the user's cache directory
(``$XDG_CACHE_HOME/eris-pi/precision.json``, else ``~/.cache/...``), keyed by the manifest's
hash, the CPU model and the thread count. Only when the timing cannot run do the CPU's
int8 dot-product flags decide. ``doctor`` and ``bench`` show the choice and where it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from pi_runtime.files import atomic_write_bytes

__all__ = ["cache_path", "cpu_model", "cache_key", "cached_choice", "measure", "alternate", "time_alternately", "remember",
           "cpu_has_int8_dot"]

TIMED_RUNS = 3


def cpu_has_int8_dot() -> bool:
    """ARM ``asimddp`` or x86 VNNI: the instructions that make INT8 matmuls pay off."""
    try:
        flags = Path("/proc/cpuinfo").read_text().lower()
    except OSError:
        return False
    return any(f in flags.split() for f in ("asimddp", "avx512_vnni", "avx_vnni", "avxvnni"))


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "eris-pi" / "precision.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "CPU part"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(bundle: Path, threads: int) -> str:
    digest = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()[:16]
    return f"{digest}|{cpu_model()}|{threads}"


def _read() -> dict:
    try:
        data = json.loads(cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_choice(key: str) -> dict | None:
    entry = _read().get(key)
    return entry if isinstance(entry, dict) and entry.get("precision") in ("int8", "fp16", "fp32") else None


def remember(key: str, entry: dict) -> bool:
    """Stores the choice; False (and nothing raised) where the cache directory is not writable."""
    data = _read()
    data[key] = entry
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_path(), (json.dumps(data, indent=1) + "\n").encode())
        return True
    except OSError:
        return False


def measure(sessions: dict, text_feeds: dict, long_side: int, divisor: int, hw: tuple | None = None) -> dict:
    """Median ms of each image graph on a 4:3 frame at ``long_side`` (or of exactly ``hw``, for
    static graphs), run alternately."""
    h, w = hw or (-(-round(long_side * 3 / 4) // divisor) * divisor, long_side)
    feeds = {"image": np.zeros((1, h, w, 3), np.uint8), **text_feeds}
    return time_alternately({p: (lambda s=s: s.run(None, feeds)) for p, s in sessions.items()})


def alternate(runs: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Every timing (ms) of each zero-argument callable, after ``warmup`` untimed calls each
    (first runs allocate and pick kernels), calling them in turn so that a busy machine, drifting
    clocks and thermal state slow all alike."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def time_alternately(runs: dict) -> dict:
    """Median ms of each callable over :data:`TIMED_RUNS` alternating calls (see :func:`alternate`)."""
    return {k: round(float(np.median(t)), 2) for k, t in alternate(runs, TIMED_RUNS).items()}
