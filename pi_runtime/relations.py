"""Relations: "the mug left of the duck" — find the duck, then keep the mug the relation picks.

The shipped model lights up the candidates of a relation phrase about as it does for a plain one
(every mug, and often the duck too), and CPU training has not taught it the relation (README,
sessions 7-14); it is much surer of plain descriptions ("the duck": colour 84, colour + category
73 mIoU on RoboRef val). So the runtime splits the phrase at its relation word
(:func:`parse_relation`), asks the model for the reference alone (one more run of the image
graph, on relation phrases only), and among the full phrase's candidate regions keeps the one
that stands in the relation to the reference's region (:func:`choose_related`), geometry the
grid gives exactly:

- left of / right of, above / below (under): the candidate's centre lies on that side of the
  reference's centre;
- behind / in front of: on a robot's camera looking down at a table, the farther object reaches
  less low in the frame; the candidate's lowest row is above (behind) or below (in front of) the
  reference's, and its centre lies within :data:`DEPTH_REACH` of the frame's width to either side
  of the reference's;
- on (on top of): the candidate's centre is above the reference's and its columns overlap the
  reference's;
- next to / beside: the candidate whose centre is nearest the reference's.

Among the candidates that satisfy the relation, the one the model is surest of is kept; when
none does, or the reference is not found, the model's own choice stands.

The reference object is not the target: its region's cells are taken out of the target's logits
first (:func:`without_reference`), so a target the model marked as one region with its reference
(touching, or stacked on it) becomes a candidate of its own (README, "Session 19").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pi_runtime.regions import region_boxes

__all__ = ["Relation", "parse_relation", "choose_related", "without_reference", "RELATED_SHARE", "DEPTH_REACH",
           "NOT_THERE"]

# A region is a candidate for the relation when its score is at least this share of the best
# region's. Chosen among 0.1, 0.25, 0.5 on the relation phrases of the first 400 scenes of each
# val set, confirmed on the other 600 and on RoboRef test (README, "Session 15: where-words and
# relations").
RELATED_SHARE = 0.25

# Behind / in front of: how far to the side of the reference's centre (a share of the frame's
# width) a candidate's centre may lie. RoboRef says "behind the mug" of an object up to a quarter
# of the frame to its side; the rule it replaced (columns overlapping the reference's, widened by
# half its width) missed targets beside a small reference. Chosen among 0.15-1.0 on the behind /
# in-front-of phrases of RoboRef val (0.3 and 0.35 best, 65.5 at 0.25, 54.3 before) and confirmed
# on RoboRef test (68.7 at 0.25-0.4, 64.0 before) (README, "Session 20").
DEPTH_REACH = 0.3

# The logit the reference's cells get in the target's grid (:func:`without_reference`): far under
# any threshold, and inside the clip the runtime applies before the sigmoid.
NOT_THERE = -60.0

# relation word (longest first, so "to the left of" is not read as "left of") -> relation
_WORDS = [("on the left of", "left of"), ("on the right of", "right of"), ("to the left of", "left of"),
          ("to the right of", "right of"), ("left of", "left of"),
          ("right of", "right of"), ("next to", "next to"), ("beside", "next to"), ("behind", "behind"),
          ("in front of", "in front of"), ("on top of", "on"), ("above", "above"), ("below", "below"),
          ("under", "below"), ("on", "on")]
_SPLIT = re.compile(r"\b(" + "|".join(re.escape(w) for w, _ in _WORDS) + r")\b")
_REL = dict(_WORDS)
_PLACE_AFTER_ON = re.compile(r"^(?:the |a |an )?(?:left|right|top|bottom|table|floor)\b")
_LINK = re.compile(r"\b(?:that|which|who)(?: is| are|'s)?\s*$|\bis\s*$")


@dataclass(frozen=True)
class Relation:
    """``target`` ``relation`` ``reference``: the phrases on either side of the relation word."""
    relation: str       # left of, right of, above, below, next to, behind, in front of, on
    target: str         # "the mug"
    reference: str      # "the duck", the phrase the model is asked for on its own


@lru_cache(maxsize=64)
def parse_relation(phrase: str) -> Relation | None:
    """The relation in ``phrase`` and its two sides, or None. "the green one" as the reference
    borrows the target's noun ("the lego brick right of the green one" -> "the green brick").
    Cached: live mode asks for the same phrase on every frame."""
    text = " ".join(phrase.lower().split())
    for m in _SPLIT.finditer(text):
        word = m.group(1)
        before, after = text[:m.start()].strip(), text[m.end():].strip()
        if word == "on" and (not after or _PLACE_AFTER_ON.match(after)):
            continue  # "on the left", "on the table": a place, not an object
        before = _LINK.sub("", before).strip().rstrip(",")
        if not before or not after or not re.search(r"[a-z]", after):
            return None
        ref = after if re.match(r"(?:the|a|an)\b", after) else f"the {after}"
        words = ref.split()
        if words[-1] == "one" and len(before.split()) > 0:
            words[-1] = before.split()[-1]
            ref = " ".join(words)
        return Relation(_REL[word], before, ref)
    return None


def without_reference(cells: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """The target's stride-grid logits with the reference's region (a bool map of the same grid)
    set to :data:`NOT_THERE`; ``cells`` itself when there is no reference region."""
    if reference is None or reference.shape != cells.shape or not reference.any():
        return cells
    return np.where(reference, np.float32(NOT_THERE), cells).astype(cells.dtype, copy=False)


def _reference_box(ref: np.ndarray) -> dict[str, float]:
    ys, xs = np.nonzero(ref)
    ys, xs = ys + 0.5, xs + 0.5
    return {"cx": xs.mean(), "cy": ys.mean(), "x0": xs.min(), "x1": xs.max(), "y1": ys.max()}


def choose_related(labels: np.ndarray, scores: np.ndarray, origin: tuple[int, int], grid_hw: tuple[int, int],
                   relation: str, reference: np.ndarray, share: float | None = None,
                   preferred: np.ndarray | None = None, bonus: float = 1.0) -> int:
    """The label (1..n) to keep among the regions of :func:`pi_runtime.regions.region_scores`
    (``labels`` over the part of a ``grid_hw`` grid whose top-left cell is ``origin``): among
    those scoring at least ``share`` (default :data:`RELATED_SHARE`) x the best and not mostly
    inside ``reference`` (a bool map of the whole grid: the reference's region), the surest one
    standing in ``relation`` to the reference; the best-scoring region when none does or
    ``reference`` is empty. Live mode: in either choice, ``preferred`` regions (touching the last
    frame's kept one) score ``bonus`` times more."""
    n = len(scores)
    best = int(np.argmax(scores))
    sticky = scores if preferred is None else np.where(preferred, scores * bonus, scores)
    if reference.shape != tuple(grid_hw) or not reference.any():
        return int(np.argmax(sticky)) + 1
    h, w = labels.shape
    inside = np.bincount(labels.ravel(), weights=reference[origin[0]:origin[0] + h, origin[1]:origin[1] + w].ravel(),
                         minlength=n + 1)[1:]
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    cand = (scores >= (RELATED_SHARE if share is None else share) * scores[best]) & (inside < 0.5 * counts)
    if not cand.any():
        return int(np.argmax(sticky)) + 1
    b, r = region_boxes(labels, n, origin), _reference_box(reference)
    if relation == "left of":
        ok = b["cx"] < r["cx"]
    elif relation == "right of":
        ok = b["cx"] > r["cx"]
    elif relation == "above":
        ok = b["cy"] < r["cy"]
    elif relation == "below":
        ok = b["cy"] > r["cy"]
    elif relation in ("behind", "in front of"):
        beside = np.abs(b["cx"] - r["cx"]) <= DEPTH_REACH * grid_hw[1]
        ok = beside & ((b["y1"] < r["y1"]) if relation == "behind" else (b["y1"] > r["y1"]))
    elif relation == "on":
        ok = (b["x1"] >= r["x0"]) & (b["x0"] <= r["x1"]) & (b["cy"] < r["cy"])
    elif relation == "next to":
        dist = np.hypot(b["cx"] - r["cx"], b["cy"] - r["cy"])
        ok = np.zeros(n, bool)
        ok[np.argmin(np.where(cand, dist, np.inf))] = True
    else:
        raise ValueError(f"unknown relation {relation!r}")
    ok &= cand
    return int(np.argmax(np.where(ok, sticky, -np.inf) if ok.any() else sticky)) + 1
