"""Collect a calibration set from your own scenes: ``python -m quantize.collect``.

    python -m quantize.collect --camera --n 200 --out my_calib --phrases phrases.txt
    python -m quantize.collect --from-folder ~/photos --n 200 --out my_calib --phrase "the red mug"

Each image is paired with a phrase (cycling through ``--phrases``, one per line, or the single
``--phrase``) and written as ``images/NNNN.jpg`` plus a ``manifest.jsonl`` line; then
``python -m quantize --bundle B --calib my_calib`` calibrates on it. Images are resized to the
model's long side (640). A rerun keeps what is already there and adds the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import cycle
from pathlib import Path

import numpy as np
from PIL import Image

from pi_runtime.files import atomic_write
from pi_runtime.batch import IMAGE_SUFFIXES
from pi_runtime.preprocess import ImageError, load_image

__all__ = ["main", "camera_frames", "folder_frames"]



def camera_frames(n: int, every: float, size: tuple[int, int] = (640, 480)):
    """``n`` RGB frames from picamera2, ``every`` seconds apart."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise SystemExit("--camera needs picamera2 (on Raspberry Pi OS: sudo apt install python3-picamera2, "
                         "and a venv made with --system-site-packages); or use --from-folder") from exc
    cam = Picamera2()
    cam.configure(cam.create_still_configuration(main={"size": size, "format": "RGB888"}))
    cam.start()
    try:
        for _ in range(n):
            yield np.ascontiguousarray(cam.capture_array()[..., ::-1])  # RGB888 is BGR in memory
            time.sleep(every)
    finally:
        cam.stop()


def folder_frames(folder: Path, n: int):
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"{folder}: no images found")
    for path in paths[:n]:
        try:
            yield load_image(path)
        except ImageError as exc:
            print(f"skipped: {exc}", file=sys.stderr)


def _write(path: Path, image: np.ndarray, long_side: int) -> None:
    im = Image.fromarray(image)
    im.thumbnail((long_side, long_side), Image.BILINEAR)
    atomic_write(path, lambda tmp: im.save(tmp, format="JPEG", quality=90))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quantize.collect", description=__doc__.split("\n\n")[0].split(": ")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", action="store_true", help="capture from the Pi camera (picamera2)")
    src.add_argument("--from-folder", type=Path, help="take images from this folder (recursively)")
    words = ap.add_mutually_exclusive_group(required=True)
    words.add_argument("--phrases", type=Path, help="text file, one phrase per line, cycled over the images")
    words.add_argument("--phrase", help="one phrase for every image")
    ap.add_argument("--n", type=int, default=200, help="number of image + phrase pairs")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--every", type=float, default=1.0, help="camera: seconds between captures")
    ap.add_argument("--long-side", type=int, default=640, help="resize images to this long side")
    args = ap.parse_args(argv)
    phrases = [args.phrase] if args.phrase else [l.strip() for l in args.phrases.read_text().splitlines() if l.strip()]
    if not phrases:
        ap.error(f"{args.phrases}: no phrases")
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    frames = camera_frames(args.n, args.every) if args.camera else folder_frames(args.from_folder, args.n)
    lines = []
    for i, (image, phrase) in enumerate(zip(frames, cycle(phrases))):
        name = f"images/{i:04d}.jpg"
        if not (args.out / name).exists():
            _write(args.out / name, image, args.long_side)
        lines.append(json.dumps({"image": name, "phrase": phrase}))
    (args.out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    print(json.dumps({"out": str(args.out), "pairs": len(lines)}))
    return 0 if lines else 1


if __name__ == "__main__":
    raise SystemExit(main())
