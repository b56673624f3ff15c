"""Where-words: pick among the model's candidate regions by where they lie in the frame.

The shipped model marks *every* candidate of a phrase like "the mug on the left" (all mugs light
up, the named one hardly brighter), and eight sessions of CPU training have not taught it to
single one out by position (README, sessions 7-14). The phrase says how to choose, though, and
that choice is geometry the runtime can do exactly: :func:`parse_selector` reads a where-word
from the phrase ("leftmost", "on the right", "second from the left", "in the middle", "at the
top", "in the bottom left corner", ...) and :func:`select_region` orders the candidate regions
by it.

Only a phrase that picks its object by its own place in the frame gets a selector. A relation
names another object ("the cube left of the duck", "the ball next to the mug", "the cube on the
domino"), whose place the grid alone cannot give, so such phrases get none here
(:mod:`pi_runtime.relations` chooses for them), and phrases without a where-word keep the model's
own choice (:func:`pi_runtime.regions.best_region`). Depth words ("nearest", "farthest from the
camera", "at the back") order the candidates by how low they reach in the frame, size words
("biggest", "small") by their apparent size over how far below the horizon they stand
(:data:`SIZE_HORIZON`). Both were measured worse than the model's own choice while the
candidates were the full phrase's alone (README, sessions 15 and 17): the model often marks no
object of the kind at all for such a phrase. With the plain description's candidates added
(:mod:`pi_runtime.plain`) they are better (README, "Session 18").

Candidates are the 8-connected regions of the stride-4 logit grid over the mask threshold whose
score (:func:`pi_runtime.regions.region_scores`) is at least a share of the best one's, so that a
faint blob the model hardly means does not count: :data:`CANDIDATE_SHARE` for depth and size
words, :data:`PLACE_SHARE` for places and ordinals, where one object of the kind left out of the
count moves the pick to another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pi_runtime.regions import region_boxes

__all__ = ["Selector", "parse_selector", "select_region", "CANDIDATE_SHARE", "PLACE_SHARE"]

# A region is a candidate when its score is at least this share of the best region's. Chosen among
# 0, 0.1, 0.25, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8 on the first 400 scenes of each val set and
# confirmed on the other 600 and on RoboRef test (README, "Session 15: where-words and
# relations").
CANDIDATE_SHARE = 0.5
# ... and for a place in the frame or an ordinal ("leftmost", "second from the right", "in the
# middle"): with the generic pass (pi_runtime.plain) and the category check, the objects of the
# named kind are candidates more often, some of them faint. Chosen among 0.5, 0.35, 0.25, 0.2 on
# RoboRef val's location and ordinal phrases and confirmed on RoboRef test and ShapeRef val
# (README, "Session 20"); depth and size words were better at 0.5.
PLACE_SHARE = 0.25
# Size words name the object's own size, not how big it looks: a near can looks bigger than a far
# one twice its size. On a camera looking down at a table an object's scale in the frame grows
# linearly with how far below the horizon it stands, so "size" divides the region's apparent size
# (square root of its share of the frame) by (its lowest row - SIZE_HORIZON), rows as fractions of
# the frame's height from the top. The horizon's row depends on the camera's pitch and field of view,
# which the runtime does not know; SIZE_HORIZON is one row for all frames (-inf: apparent size).
SIZE_HORIZON = -0.5
# Live mode: the last frame's object stays picked while its place (a fraction of the frame's
# side) is within this of the picked one's (README, "Session 15: where-words and relations").
HYSTERESIS = 0.05

ORDINALS = {"first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2, "fourth": 3, "4th": 3}
# The ordinal (above), depth and size words, shared with pi_runtime.plain, which drops them from a phrase.
DEPTH_WORDS = {"near": ("nearest", "closest"), "far": ("farthest", "furthest")}
SIZE_WORDS = {"big": ("biggest", "largest", "big", "large"), "small": ("smallest", "small", "little", "tiny")}


def any_word(words) -> str:
    """A non-capturing regex alternative of ``words``."""
    return "(?:" + "|".join(re.escape(w) for w in words) + ")"


# A relation points at another object: no selector. "on the left/right/top/bottom" and "on the
# table" are places; "on the domino" / "on top of the box" are relations.
_RELATION = re.compile(
    r"\b(?:left|right) of\b|\bnext to\b|\bbeside\b|\bbehind\b|\bin front of\b|\babove\b|\bbelow\b|\bunder\b"
    r"|\bbetween\b|\bnear (?:the|a|an)\b|\bon top of\b"
    r"|\bon (?:the|a|an) (?!(?:left|right|top|bottom|table|floor)\b)")
_ORDINAL = re.compile(r"\b(first|second|third|fourth|1st|2nd|3rd|4th)\b.*?\bfrom the (left|right|top|bottom)\b"
                      r"|\bfrom the (left|right|top|bottom)\b.*?\b(first|second|third|fourth|1st|2nd|3rd|4th)\b")
# (pattern, key, descending?) in the order they are tried: corners before sides.
_PLACES = [
    (r"\b(?:top|upper) left\b", "top left", False), (r"\b(?:top|upper) right\b", "top right", False),
    (r"\b(?:bottom|lower) left\b", "bottom left", False), (r"\b(?:bottom|lower) right\b", "bottom right", False),
    (r"\bleftmost\b|\b(?:on|at|to) the left\b", "x", False),
    (r"\brightmost\b|\b(?:on|at|to) the right\b", "x", True),
    (r"\btopmost\b|\bhighest\b|\b(?:at|on) (?:the )?top\b", "y", False),
    (r"\bbottommost\b|\blowest\b|\b(?:at|on) the bottom\b", "y", True),
    (r"\b(?:in the )?(?:middle|centre|center)\b", "centre", False),
]
_PLACES = [(re.compile(p), key, desc) for p, key, desc in _PLACES]
# Depth and size words, tried after the places (README, "Session 18"). On a camera looking down at
# a table the nearer object reaches lower in the frame: "nearest" keeps the candidate whose lowest
# row is lowest. "closest to the duck" names another object, not the camera: no selector.
_DEPTH_SIZE = [
    (rf"\b{any_word(DEPTH_WORDS['near'])} to (?:the|a|an) (?!camera\b)", None, False),
    (rf"\b{any_word(DEPTH_WORDS['near'])}\b|\bin front\b", "bottom", True),
    (rf"\b{any_word(DEPTH_WORDS['far'])}\b|\bat the back\b", "bottom", False),
    (rf"\b{any_word(SIZE_WORDS['big'])}\b", "size", True),
    (rf"\b{any_word(SIZE_WORDS['small'])}\b", "size", False),
]
_DEPTH_SIZE = [(re.compile(p), key, desc) for p, key, desc in _DEPTH_SIZE]


@dataclass(frozen=True)
class Selector:
    """Order candidates by ``key`` (``descending`` or not) and take the one at ``rank`` (0: first).
    Keys: ``x``, ``y`` (the region's centre, 0 at the left / top), ``centre`` (distance from the
    frame's centre), the corners ``top left`` ... ``bottom right`` (distance from the corner),
    ``bottom`` (the region's lowest row: depth words) and ``size`` (the square root of its share of
    the frame over its lowest row's distance below :data:`SIZE_HORIZON`, 0.5-1.5 of the frame's
    height, so that live mode's hysteresis stays about a share of the frame's side for it too)."""
    key: str
    descending: bool = False
    rank: int = 0

    @property
    def share(self) -> float:
        """The candidates' least score, a share of the best (:data:`PLACE_SHARE` for a place or an
        ordinal, :data:`CANDIDATE_SHARE` for depth and size words)."""
        return CANDIDATE_SHARE if self.key in ("bottom", "size") else PLACE_SHARE

    def pick(self, labels: np.ndarray, scores: np.ndarray, origin: tuple[int, int], grid_hw: tuple[int, int],
             preferred: np.ndarray | None = None, bonus: float = 1.0) -> int:
        """:func:`select_region` in the form :func:`pi_runtime.regions.best_region` takes as
        ``pick`` (live mode's memory works through ``preferred`` and the hysteresis, not ``bonus``)."""
        return select_region(labels, scores, self, grid_hw, origin=origin, preferred=preferred)


@lru_cache(maxsize=64)
def parse_selector(phrase: str) -> Selector | None:
    """The where-word of ``phrase`` as a :class:`Selector`, or None (no where-word, or a relation
    to another object). Cached: live mode asks for the same phrase on every frame."""
    text = phrase.lower()
    if _RELATION.search(text):
        return None
    m = _ORDINAL.search(text)
    if m:
        word, side = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        axis = "x" if side in ("left", "right") else "y"
        return Selector(axis, side in ("right", "bottom"), ORDINALS[word])
    for pattern, key, desc in _PLACES + _DEPTH_SIZE:
        if pattern.search(text):
            return None if key is None else Selector(key, desc)
    return None


def _geometry(labels: np.ndarray, n: int, grid_hw: tuple[int, int], origin: tuple[int, int] = (0, 0)
              ) -> dict[str, np.ndarray]:
    """Per-region keys (index 0 = region 1), positions as fractions of the whole grid's sides;
    ``labels`` covers the part of the grid whose top-left cell is ``origin``."""
    h, w = grid_hw
    boxes = region_boxes(labels, n, origin)
    cx, cy = boxes["cx"] / w, boxes["cy"] / h
    cells = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keys = {"x": cx, "y": cy, "centre": np.hypot(cx - 0.5, cy - 0.5), "bottom": boxes["y1"] / h,
            "size": np.sqrt(cells / (h * w)) / (np.maximum(boxes["y1"] / h - SIZE_HORIZON, 1e-3)
                                                if np.isfinite(SIZE_HORIZON) else 1.0)}
    for corner in ("top left", "top right", "bottom left", "bottom right"):
        vert, horiz = corner.split()
        keys[corner] = np.hypot(cx - (0.0 if horiz == "left" else 1.0), cy - (0.0 if vert == "top" else 1.0))
    return keys


def select_region(labels: np.ndarray, scores: np.ndarray, selector: Selector, grid_hw: tuple[int, int],
                  share: float | None = None, origin: tuple[int, int] = (0, 0),
                  preferred: np.ndarray | None = None) -> int:
    """The label (1..n) of the region ``selector`` picks among ``labels``' regions whose score is at
    least ``share`` (default ``selector.share``) x the best; the best-scoring region when the
    rank is past the candidates.
    ``labels``: int map of region labels (0 = none, n = ``len(scores)``) over the part of a
    ``grid_hw`` grid whose top-left cell is ``origin`` (:func:`pi_runtime.regions.region_scores`).
    ``preferred`` (live mode: the regions touching the last frame's kept one): a preferred
    candidate within :data:`HYSTERESIS` of the picked one's place is kept instead, so two
    objects about equally far left do not swap from frame to frame."""
    n = len(scores)
    best = int(np.argmax(scores))
    cand = np.nonzero(scores >= (selector.share if share is None else share) * scores[best])[0]
    if selector.rank >= len(cand):
        return best + 1
    values = _geometry(labels, n, grid_hw, origin)[selector.key][cand]
    order = np.argsort(-values if selector.descending else values, kind="stable")
    chosen = order[selector.rank]
    if preferred is not None:
        near = preferred[cand] & (np.abs(values - values[chosen]) < HYSTERESIS)
        if near.any() and not near[chosen]:
            chosen = int(np.nonzero(near)[0][np.argmin(np.abs(values - values[chosen])[near])])
    return int(cand[chosen]) + 1
