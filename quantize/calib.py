"""Calibration data: image + phrase pairs, and the onnxruntime reader that feeds them.

Activations of the image graph depend on the phrase (early fusion), so every calibration feed
is an image *with* a phrase: the phrase goes through the fp32 text graph and its tensors join
the letterboxed image, exactly as at run time.

``python -m quantize.calib --out calib_data --n 200`` rebuilds the shipped set: ShapeRef train
scenes drawn with seed 1 (training uses seed 0, evaluation the fixed val/test splits), long
side 640, JPEG quality 90, with ``manifest.jsonl`` lines ``{"image": ..., "phrase": ...}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from pi_runtime.bundle import image_feeds, phrase_tensors
from pi_runtime.preprocess import letterbox, load_image

__all__ = ["read_pairs", "CalibrationReader", "build_shapes_calibration", "main"]


def read_pairs(calib_dir: str | Path) -> list[tuple[Path, str]]:
    """``(image path, phrase)`` from ``calib_dir/manifest.jsonl``; a bad line is an error naming it."""
    calib_dir = Path(calib_dir)
    manifest = calib_dir / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: calibration manifest not found")
    pairs = []
    for n, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            pairs.append((calib_dir / entry["image"], str(entry["phrase"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{manifest}:{n}: expected {{\"image\": ..., \"phrase\": ...}} ({exc})") from exc
    if not pairs:
        raise ValueError(f"{manifest}: no calibration pairs")
    return pairs


class CalibrationReader(CalibrationDataReader):
    """Feeds ``{image, *text tensors}`` (the image graph's ``image_inputs``) for each pair. ``text_session`` is the fp32
    text graph; ``tokenize`` returns int64 ``[1, L]`` ids and mask.

    onnxruntime's histogram calibrators stack each tensor across samples, so every feed has one
    shape: the image is letterboxed and zero-padded to ``long_side x long_side`` and the phrase
    right-padded to ``max_tokens`` (the model ignores padded tokens and the padded border is what
    the letterbox adds anyway).
    """

    def __init__(self, pairs: list[tuple[Path, str]], text_session, text_outputs: list[str], tokenize,
                 long_side: int, divisor: int, max_tokens: int, image_inputs: list[str] | None = None):
        self.pairs, self.text_session, self.text_outputs = pairs, text_session, text_outputs
        self.image_inputs = image_inputs or ["image", *text_outputs]
        self.tokenize, self.long_side, self.divisor, self.max_tokens = tokenize, long_side, divisor, max_tokens
        self._it = iter(range(len(pairs)))

    def feed(self, index: int) -> dict:
        path, phrase = self.pairs[index]
        image, _ = letterbox(load_image(path), self.long_side, self.divisor)
        side = -(-self.long_side // self.divisor) * self.divisor
        canvas = np.zeros((1, side, side, 3), np.uint8)
        canvas[0, :image.shape[0], :image.shape[1]] = image
        ids, mask = self.tokenize(phrase)
        pad = self.max_tokens - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)))
        mask = np.pad(mask, ((0, 0), (0, pad)))
        text = self.text_session.run(self.text_outputs, {"input_ids": ids, "attention_mask": mask})
        return image_feeds(self.image_inputs, canvas, phrase_tensors(mask, self.text_outputs, text))

    def get_next(self) -> dict | None:
        index = next(self._it, None)
        return None if index is None else self.feed(index)

    def rewind(self) -> None:
        self._it = iter(range(len(self.pairs)))


def build_shapes_calibration(out: Path, n: int, seed: int = 1, long_side: int = 640) -> Path:
    """Writes ``n`` ShapeRef train scenes (seed ``seed``) as JPEGs plus ``manifest.jsonl``."""
    from PIL import Image

    from eris.data.shapes import get_sample

    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        s = get_sample("train", i, seed=seed, long_side=long_side)
        name = f"images/shapes-{i:04d}.jpg"
        Image.fromarray(s.image).save(out / name, quality=90)
        lines.append(json.dumps({"image": name, "phrase": s.phrase}))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return out / "manifest.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quantize.calib", description="Rebuild the ShapeRef calibration set.")
    ap.add_argument("--out", type=Path, default=Path("calib_data"), help="output directory")
    ap.add_argument("--n", type=int, default=200, help="number of image + phrase pairs")
    ap.add_argument("--seed", type=int, default=1, help="ShapeRef seed (training uses 0)")
    ap.add_argument("--long-side", type=int, default=640, help="image long side")
    args = ap.parse_args(argv)
    print(build_shapes_calibration(args.out, args.n, args.seed, args.long_side))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
