"""pi_runtime.regions: 8-connected labelling against a plain flood fill, and the one-region rule."""

from collections import deque

import numpy as np
import pytest

from pi_runtime.regions import (GROW_MARGIN, SIZE_POWER, SPLIT_LIKELY, SPLIT_MARGINS, SPLIT_MIN_CELLS, STICKY_BONUS,
                                RegionTrack, best_region, grow, grow_region, label_regions, region_scores,
                                split_regions)


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


@pytest.mark.parametrize("reach", [0, 1, 3])
def test_grow_equals_a_plain_square_dilation(reach):
    rng = np.random.default_rng(reach)
    for shape in [(1, 1), (1, 7), (9, 1), (12, 17)]:
        mask = rng.random(shape) < 0.08
        want = np.zeros_like(mask)
        for y, x in zip(*np.nonzero(mask)):
            want[max(0, y - reach): y + reach + 1, max(0, x - reach): x + reach + 1] = True
        assert np.array_equal(grow(mask, reach), want), (shape, reach)


def test_grow_region_takes_in_the_rim_over_threshold_less_the_margin_only():
    logits = np.full((12, 20), -5.0)
    logits[3:9, 3:9] = -GROW_MARGIN / 2      # the object's less sure rim
    logits[5:7, 5:7] = 3.0                     # its surest cells: the region the threshold cut
    logits[3:9, 14:17] = -GROW_MARGIN * 2      # a rim further under: not taken in
    logits[5:7, 15] = 3.0
    keep = np.zeros_like(logits, bool)
    keep[5:7, 5:7] = True
    want = np.zeros_like(keep)
    want[3:9, 3:9] = True
    assert np.array_equal(grow_region(logits, keep, 0.0), want)
    keep = np.zeros_like(keep)
    keep[5:7, 15] = True
    assert np.array_equal(grow_region(logits, keep, 0.0), keep)     # nothing within the margin
    assert grow_region(logits, np.zeros_like(keep), 0.0) is None       # nothing kept, nothing to grow
    assert grow_region(np.full((4, 4), -9.0), keep[:4, :4], 0.0) is None


def test_grow_region_never_joins_the_kept_region_to_another_candidate_it_shares_the_rim_out():
    logits = np.full((10, 24), -5.0)
    logits[4:6, 2:20] = -0.5                   # a faint bridge between two objects
    logits[3:7, 2:6] = 2.0
    logits[3:7, 16:20] = 4.0
    keep = np.zeros_like(logits, bool)
    keep[3:7, 16:20] = True
    got = grow_region(logits, keep, 0.0)
    want = keep.copy()
    want[4:6, 11:16] = True                    # the half of the bridge nearer the kept object...
    assert np.array_equal(got, want)           # ... the other half goes to the other one
    assert not got[:, :6].any()
    assert np.array_equal(grow_region(logits, keep, 0.0, margin=0.25), keep)   # the bridge is under this one


def test_grow_region_is_the_flood_fill_of_the_low_mask_from_the_kept_region():
    outcomes = set()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        logits = rng.normal(-2.0, 1.0, (15, 21))
        logits[7, 10] = 2.0
        high, _ = _flood_fill_labels(logits >= 0)
        keep = high == high[7, 10]                       # the region the threshold cut
        low, _ = _flood_fill_labels(logits >= -GROW_MARGIN)
        want = low == low[7, 10]
        got = grow_region(logits, keep, 0.0)
        joins_another = bool(((logits >= 0) & want & ~keep).any())
        if joins_another:   # shared out: a part of the flood fill, holding keep and no other candidate
            assert (got & ~want).sum() == 0 and (keep & ~got).sum() == 0, seed
            assert not ((logits >= 0) & got & ~keep).any(), seed
        else:
            assert np.array_equal(got, want), seed
        outcomes.add(joins_another)
    assert outcomes == {True, False}                     # both cases came up


def _left_right_blobs(a_mean: float, b_mean: float, shift: int = 0) -> np.ndarray:
    """Equal-sized blobs, A on the left (moved right by ``shift``) and B on the right."""
    logits = np.full((20, 40), -4.0)
    logits[5:11, 4 + shift:10 + shift] = a_mean
    logits[5:11, 28:34] = b_mean
    return logits


def test_a_preferred_region_wins_only_within_the_bonus():
    prefer = np.zeros((20, 40), bool)
    prefer[6:9, 5:8] = True                       # touches A
    a_kept = lambda logits, bonus: best_region(logits, 0.0, prefer, bonus)[7, 6]
    # B's mean is 1.4x A's: A wins with bonus 1.5, B with 1.3 or with no preference at all.
    assert a_kept(_left_right_blobs(2.0, 2.8), 1.5)
    assert not a_kept(_left_right_blobs(2.0, 2.8), 1.3)
    assert not best_region(_left_right_blobs(2.0, 2.8), 0.0)[7, 6]
    # A preference map of another shape (a resized frame) is ignored.
    assert not best_region(_left_right_blobs(2.0, 2.8), 0.0, np.ones((10, 10), bool), 1.5)[7, 6]


def test_region_track_stays_on_its_object_until_another_is_clearly_surer():
    track = RegionTrack(bonus=1.5, reach=3)
    on_a = lambda keep: bool(keep[:, :20].any()) and not keep[:, 20:].any()
    on_b = lambda keep: bool(keep[:, 20:].any()) and not keep[:, :20].any()
    assert on_a(track.choose(_left_right_blobs(3.0, 2.5), 0.0, "the mug"))          # A is surer: chosen
    assert on_a(track.choose(_left_right_blobs(2.4, 3.0, shift=2), 0.0, "the mug"))  # A moved, B 1.25x: stays on A
    assert on_b(track.choose(_left_right_blobs(1.5, 3.0, shift=4), 0.0, "the mug"))  # B 2x: moves to B
    assert on_b(track.choose(_left_right_blobs(2.6, 2.2), 0.0, "the mug"))          # and stays there
    assert on_a(track.choose(_left_right_blobs(2.6, 2.2), 0.0, "the cup"))          # a new phrase starts afresh
    track.forget()
    assert track.last is None
    assert on_b(track.choose(_left_right_blobs(2.4, 3.0), 0.0, "the cup"))          # after forget: afresh
    assert not track.choose(np.full((20, 40), -1.0), 0.0, "the cup").any() and track.last is None
    assert STICKY_BONUS > 1


def _joined_peaks(bridge: float = 1.0, right_side: int = 10) -> np.ndarray:
    """Two 10-cell-high peaks of logit 6 (columns 10-19 and 24-), joined over the threshold 0 by a
    bridge of ``bridge`` (columns 20-23): one region at the threshold, two from margin 2 up."""
    logits = np.full((30, 60), -5.0)
    logits[10:20, 10:20] = 6.0
    logits[10:20, 20:24] = bridge
    logits[10:20, 24:24 + right_side] = 6.0
    return logits


def test_split_regions_shares_a_two_peak_region_out_between_its_peaks():
    assert SPLIT_MARGINS[:2] == (1.0, 2.0) and SPLIT_MIN_CELLS == 4  # the geometry below is worked out for them
    logits = _joined_peaks()
    logits[25:28, 40:43] = 3.0                                         # a second region, not named: stays whole
    labels, n, _, (r0, c0) = region_scores(logits, 0.0)
    assert n == 2
    box = logits[r0:r0 + labels.shape[0], c0:c0 + labels.shape[1]]
    split, m, parts = split_regions(labels, n, box, 0.0, {1})
    assert m == 3 and parts == [1, 2] and np.array_equal(split > 0, labels > 0)   # every cell kept, none added
    left, right = (split == 1), (split == 2)
    full = lambda part: np.pad(part, ((r0, 60 - r0 - part.shape[0]), (c0, 60 - c0 - part.shape[1])))[:30]
    # bridge columns 20-21 are nearer the left peak, 22-23 the right one (margin 1 keeps the bridge: no split there)
    assert full(left)[10:20, 10:22].all() and not full(left)[:, 22:].any()
    assert full(right)[10:20, 22:34].all() and not full(right)[:, :22].any()
    assert np.array_equal(split == 3, labels == 2)


def _small_second_peak() -> np.ndarray:
    """Like :func:`_joined_peaks`, but the right part is low (1.5) except a 3-cell peak."""
    logits = _joined_peaks()
    logits[10:20, 24:34] = 1.5
    logits[10, 24:27] = 6.0
    return logits


@pytest.mark.parametrize("logits, which", [
    (_joined_peaks(bridge=6.0), {1}),   # one flat plateau: no margin parts it
    (_small_second_peak(), {1}),        # the second peak has 3 cells, fewer than SPLIT_MIN_CELLS
    (_joined_peaks(), set()),           # two peaks, but the region is not named
])
def test_split_regions_keeps_a_region_whole_without_two_peaks_or_when_not_named(logits, which):
    labels, n, _, (r0, c0) = region_scores(logits, 0.0)
    box = logits[r0:r0 + labels.shape[0], c0:c0 + labels.shape[1]]
    split, m, parts = split_regions(labels, n, box, 0.0, which)
    assert m == n == 1 and parts == [] and np.array_equal(split, labels)


class _HalfWeigh:
    """A category check stand-in: p = ``left_p`` for a region wholly left of column ``edge``, else
    0; it rejects regions under 0.5 when ``rejects`` (the runtime's check does so only while picking)."""

    def __init__(self, edge: int, rejects: bool = True, left_p: float = 1.0):
        self.edge, self.rejects, self.left_p, self.calls = edge, rejects, left_p, 0

    def __call__(self, labels, scores, origin):
        self.calls += 1
        cols = np.arange(labels.shape[1]) + origin[1]
        right = np.bincount(labels.ravel(), weights=np.broadcast_to(cols >= self.edge, labels.shape).ravel(),
                            minlength=len(scores) + 1)[1:]
        self.p = np.where(right > 0, 0.0, self.left_p)
        return scores * self.p

    def rejected(self):
        return [int(i) + 1 for i in np.nonzero(self.p < 0.5)[0]] if self.rejects else []

    def likely(self, labels, p):
        return bool((self.p[np.asarray(labels) - 1] >= p).any())


def test_best_region_splits_a_rejected_region_and_keeps_the_part_the_check_accepts():
    logits = _joined_peaks()
    logits[25:27, 50:52] = 0.5                        # a faint second region, so there is a choice
    weigh = _HalfWeigh(edge=22)
    keep = best_region(logits, 0.0, weigh=weigh)
    assert weigh.calls == 2 and keep[10:20, 10:22].all() and keep.sum() == 120
    kept_whole = best_region(logits, 0.0, weigh=_HalfWeigh(edge=22, rejects=False))
    assert kept_whole[10:20, 10:34].all()              # nothing rejected: the joined region, as before
    assert SPLIT_LIKELY > 0.6
    unsure = _HalfWeigh(edge=22, left_p=0.6)           # no part likely enough: the split does not stand
    kept_whole = best_region(logits, 0.0, weigh=unsure)
    assert unsure.calls == 3 and kept_whole[10:20, 10:34].all() and unsure.p.tolist() == [0.0, 0.0]
