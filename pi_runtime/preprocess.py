"""Image loading and the letterbox the model expects (numpy + pillow).

The training side evaluates with this same code, so what the Pi feeds the graph is what the
accuracy numbers were measured on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["Letterbox", "letterbox", "load_image", "to_rgb_array", "ImageError", "check_readable_file",
           "DEFAULT_MAX_PIXELS"]


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


def letterbox_into(image: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resizes to fit inside ``hw`` (aspect kept) and pads bottom/right with zeros to exactly
    ``hw``: the input of a static-shaped graph (LiteRT). A 4:3 frame fills a 480x640 canvas."""
    h, w = image.shape[:2]
    H, W = hw
    scale = min(H / h, W / w)
    rh, rw = min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale)))
    resized = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR)) if (rh, rw) != (h, w) else image
    out = np.zeros((H, W, 3), np.uint8)
    out[:rh, :rw] = resized
    return out, Letterbox((h, w), (rh, rw), (H, W))


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


DEFAULT_MAX_PIXELS = 40_000_000   # ~160 MB of RGB at decode: what a 4 GB Pi can take beside the model


def check_readable_file(path: Path) -> None:
    """:class:`ImageError` naming what ``path`` is when it is not a readable regular file."""
    import os
    import stat

    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(f"{path}: broken symbolic link") from None
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:  # ELOOP for a symlink loop, EACCES, ENAMETOOLONG ...
        raise ImageError(f"{path}: cannot open ({os.strerror(exc.errno) if exc.errno else exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "device"
        raise ImageError(f"{path}: is a {kind}, not a regular image file")
    if st.st_size == 0:
        raise ImageError(f"{path}: empty file")


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               draft_long_side: int | None = None) -> np.ndarray:
    """Reads an image file as RGB; :class:`ImageError` names the file for missing, empty, truncated,
    corrupt or over-large files, and for paths that are not regular files.

    The pixel budget is checked on the header's size before anything is decoded (a 140 KB PNG
    can declare 12000x12000). With ``draft_long_side``, a JPEG much larger than needed is decoded
    at a reduced scale (libjpeg's DCT scaling) to no less than that long side.
    """
    path = Path(path)
    check_readable_file(path)
    try:
        with warnings.catch_warnings():  # our own pixel budget below says it more usefully
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            if max_pixels and w * h > max_pixels:
                raise ImageError(f"{path}: {w}x{h} is {w * h / 1e6:.1f} Mpx, over the {max_pixels / 1e6:g} Mpx "
                                 f"limit (raise it with --max-pixels if this machine has the memory)")
            if draft_long_side and im.format == "JPEG" and max(w, h) > 2 * draft_long_side:
                scale = draft_long_side / max(w, h)
                im.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
            im.load()
            return to_rgb_array(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused before decoding ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError, struct.error ...
        raise ImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
