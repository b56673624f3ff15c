"""Let the frame's colour edges shape the mask: a guided filter with the frame as the guide.

The model's logits come on a stride-4 grid and are upsampled bilinearly, so a mask's outline is
a smooth curve about a cell off the object's real edge wherever it likes, and two touching
objects are often one blob. RoboRef's objects are small (half of them cover under 0.5 % of a
640x480 frame, about 40 x 40 pixels): a cell or two of error round such an object costs a lot
of IoU (the answers RoboRef val got right averaged 0.88), and a blob joining the target to its
neighbour leaves no region to choose. The frame itself says where the edges are. The guided
filter (He, Sun and Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013) fits, in every
window of radius ``r`` around a pixel, the input as a linear function of the pixel's colour
(ridge regression with ``eps``), and averages the fits: the output follows the input where the
colour is flat and steps where the colour steps. The runtime uses it twice
(:class:`pi_runtime.segmenter.Segmenter`, ``refine``):

- :func:`guide_cells`: on the stride-grid logits, with the frame shrunk to the grid as the
  guide, before the candidate regions are cut, so blobs come apart along colour edges;
- :func:`refine_mask`: on the kept mask at the frame's own size, so its outline lands on the
  object's edge (the fits made on a copy one cell per pixel: the fast guided filter, He and
  Sun 2015).

Measured on RoboRef val, test and ShapeRef val (README, "Session 21"). numpy only; the mask's
filter runs on its bounding box plus a margin (it cannot move an outline further than its
window), with the 3x3 colour covariance inverted in closed form per pixel.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["RADIUS_CELLS", "EPS", "CELL_RADIUS", "CELL_CLIP", "CellGuide", "cell_guide", "refine_mask", "guide_cells",
           "guided_filter"]

# The window radius in cells of the model's output grid (12 px on a 640 x 480 frame at the
# default 640 input), and the regularisation, for colours scaled to 0..1. Chosen on RoboRef val
# among radii of 2-24 px and eps 1e-4..4e-2, and confirmed on RoboRef test and ShapeRef val
# (README, "Session 21").
RADIUS_CELLS = 3.0
EPS = 1e-3
# The same filter on the stride-grid logits before the candidate regions are cut
# (:func:`guide_cells`), with the frame shrunk to one pixel a cell as the guide: radius in cells,
# and the logits clipped to +-CELL_CLIP first so that a few very sure cells do not dominate a
# window's fit. Chosen on RoboRef val (radius 1 / 2 / 3, eps 1e-3 / 1e-2, clip 3 / 5 / 10 / 30)
# and confirmed on RoboRef test and ShapeRef val (README, "Session 21").
CELL_RADIUS = 2
CELL_CLIP = 5.0


def _box_mean(a: np.ndarray, r: int) -> np.ndarray:
    """The mean of ``a`` (H x W or H x W x C) over each pixel's (2r+1)^2 window, the window cut at
    the array's edges (a running sum: the cost does not grow with ``r``)."""
    def box_sum(x: np.ndarray) -> np.ndarray:
        pad = ((r + 1, r), (r + 1, r)) + ((0, 0),) * (x.ndim - 2)
        c = np.pad(x, pad).cumsum(0).cumsum(1)
        k = 2 * r + 1
        return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]

    # The window's pixel count is the product of its row and column counts (the window cut at
    # the edges): no 2-D box sum of ones on every call.
    h, w = a.shape[:2]
    rows = np.minimum(np.arange(h) + r, h - 1) - np.maximum(np.arange(h) - r, 0) + 1
    cols = np.minimum(np.arange(w) + r, w - 1) - np.maximum(np.arange(w) - r, 0) + 1
    n = np.outer(rows, cols).astype(np.float64)
    return box_sum(a.astype(np.float64)) / (n if a.ndim == 2 else n[..., None])


def _colour_stats(guide: np.ndarray, r: int, eps: float) -> tuple:
    """What the fit needs of the guide alone: its window means and the inverse of each window's
    colour covariance plus ``eps`` (6 distinct cofactors of the symmetric 3x3, and the
    determinant), by cofactors in closed form. The same for every input filtered with one guide."""
    mean_i = _box_mean(guide, r)
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    prods = np.stack([guide[..., i] * guide[..., j] for i, j in pairs], axis=-1)
    m = _box_mean(prods, r)
    s = [m[..., k] - mean_i[..., i] * mean_i[..., j] for k, (i, j) in enumerate(pairs)]
    rr, rg, rb, gg, gb, bb = s[0] + eps, s[1], s[2], s[3] + eps, s[4], s[5] + eps
    i_rr, i_rg, i_rb = gg * bb - gb * gb, gb * rb - rg * bb, rg * gb - gg * rb
    i_gg, i_gb, i_bb = rr * bb - rb * rb, rb * rg - rr * gb, rr * gg - rg * rg
    det = rr * i_rr + rg * i_rg + rb * i_rb
    return mean_i, (i_rr, i_rg, i_rb, i_gg, i_gb, i_bb), det


def _coefficients(guide: np.ndarray, src: np.ndarray, r: int, eps: float,
                  stats: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The guided filter's per-pixel linear fit ``src ~ a . guide + b``, averaged over each pixel's
    windows: ``(mean a, mean b)``, H x W x 3 and H x W. ``stats``: :func:`_colour_stats` of this
    guide, r and eps, where the caller already has them."""
    mean_i, (i_rr, i_rg, i_rb, i_gg, i_gb, i_bb), det = stats or _colour_stats(guide, r, eps)
    mean_p = _box_mean(src, r)
    cov_ip = _box_mean(guide * src[..., None], r) - mean_i * mean_p[..., None]
    c0, c1, c2 = cov_ip[..., 0], cov_ip[..., 1], cov_ip[..., 2]
    a = np.stack([i_rr * c0 + i_rg * c1 + i_rb * c2,
                  i_rg * c0 + i_gg * c1 + i_gb * c2,
                  i_rb * c0 + i_gb * c1 + i_bb * c2], axis=-1) / det[..., None]
    b = mean_p - (a * mean_i).sum(-1)
    return _box_mean(a, r), _box_mean(b, r)


def _resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Each channel of ``a`` (H x W or H x W x C) resized to ``hw`` (bilinear, pixel centres)."""
    from PIL import Image

    def one(x):
        return np.asarray(Image.fromarray(np.ascontiguousarray(x, np.float32), mode="F").resize((hw[1], hw[0]), Image.BILINEAR))
    return one(a) if a.ndim == 2 else np.stack([one(a[..., c]) for c in range(a.shape[2])], axis=-1)


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float = EPS, subsample: int = 1) -> np.ndarray:
    """He et al.'s colour guided filter: ``guide`` H x W x 3 float (0..1), ``src`` H x W float;
    returns H x W float. ``subsample`` > 1: the fast guided filter (He and Sun, 2015): the fits
    on a ``subsample`` x smaller copy with radius ``r / subsample``, upsampled and applied to the
    full-size guide."""
    if subsample <= 1:
        mean_a, mean_b = _coefficients(guide, src, r, eps)
        return (mean_a * guide).sum(-1) + mean_b
    h, w = src.shape
    small = (max(1, round(h / subsample)), max(1, round(w / subsample)))
    mean_a, mean_b = _coefficients(_resize(guide, small), _resize(src, small), max(1, round(r / subsample)), eps)
    return (_resize(mean_a, (h, w)) * guide).sum(-1) + _resize(mean_b, (h, w))


class CellGuide(NamedTuple):
    """A frame shrunk to the stride grid, with what :func:`guide_cells` needs of it alone: made
    once per frame (:func:`cell_guide`) and used for every phrase the frame runs."""
    covered_hw: tuple[int, int]
    guide: np.ndarray
    radius: int
    stats: tuple


def cell_guide(image: np.ndarray, covered_hw: tuple[int, int], radius: int = CELL_RADIUS,
               eps: float = EPS) -> CellGuide:
    """``image`` shrunk to ``covered_hw`` pixels (area mean, colours 0..1), and its window
    statistics for :func:`guide_cells`."""
    from PIL import Image

    gh, gw = covered_hw
    guide = np.asarray(Image.fromarray(image).resize((gw, gh), Image.BOX), np.float64) / 255.0
    return CellGuide((gh, gw), guide, radius, _colour_stats(guide, radius, eps))


def guide_cells(image: np.ndarray | CellGuide, cells: np.ndarray, covered_hw: tuple[int, int] | None = None,
                radius: int = CELL_RADIUS, eps: float = EPS, clip: float = CELL_CLIP) -> np.ndarray:
    """Stride-grid logits ``cells`` made to follow the frame's colour edges: where two touching
    objects of different colours are one blob over the threshold, the blob's logits dip along the
    colour edge between them, so the regions cut from it come apart (the plain bilinear logits
    join a target to its neighbour for about one in five of RoboRef val's wrong answers).
    ``covered_hw``: the cells the frame covers (the rest of the grid is the letterbox's padding
    and is left as it is); the guide is ``image`` shrunk to that many pixels (area mean).
    ``image`` may instead be the frame's :class:`CellGuide` (then ``covered_hw``, ``radius`` and
    ``eps`` are its own): the guide's share of the work is done once a frame."""
    g = image if isinstance(image, CellGuide) else cell_guide(image, covered_hw, radius, eps)
    (gh, gw), out = g.covered_hw, cells.copy()
    src = np.clip(cells[:gh, :gw].astype(np.float64), -clip, clip)
    mean_a, mean_b = _coefficients(g.guide, src, g.radius, eps, g.stats)
    out[:gh, :gw] = (mean_a * g.guide).sum(-1) + mean_b
    return out


def refine_mask(image: np.ndarray, mask: np.ndarray, cell: float, radius_cells: float = RADIUS_CELLS,
                eps: float = EPS) -> np.ndarray:
    """``mask`` (H x W bool) with its outline moved to the edges of ``image`` (H x W x 3 uint8):
    the guided filter of the mask, over 0.5. ``cell``: the side of one cell of the model's output
    grid in ``image`` pixels; the window's radius is ``radius_cells`` of them, and the fits are
    made on a copy one cell per pixel (the fast guided filter: as accurate here, 2.5x faster on
    RoboRef val's masks). An empty mask, or one the filter would empty, comes back as it was."""
    if not mask.any():
        return mask
    radius, subsample = max(1, int(round(radius_cells * cell))), max(1, int(round(cell)))
    h, w = mask.shape
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    # A pixel's output reads the fits of the windows within ``radius`` of it, and a fit is zero
    # unless its window sees the mask: nothing further than 2 radius from the mask can change, and
    # every window that matters lies within 2 radius of it, uncut by the crop.
    margin = 2 * radius + 1
    y0, y1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, h)
    x0, x1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, w)
    guide = image[y0:y1, x0:x1].astype(np.float64) / 255.0
    window = guided_filter(guide, mask[y0:y1, x0:x1].astype(np.float64), radius, eps, subsample) >= 0.5
    if not window.any():
        return mask
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = window
    return out
