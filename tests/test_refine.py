"""pi_runtime.refine: the guided filter against a direct computation, and masks snapped to edges."""

import numpy as np

from pi_runtime.refine import EPS, guided_filter, refine_mask


def _direct(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s colour guided filter written out window by window (np.linalg.solve per pixel)."""
    h, w = src.shape
    a, b = np.zeros((h, w, 3)), np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            win = (slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1))
            i, p = guide[win].reshape(-1, 3), src[win].ravel()
            mi, mp = i.mean(0), p.mean()
            cov = (i - mi).T @ (i - mi) / len(p)
            a[y, x] = np.linalg.solve(cov + eps * np.eye(3), (i * p[:, None]).mean(0) - mi * mp)
            b[y, x] = mp - a[y, x] @ mi
    q = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            win = (slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1))
            q[y, x] = a[win].reshape(-1, 3).mean(0) @ guide[y, x] + b[win].mean()
    return q


def test_guided_filter_matches_the_direct_computation():
    rng = np.random.default_rng(0)
    guide = rng.random((13, 17, 3))
    src = (rng.random((13, 17)) > 0.5).astype(np.float64)
    for r, eps in ((1, 1e-2), (3, EPS)):
        assert np.abs(guided_filter(guide, src, r, eps) - _direct(guide, src, r, eps)).max() < 1e-8


def _disc_scene(shift: int):
    """A red disc on a grey-green background with noise, and a mask of the disc moved by ``shift``."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:120, :160]
    disc = (yy - 60) ** 2 + (xx - 80) ** 2 < 30 ** 2
    image = np.where(disc[..., None], [200, 40, 40], [90, 110, 80]) + rng.normal(0, 6, (120, 160, 3))
    moved = (yy - 60 - shift) ** 2 + (xx - 80 - shift) ** 2 < 28 ** 2
    return np.clip(image, 0, 255).astype(np.uint8), disc, moved


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_a_mask_off_the_objects_edge_snaps_to_it():
    image, disc, moved = _disc_scene(shift=3)   # 3 px down and right, 2 px smaller
    assert _iou(moved, disc) < 0.82
    refined = refine_mask(image, moved, cell=4.0)   # radius 12 px, the fits on a 4x smaller copy
    assert _iou(refined, disc) > 0.97
    exact = refine_mask(image, moved, cell=1.0, radius_cells=12.0)   # the same radius, full size
    assert _iou(exact, disc) > 0.92


def test_the_cropped_window_gives_the_full_frames_result():
    """refine_mask filters only the mask's box plus a margin; at one pixel a cell (no subsampling)
    that is exactly the whole frame's filter."""
    image, _, moved = _disc_scene(shift=3)
    whole = guided_filter(image.astype(np.float64) / 255.0, moved.astype(np.float64), 5, EPS) >= 0.5
    assert np.array_equal(refine_mask(image, moved, cell=1.0, radius_cells=5.0), whole)


def test_an_empty_mask_stays_empty_and_one_the_filter_would_empty_is_kept():
    image, _, _ = _disc_scene(shift=0)
    empty = np.zeros(image.shape[:2], bool)
    assert refine_mask(image, empty, cell=4.0) is empty
    speck = empty.copy()
    speck[5, 5] = True   # one pixel on flat background: the filter's mean of it is far under 0.5
    assert np.array_equal(refine_mask(image, speck, cell=4.0), speck)


def test_guided_cells_follow_the_frames_edges_and_leave_the_padding():
    """Logits marking a square a cell larger all round than a red square (the frame shrunk to one
    pixel a cell as the guide) are cut back to the square; the grid's padding rows below the frame
    keep their logits."""
    from PIL import Image

    from pi_runtime.refine import guide_cells

    square = np.zeros((48, 64), bool)
    square[12:36, 16:40] = True
    frame = np.where(square[..., None], [210, 50, 40], [120, 120, 110]).astype(np.uint8)
    image = np.asarray(Image.fromarray(frame).resize((256, 192), Image.NEAREST))   # 4 px a cell
    larger = np.zeros((56, 64), bool)
    larger[11:37, 15:41] = True
    cells = np.where(larger, 4.0, -4.0).astype(np.float32)
    before = cells[:48] > 0
    assert _iou(before, square) < 0.9
    guided = guide_cells(image, cells, (48, 64))
    assert _iou(guided[:48] > 0, square) > 0.99
    assert np.array_equal(guided[48:], cells[48:]) and guided.shape == cells.shape


def test_a_frames_cell_guide_made_once_gives_the_same_cells_for_every_phrase():
    """The Segmenter makes the frame's CellGuide once and filters each phrase's logits with it:
    bit for bit what guide_cells computes from the frame each time."""
    from pi_runtime.refine import cell_guide, guide_cells

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (120, 160, 3), np.uint8)
    guide = cell_guide(image, (30, 40))
    for seed in (1, 2):
        cells = np.random.default_rng(seed).normal(0, 4, (32, 40)).astype(np.float32)
        assert np.array_equal(guide_cells(guide, cells), guide_cells(image, cells, (30, 40)))
