"""One object per phrase: keep the connected region of the mask the model is surest of.

A referring phrase names exactly one object, yet the model often marks every candidate ("the
mug on the left" lights up all mugs, a little brighter on the left one). Measured on the val sets
(README, "One object per phrase"), keeping only the region the model is surest of raises mIoU
most on the phrases that single one object out among alike ones (ordinal, depth, relation).

Works on the stride-4 logit grid (a 640x480 frame's is 160x120), in numpy only: the runtime has
no scipy. Regions are 8-connected components, found by propagating the smallest flat index
through each component with pointer jumping, which converges in a few passes for compact shapes.

Live mode adds memory (:class:`RegionTrack`): when two alike objects score close, the choice
made on each frame afresh jumps between them as the camera moves, and a robot following the mask
jumps with it. Frame to frame, the region touching the last frame's kept one gets its score
multiplied by :data:`STICKY_BONUS`, so the mask moves to another object only when the model is
clearly surer of it.
"""

from __future__ import annotations

import numpy as np

# How the image output becomes one mask: "best" keeps the region scoring highest (below);
# "all" keeps every pixel over the threshold, as the model says.
REGION_MODES = ("best", "all")
# A region's score is its mean logit x (its cell count) ** SIZE_POWER: the mean alone prefers a
# small, sharp blob on the wrong object; the sum, a large, vague one. Chosen on the first 400 of
# each val set among mean, sum, peak and powers 0.25 / 0.5, and confirmed on the other 600.
SIZE_POWER = 0.25
# Live mode: the score of a region touching the last frame's kept region (grown by STICKY_REACH
# cells, for motion between frames) is multiplied by STICKY_BONUS. Chosen on rendered camera
# sweeps over RoboRef val scenes (README, "Session 14: live mode stays on one object").
STICKY_BONUS = 1.5
STICKY_REACH = 3
# The kept region then takes in the cells joined to it over (threshold - GROW_MARGIN) logits
# (hysteresis, :func:`grow_region`): the head often marks only the surest part of an object.
# Chosen on stored logits of RoboRef val among 1 / 2 / 4 (1 and 2 tied) and of RoboRef test and
# ShapeRef val among 0.5 / 1 / 1.5 / 2 (1 best on ShapeRef) (README, "Session 19").
GROW_MARGIN = 1.0
# A candidate the category check rejects is often two objects the threshold joined into one region
# (a teddy bear and the can beside it): the crop shows both and looks like neither. Such a
# region is split where the logits show two peaks: at the first of these margins over the threshold
# where it falls apart into two or more parts of at least SPLIT_MIN_CELLS cells each, its cells are
# shared out among those parts (:func:`split_regions`) and the check weighs the parts afresh. Chosen
# on stored logits (README, "Session 26"); margins (2, 4, 6) and parts of at least 8 cells were
# measured too.
SPLIT_MARGINS = (1.0, 2.0, 3.0, 4.0, 6.0)
SPLIT_MIN_CELLS = 4
# ... and the split stands only where the check finds one of the parts likely, p >= SPLIT_LIKELY:
# a shape's arm or a teddy bear's head, cut off, can read as another kind of object, and an absent
# one would be found. Chosen among none / 0.3 / 0.5 / 0.7 as the one that lost on no set (README,
# "Session 26").
SPLIT_LIKELY = 0.7


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a 2-D bool array: ``(labels, n)``, labels int32 with 0 for
    background and 1..n for the components, numbered in raster order of their first pixel."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"label_regions needs a 2-D mask, got shape {mask.shape}")
    h, w = mask.shape
    if not mask.any():
        return np.zeros((h, w), np.int32), 0
    big = h * w  # "no label": larger than any flat index
    lab = np.where(mask, np.arange(h * w, dtype=np.int64).reshape(h, w), big)
    while True:
        p = np.pad(lab, 1, constant_values=big)
        low = lab.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.minimum(low, p[dy:dy + h, dx:dx + w], out=low)
        low = np.where(mask, low, big)
        flat = low.ravel()
        inside = flat < big
        while True:  # pointer jumping: a label's own label is in the same component and no larger
            jumped = flat.copy()
            jumped[inside] = flat[flat[inside]]
            if np.array_equal(jumped, flat):
                break
            flat = jumped
        low = flat.reshape(h, w)
        if np.array_equal(low, lab):
            break
        lab = low
    roots, inverse = np.unique(lab[mask], return_inverse=True)  # roots ascend: raster order
    labels = np.zeros((h, w), np.int32)
    labels[mask] = inverse.ravel() + 1
    return labels, len(roots)


def grow(mask: np.ndarray, reach: int) -> np.ndarray:
    """``mask`` dilated by a (2 reach + 1)-square: every cell within ``reach`` cells of a True one."""
    out = np.asarray(mask, bool).copy()
    for axis in (0, 1):
        base, n = out.copy(), out.shape[axis]
        for d in range(1, min(reach, n - 1) + 1):
            ahead = [slice(None)] * 2
            behind = [slice(None)] * 2
            ahead[axis], behind[axis] = slice(d, None), slice(None, n - d)
            out[tuple(behind)] |= base[tuple(ahead)]
            out[tuple(ahead)] |= base[tuple(behind)]
    return out


def region_scores(logits: np.ndarray, threshold_logit: float):
    """The 8-connected regions of ``logits >= threshold_logit`` and their scores: ``(labels, n,
    scores, origin)``, ``labels`` covering only the box around the passing cells, whose top-left
    cell is ``origin`` (labelling only where something is saves most of the work on a frame with
    one small object). A region's score is (mean logit - threshold) x cells ** :data:`SIZE_POWER`."""
    logits = np.asarray(logits)
    over = logits >= threshold_logit
    rows, cols = np.nonzero(over.any(axis=1))[0], np.nonzero(over.any(axis=0))[0]
    if len(rows) == 0:
        return np.zeros((0, 0), np.int32), 0, np.zeros(0), (0, 0)
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    labels, n = label_regions(over[box])
    return labels, n, _scores(labels, n, logits[box], threshold_logit), (int(rows[0]), int(cols[0]))


def _scores(labels: np.ndarray, n: int, logits: np.ndarray, threshold_logit: float) -> np.ndarray:
    """Each region's score, (mean logit - threshold) x cells ** :data:`SIZE_POWER`, over ``logits``
    of ``labels``' shape. Shifted by the threshold, so every region's mean is >= 0 and a bigger
    region never scores less for being bigger at the same mean."""
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    sums = np.bincount(flat, weights=logits.ravel().astype(np.float64), minlength=n + 1)[1:]
    return (sums / np.maximum(counts, 1) - threshold_logit) * counts ** SIZE_POWER


def split_regions(labels: np.ndarray, n: int, logits: np.ndarray, threshold_logit: float,
                  which) -> tuple[np.ndarray, int, list[int]]:
    """``(labels, n, parts)`` with each region named in ``which`` (labels 1..n) split where ``logits`` (of
    ``labels``' shape) show two or more peaks: at the first margin of :data:`SPLIT_MARGINS` over the
    threshold where the region's cells over it fall apart into parts of at least
    :data:`SPLIT_MIN_CELLS` cells (smaller ones are ignored), the region's cells are shared among
    those parts, each cell going to the part that reaches it first through the region (a tie to
    the part first in raster order). Regions that do not fall apart, and all others, stay whole;
    labels are renumbered 1..n' in the order of the old ones; ``parts`` are the new labels of the
    regions' parts where one was split."""
    out = np.zeros_like(labels)
    k = 0
    split = []
    for i in range(1, n + 1):
        region = labels == i
        peaks = None
        if i in which:   # worked on the region's bounding box
            rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
            box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
            peaks = _peaks(region[box], logits[box], threshold_logit)
        if peaks is None:
            k += 1
            out[region] = k
            continue
        for part in _share_among(region[box], peaks):
            k += 1
            out[box][part] = k
            split.append(k)
    return out, k, split


def _peaks(region: np.ndarray, logits: np.ndarray, threshold_logit: float) -> list[np.ndarray] | None:
    """The parts ``region`` falls apart into at the first margin of :data:`SPLIT_MARGINS` where two
    or more of at least :data:`SPLIT_MIN_CELLS` cells appear, or None."""
    if region.sum() < 2 * SPLIT_MIN_CELLS:
        return None
    for margin in SPLIT_MARGINS:
        high, m = label_regions(region & (logits >= threshold_logit + margin))
        if m < 2:
            continue
        sizes = np.bincount(high.ravel(), minlength=m + 1)[1:]
        big = np.nonzero(sizes >= SPLIT_MIN_CELLS)[0] + 1
        if len(big) >= 2:
            return [high == b for b in big]
    return None


def _share_among(region: np.ndarray, parts: list[np.ndarray]) -> list[np.ndarray]:
    """``region``'s cells shared among ``parts`` (disjoint bool maps inside it), spreading one
    8-neighbour step at a time through the region from all at once (a cell two reach in the same
    step goes to the earlier part); cells no part reaches join the first."""
    owned = [p.copy() for p in parts]
    free = region & ~np.logical_or.reduce(owned)
    while free.any():
        moved = False
        for p in owned:
            step = grow(p, 1) & free
            if step.any():
                p |= step
                free &= ~step
                moved = True
        if not moved:
            owned[0] |= free
            break
    return owned


def region_boxes(labels: np.ndarray, n: int, origin: tuple[int, int] = (0, 0)) -> dict[str, np.ndarray]:
    """Per-region geometry in grid cells (index 0 = region 1), measured at cell centres on the
    whole grid (``labels`` covers the part whose top-left cell is ``origin``, as
    :func:`region_scores` gives it): centre ``cx``, ``cy``; leftmost ``x0`` and rightmost ``x1``
    column; lowest row ``y1``."""
    flat = labels.ravel()
    ys, xs = np.divmod(np.arange(flat.size), labels.shape[1])
    ys, xs = ys + origin[0] + 0.5, xs + origin[1] + 0.5
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    out = {"cx": np.bincount(flat, weights=xs, minlength=n + 1)[1:] / counts,
           "cy": np.bincount(flat, weights=ys, minlength=n + 1)[1:] / counts}
    for name, vals, fn, init in (("x0", xs, np.minimum, np.inf), ("x1", xs, np.maximum, -np.inf),
                                 ("y1", ys, np.maximum, -np.inf)):
        acc = np.full(n + 1, init)
        fn.at(acc, flat, vals)
        out[name] = acc[1:]
    return out


def grow_region(logits: np.ndarray, keep: np.ndarray, threshold_logit: float,
                margin: float = GROW_MARGIN) -> np.ndarray | None:
    """The kept region ``keep`` (a bool map of ``logits``' shape) grown by hysteresis: every
    8-connected component of ``logits >= threshold_logit - margin`` that touches it. None when
    nothing is kept or nothing passes the lower threshold.

    Between two objects the margin must not make one region of them: where the grown region would
    reach a cell of another candidate (over the threshold and not kept), the lower cells are
    shared out instead (:func:`_share_out`), each going to whichever of the kept region and the
    other candidates reaches it first through lower cells, a tie to the other. Sharing rather than
    not growing at all: RoboRef val 74.2 -> 74.3, test 75.2 -> 75.4, ShapeRef val 82.7 -> 82.9
    (stored logits, README "Session 20")."""
    logits = np.asarray(logits)
    low = logits >= threshold_logit - margin
    rows, cols = np.nonzero(low.any(axis=1))[0], np.nonzero(low.any(axis=0))[0]
    if not keep.any() or len(rows) == 0:
        return None
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    labels, _ = label_regions(low[box])
    touched = np.unique(labels[keep[box]])
    grown = np.zeros(keep.shape, bool)
    grown[box] = np.isin(labels, touched[touched > 0])
    others = (logits >= threshold_logit) & ~keep
    if (grown & others).any():
        grown[box] = _share_out(low[box], keep[box], others[box])
    return grown  # holds keep: its cells pass the lower threshold too


def _share_out(low: np.ndarray, keep: np.ndarray, others: np.ndarray) -> np.ndarray:
    """The cells of ``low`` that ``keep`` reaches before ``others`` do, spreading one 8-neighbour
    step at a time through ``low`` from both at once (a cell both reach in the same step goes to
    the others), plus ``keep`` itself."""
    mine, theirs = keep.copy(), others.copy()  # others pass the threshold, so the lower one too
    free = low & ~mine & ~theirs
    while True:
        theirs_next = grow(theirs, 1) & free
        mine_next = grow(mine, 1) & free & ~theirs_next
        if not (mine_next.any() or theirs_next.any()):
            return mine
        mine |= mine_next
        theirs |= theirs_next
        free &= ~(mine_next | theirs_next)


def best_region(logits: np.ndarray, threshold_logit: float, prefer: np.ndarray | None = None,
                bonus: float = STICKY_BONUS, pick=None, weigh=None) -> np.ndarray:
    """Bool mask of ``logits``' shape: the 8-connected region of ``logits >= threshold_logit``
    with the highest mean logit x size ** :data:`SIZE_POWER`. All False if nothing passes.
    ``prefer``: a bool map of the same shape (the last frame's kept region, already grown for
    motion); regions touching it score ``bonus`` times more. ``pick``: what the phrase says about
    which one, a callable ``(labels, scores, origin, grid_hw, preferred=, bonus=) -> label`` over
    :func:`region_scores`' output (a where-word, :meth:`pi_runtime.spatial.Selector.pick`, or a
    relation, :func:`pi_runtime.relations.choose_related`); it decides instead, given
    ``preferred``, the regions touching ``prefer`` (or None), to apply live mode's memory its way.
    ``weigh``: a callable ``(labels, scores, origin) -> scores`` applied first (the category
    check, :mod:`pi_runtime.categories`); it sees a lone region too. Where it has ``rejected()``,
    naming the labels it judged unlikely, and ``likely(labels, p)``, whether any of those labels
    reaches p, the rejected regions are split where two objects joined (:func:`split_regions`) and
    weighed again, and the split stands if a part reaches :data:`SPLIT_LIKELY`."""
    logits = np.asarray(logits)
    labels, n, scores, (r0, c0) = region_scores(logits, threshold_logit)
    if weigh is not None and n >= 1:
        weighed = weigh(labels, scores, (r0, c0))
        rejected = weigh.rejected() if hasattr(weigh, "rejected") and hasattr(weigh, "likely") else ()
        if len(rejected):
            box = logits[r0:r0 + labels.shape[0], c0:c0 + labels.shape[1]]
            split, m, parts = split_regions(labels, n, box, threshold_logit, set(rejected))
            if m > n:
                split_weighed = weigh(split, _scores(split, m, box, threshold_logit), (r0, c0))
                if weigh.likely(parts, SPLIT_LIKELY):
                    labels, n, weighed = split, m, split_weighed
                else:   # the weighing remembers the regions it saw last: the whole ones again
                    weighed = weigh(labels, scores, (r0, c0))
        scores = weighed
    if n <= 1:
        return logits >= threshold_logit
    touches = None
    if prefer is not None and prefer.shape == logits.shape:  # a resized frame has no memory
        box = slice(r0, r0 + labels.shape[0]), slice(c0, c0 + labels.shape[1])
        touches = np.bincount(labels.ravel(), weights=prefer[box].ravel(), minlength=n + 1)[1:] > 0
    if pick is not None:
        label = pick(labels, scores, (r0, c0), logits.shape, preferred=touches, bonus=bonus)
    else:
        label = 1 + int(np.argmax(scores if touches is None else np.where(touches, scores * bonus, scores)))
    out = np.zeros(logits.shape, bool)
    out[r0:r0 + labels.shape[0], c0:c0 + labels.shape[1]] = labels == label
    return out


class RegionTrack:
    """Live mode's memory: the region kept on the last frame, for :func:`best_region`'s
    ``prefer``. Forgets on a new phrase, a frame where nothing was found, or a frame of another
    size. One per stream: a batch of unrelated images must not share one."""

    def __init__(self, bonus: float = STICKY_BONUS, reach: int = STICKY_REACH):
        self.bonus, self.reach = bonus, reach
        self.phrase: str | None = None
        self.last: np.ndarray | None = None   # the last kept region, grown by reach
        self._reference: RegionTrack | None = None

    @property
    def reference(self) -> RegionTrack:
        """The memory of a relation phrase's reference object ("the duck" of "the mug left of
        the duck"), so that it too stays on one object from frame to frame."""
        if self._reference is None:
            self._reference = RegionTrack(self.bonus, self.reach)
        return self._reference

    def choose(self, logits: np.ndarray, threshold_logit: float, phrase: str, pick=None, weigh=None) -> np.ndarray:
        """:func:`best_region` with the last frame's region preferred (what the phrase says,
        ``pick``, decides instead where given); remembers the choice."""
        if phrase != self.phrase:
            self.phrase, self.last = phrase, None
        keep = best_region(logits, threshold_logit, self.last, self.bonus, pick, weigh)
        self.last = grow(keep, self.reach) if keep.any() else None
        return keep

    def forget(self) -> None:
        self.last = None
        if self._reference is not None:
            self._reference.forget()
