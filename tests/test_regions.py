"""pi_runtime.regions: 8-connected labelling against a plain flood fill, and the one-region rule."""

from collections import deque

import numpy as np
import pytest

from pi_runtime.regions import SIZE_POWER, best_region, label_regions


def _flood_fill_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Reference: breadth-first flood fill, components numbered in raster order of their first pixel."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    n = 0
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or labels[y, x]:
                continue
            n += 1
            labels[y, x] = n
            todo = deque([(y, x)])
            while todo:
                cy, cx = todo.popleft()
                for ny in range(cy - 1, cy + 2):
                    for nx in range(cx - 1, cx + 2):
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                            labels[ny, nx] = n
                            todo.append((ny, nx))
    return labels, n


def _snake(h: int, w: int) -> np.ndarray:
    """One long winding component: the worst case for label propagation."""
    m = np.zeros((h, w), bool)
    m[::2] = True
    for i, y in enumerate(range(1, h, 2)):
        m[y, w - 1 if i % 2 == 0 else 0] = True
    return m


@pytest.mark.parametrize("density", [0.1, 0.35, 0.5, 0.65])
def test_labels_match_a_flood_fill_on_random_masks(density):
    rng = np.random.default_rng(int(density * 100))
    for _ in range(30):
        h, w = rng.integers(1, 40, size=2)
        mask = rng.random((h, w)) < density
        got, n = label_regions(mask)
        want, n_want = _flood_fill_labels(mask)
        assert n == n_want and got.dtype == np.int32
        assert np.array_equal(got, want)


@pytest.mark.parametrize("mask", [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.eye(6, dtype=bool),
                                  np.eye(6, dtype=bool)[::-1], _snake(21, 17), np.ones((1, 1), bool),
                                  np.array([[True, False, True]])])
def test_labels_match_a_flood_fill_on_edge_cases(mask):
    got, n = label_regions(mask)
    want, n_want = _flood_fill_labels(mask)
    assert n == n_want and np.array_equal(got, want)


def test_diagonal_neighbours_join_and_non_2d_is_refused():
    labels, n = label_regions(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]], bool))
    assert n == 3 and labels[0, 0] == labels[1, 1] == 1 and labels[3, 0] == 2 and labels[3, 2] == 3
    with pytest.raises(ValueError, match="2-D"):
        label_regions(np.zeros((2, 2, 2), bool))


def _two_blobs(a: float, a_side: int, b: float, b_side: int) -> tuple[np.ndarray, tuple, tuple]:
    logits = np.full((40, 40), -4.0, np.float32)
    a_box, b_box = np.s_[2:2 + a_side, 2:2 + a_side], np.s_[20:20 + b_side, 20:20 + b_side]
    logits[a_box], logits[b_box] = a, b
    return logits, a_box, b_box


@pytest.mark.parametrize("a, a_side, b, b_side, winner", [
    (6.0, 4, 2.0, 14, "a"),   # 6 x 16 ** 0.25 = 12 beats 2 x 196 ** 0.25 = 7.5, though the sum says b
    (5.0, 2, 3.0, 8, "b"),    # 5 x 4 ** 0.25 = 7.1 loses to 3 x 64 ** 0.25 = 8.5, though the mean says a
    (3.0, 3, 3.0, 5, "b"),    # same mean: the bigger one
])
def test_best_region_keeps_the_blob_with_the_highest_mean_times_size_power(a, a_side, b, b_side, winner):
    assert SIZE_POWER == 0.25  # the expectations above are worked out for it
    logits, a_box, b_box = _two_blobs(a, a_side, b, b_side)
    keep = best_region(logits, 0.0)
    want = np.zeros(logits.shape, bool)
    want[a_box if winner == "a" else b_box] = True
    assert np.array_equal(keep, want)


def test_scores_are_measured_above_the_threshold():
    # Threshold 3: a's margin 2 x 4 ** 0.25 = 2.8 beats b's 0.5 x 64 ** 0.25 = 1.4; measured from 0
    # instead, b would win (3.5 x 2.8 = 9.9 against 5 x 1.4 = 7.1). A blob under the threshold is no region.
    logits, a_box, b_box = _two_blobs(5.0, 2, 3.5, 8)
    logits[30:34, 2:6] = 2.9
    keep = best_region(logits, 3.0)
    assert keep[a_box].all() and keep.sum() == 4


def test_one_region_or_none_is_returned_as_is():
    logits, a_box, _ = _two_blobs(3.0, 5, -9.0, 3)
    assert np.array_equal(best_region(logits, 0.0), logits >= 0.0)
    assert not best_region(np.full((6, 9), -1.0), 0.0).any()
    assert best_region(np.zeros((0, 0)), 0.0).shape == (0, 0)
