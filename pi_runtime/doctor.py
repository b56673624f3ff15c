"""``python -m pi_runtime doctor``: is this machine ready to run eris-pi?

One line per check, ``OK``/``WARN``/``FAIL``, with what to do when it is not OK. Exit code 1 if any
check fails (warnings do not fail: a camera is optional for batch mode, INT8 instructions only
make INT8 faster).
"""

from __future__ import annotations

import argparse
import importlib
import platform
import shutil
import struct
import sys
from pathlib import Path

from pi_runtime.bundle import BundleError, load_manifest, verify_bundle
from pi_runtime.litert import BackendUnavailable, load_interpreter
from pi_runtime.precision import cpu_has_int8_dot
from pi_runtime.segmenter import Segmenter, default_bundle_dir, physical_cores

__all__ = ["main", "run_checks"]

REQUIRED = ("numpy", "PIL", "tokenizers")
OPTIONAL = {"picamera2": "live camera (sudo apt install python3-picamera2; venv with --system-site-packages)",
            "cv2": "videos and USB webcams for --source (pip install opencv-python-headless)"}


def _version(module) -> str:
    return getattr(module, "__version__", "") or ""


def run_checks(bundle: Path | None = None) -> list[tuple[str, str, str]]:
    """``(status, check, detail)`` rows."""
    rows = []
    bits = struct.calcsize("P") * 8
    machine = platform.machine()
    rows.append(("OK" if bits == 64 else "FAIL", "64-bit OS and Python",
                 f"{platform.system()} {machine}, {bits}-bit Python" +
                 ("" if bits == 64 else " - install 64-bit Raspberry Pi OS (onnxruntime has no 32-bit ARM wheels)")))
    py_ok = sys.version_info >= (3, 10)
    rows.append(("OK" if py_ok else "FAIL", "Python", platform.python_version() + ("" if py_ok else " - need 3.10+")))
    for name in REQUIRED:
        try:
            module = importlib.import_module(name)
            rows.append(("OK", f"package {name}", _version(module)))
        except ImportError as exc:
            rows.append(("FAIL", f"package {name}", f"{exc} - pip install .  (in the eris-pi checkout)"))
    rows.extend(_backend_rows(bundle))
    for name, why in OPTIONAL.items():
        try:
            module = importlib.import_module(name)
            rows.append(("OK", f"optional {name}", _version(module)))
        except ImportError:
            rows.append(("WARN", f"optional {name}", f"not installed; needed for {why}"))
    dot = cpu_has_int8_dot()
    rows.append(("INFO", "CPU int8 dot-product (asimddp / VNNI)",
                 f"{physical_cores()} physical cores; " + ("present" if dot else "absent (e.g. Pi 4's Cortex-A72)") +
                 "; --precision auto times both graphs instead of trusting this"))
    rows.append(_camera_check())
    bundle_row = _bundle_check(bundle)
    rows.append(bundle_row)
    if bundle_row[0] == "OK":
        rows.append(_precision_check(bundle))
    return rows


def _backend_rows(bundle: Path | None) -> list[tuple[str, str, str]]:
    """One row per backend: importable or not, and which of the bundle's graphs it can run. FAIL
    only when no backend can run the bundle."""
    try:
        graphs = load_manifest(Path(bundle) if bundle else default_bundle_dir())["graphs"]
    except BundleError:
        graphs = {}
    onnx = sorted(graphs.get("image", {}))
    lite = sorted(graphs.get("litert", {}).get("image", {}))
    rows, runnable = [], False
    try:
        version = importlib.import_module("onnxruntime").__version__
        runnable |= bool(onnx)
        rows.append(("OK", "backend onnxruntime", f"{version}; runs the bundle's ONNX graphs: "
                     + (", ".join(onnx) if onnx else "none (the bundle has no .onnx graphs)")))
    except ImportError:
        rows.append(("WARN", "backend onnxruntime", "not installed (pip install onnxruntime); "
                     f"needed for the bundle's ONNX graphs {', '.join(onnx) or '(none)'}"))
    try:
        package = load_interpreter()[1]
        runnable |= bool(lite)
        rows.append(("OK", "backend litert", f"{package}; runs the bundle's .tflite graphs: "
                     + (", ".join(lite) if lite else "none (add them with python -m convert.tflite --bundle)")))
    except BackendUnavailable as exc:
        rows.append(("WARN", "backend litert", f"{exc}; needed for the bundle's .tflite graphs {', '.join(lite) or '(none)'}"))
    if graphs and not runnable:
        rows.append(("FAIL", "backends", "no installed backend can run this bundle's graphs"))
    return rows


def _precision_check(bundle: Path | None) -> tuple[str, str, str]:
    try:
        seg = Segmenter.from_bundle(bundle, "auto")
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return ("FAIL", "precision auto", str(exc))
    how = seg.precision_source if seg.backend_source.startswith("the only") else seg.backend_source
    return ("INFO", "precision auto", f"{seg.backend} {seg.precision} with {seg.threads} threads: {how}")


def _camera_check() -> tuple[str, str, str]:
    try:
        from picamera2 import Picamera2
    except ImportError:
        return ("WARN", "camera", "picamera2 not importable; batch mode and --source still work")
    try:
        cameras = Picamera2.global_camera_info()
    except Exception as exc:  # noqa: BLE001 - libcamera errors vary
        return ("FAIL", "camera", f"libcamera error ({exc}); check the ribbon cable, then 'rpicam-hello --list-cameras'")
    if not cameras:
        return ("WARN", "camera", "picamera2 sees no camera; check the ribbon cable and 'rpicam-hello --list-cameras'")
    return ("OK", "camera", ", ".join(str(c.get("Model", "?")) for c in cameras))


def _bundle_check(bundle: Path | None) -> tuple[str, str, str]:
    path = Path(bundle) if bundle else default_bundle_dir()
    try:
        shapes = verify_bundle(path)
    except BundleError as exc:
        return ("FAIL", "bundle", f"{exc} - reinstall (pip install .) or pass --bundle DIR")
    except Exception as exc:  # noqa: BLE001 - onnxruntime may fail in ways verify cannot name
        return ("FAIL", "bundle", f"{path}: {exc}")
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 1e6
    return ("OK", "bundle", f"{path} ({size:.1f} MB; checksums OK; ran {', '.join(sorted(shapes))})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pi_runtime doctor", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle directory to check (default: the shipped one)")
    args = ap.parse_args(argv)
    rows = run_checks(args.bundle)
    for status, check, detail in rows:
        print(f"{status:<5} {check:<40} {detail}")
    free = shutil.disk_usage(Path.home()).free / 1e9
    print(f"{'INFO':<5} {'free disk (home)':<40} {free:.1f} GB")
    return 1 if any(status == "FAIL" for status, _, _ in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
