"""Image/mask/phrase transforms for training and evaluation (numpy + PIL, no torch).

``letterbox`` is the device runtime's own, so evaluation preprocesses exactly as the Pi does.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from eris.data.expressions import flip_phrase
from pi_runtime.preprocess import Letterbox, letterbox  # one letterbox for training and the Pi

__all__ = ["letterbox", "random_scale_pad_flip", "Letterbox"]


def random_scale_pad_flip(image: np.ndarray, mask: np.ndarray, phrase: str, size: int, rng: np.random.Generator,
                          scale_range: tuple[float, float] = (0.75, 1.0), flip_p: float = 0.5,
                          crop: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Training augmentation onto a ``size x size`` canvas.

    The image is scaled so its long side is ``size * s`` (``s`` drawn from ``scale_range``), then
    placed at a random offset on a zero canvas, or, where it is larger than the canvas and
    ``crop`` is set, cropped to a window that keeps the whole target (a crop that cut scene
    objects would change what "leftmost" means, so ShapeRef keeps ``s <= 1``). A horizontal flip
    rewrites left/right in the phrase.
    """
    h, w = image.shape[:2]
    s = rng.uniform(*scale_range)
    scale = size * s / max(h, w)
    rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    img = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
    msk = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((rw, rh), Image.NEAREST)) > 127
    if rh > size or rw > size:
        if not crop:
            raise ValueError(f"scaled image {rh}x{rw} exceeds the {size} canvas and crop is off")
        ys, xs = np.nonzero(msk)
        y0 = _window(rng, rh, size, ys)
        x0 = _window(rng, rw, size, xs)
        img, msk = img[y0:y0 + size, x0:x0 + size], msk[y0:y0 + size, x0:x0 + size]
        rh, rw = img.shape[:2]
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas_mask = np.zeros((size, size), bool)
    oy, ox = int(rng.integers(0, size - rh + 1)), int(rng.integers(0, size - rw + 1))
    canvas[oy:oy + rh, ox:ox + rw] = img
    canvas_mask[oy:oy + rh, ox:ox + rw] = msk
    if rng.random() < flip_p:
        canvas, canvas_mask, phrase = canvas[:, ::-1].copy(), canvas_mask[:, ::-1].copy(), flip_phrase(phrase)
    return canvas, canvas_mask, phrase


def _window(rng: np.random.Generator, length: int, size: int, coords: np.ndarray) -> int:
    """Start of a ``size`` window in ``[0, length)`` that contains ``coords`` where possible."""
    if length <= size:
        return 0
    lo, hi = 0, length - size
    if coords.size:
        lo = max(lo, min(int(coords.max()) - size + 1, hi))
        hi = min(hi, int(coords.min()))
        if lo > hi:
            lo, hi = hi, lo
    return int(rng.integers(lo, hi + 1))
