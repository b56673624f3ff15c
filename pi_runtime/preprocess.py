"""Image loading and the letterbox the model expects (numpy + pillow).

The training side evaluates with this same code, so what the Pi feeds the graph is what the
accuracy numbers were measured on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["Letterbox", "letterbox", "load_image", "to_rgb_array", "ImageError"]


class ImageError(ValueError):
    """An input image cannot be used (the message names it and says why)."""


@dataclass
class Letterbox:
    """How an image was resized and padded: enough to map a prediction back to it."""

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padded_hw: tuple[int, int]


def letterbox(image: np.ndarray, long_side: int, divisor: int = 32) -> tuple[np.ndarray, Letterbox]:
    """Resizes so the long side is ``long_side`` and pads bottom/right with zeros to a multiple of
    ``divisor``. A 4:3 image becomes 640x480, not a padded square."""
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR)) if (rh, rw) != (h, w) else image
    ph, pw = -(-rh // divisor) * divisor, -(-rw // divisor) * divisor
    if (ph, pw) == (rh, rw):
        return np.ascontiguousarray(resized), Letterbox((h, w), (rh, rw), (ph, pw))
    out = np.zeros((ph, pw, 3), np.uint8)
    out[:rh, :rw] = resized
    return out, Letterbox((h, w), (rh, rw), (ph, pw))


def to_rgb_array(image) -> np.ndarray:
    """An ``H x W x 3`` uint8 RGB array from a PIL image (any mode, EXIF orientation applied) or
    an array (``H x W``, ``H x W x 1/3/4``, uint8 or uint16)."""
    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(image, np.float64)
            image = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise ImageError(f"image array must be uint8 or uint16, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def load_image(path: str | Path) -> np.ndarray:
    """Reads an image file as RGB; :class:`ImageError` names the file for missing, empty,
    truncated or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb_array(im)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from exc
