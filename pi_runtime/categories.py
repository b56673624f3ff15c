"""The category check: which kind of object is each candidate region? (optional bundle part)

Why a second, small model: after eight CPU training sessions the ERIS student reads colours well
and categories badly (RoboRef val: colour 84 mIoU, category 34). Of its wrong answers on val
with the target present, about half (170 of 322) are an object of another category, and most
absent-target phrases ("the red ball" where there is only a red cube) come back found on an
object of the named colour. Telling a duck from a mug in a 64x64 crop is a far smaller task than
referring segmentation, and a small CNN learns it from rendered objects in minutes of CPU time
(``python -m eris.category_check``).

When the phrase names a category (:func:`phrase_category`; for a relation, the target's own
words), the runtime crops each candidate region the model marked (:func:`crop_input`: a square
around the region with the region's cells as a fourth channel), asks the classifier how likely
each one is of that category, and weighs the region's score by it (:class:`CategoryCheck`). The
where-words and relations then choose among the weighed candidates as before; a phrase whose
best candidate is unlikely to be of its category comes back ``found: false``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

__all__ = ["CROP", "MARGIN", "MAX_ASKED", "noun_match", "phrase_category", "crop_box", "crop_input", "asked_regions", "region_cells",
           "CategoryCheck"]

CROP = 64          # classifier input side, pixels
MARGIN = 0.25      # the square crop reaches this share of the region's longer side beyond it
MIN_SIDE = 12.0    # pixels: a crop never zooms in further than this
MAX_ASKED = 12     # at most this many candidates a frame (the surest), bounding the check's cost.
                   # With the generic pass RoboRef val frames have 2 regions at the median, 9 at the
                   # 90th percentile, 11 at the 95th; a region not asked counts as of the category, so
                   # 8 let absent phrases through (README, "Session 19": 12 against 8)


# Nouns that are also common verbs in requests: the verb use is not the noun. "can you see the
# domino" names a domino, not a can (the RoboRef template "can you see {np}" made every such phrase
# ask the check for a cylinder, and most came back not found).
_NOT_THE_NOUN = {"can": r"(?!\s*(?:'|\u2019)?\s*t\b|\s+(?:you|u|i|we|they|he|she|it|one|not|someone|anyone)\b)"}


@lru_cache(maxsize=256)
def _noun_pattern(nouns: tuple[str, ...]):
    # Longest first, so "teddy bear" wins over "teddy" and "lego brick" over "lego".
    alternatives = "|".join(re.escape(n) + _NOT_THE_NOUN.get(n, "") for n in sorted(nouns, key=len, reverse=True))
    return re.compile(rf"\b({alternatives})s?\b", re.IGNORECASE)


def noun_match(text: str, nouns: tuple[str, ...]) -> re.Match | None:
    """Where the first of ``nouns`` (or its plural) stands in ``text``, as a match, or None."""
    return _noun_pattern(nouns).search(text)


def phrase_category(text: str, nouns: dict[str, list[str]]) -> str | None:
    """The first category noun of ``text`` among ``nouns`` (noun -> classes), or None."""
    m = noun_match(text, tuple(nouns))
    return m.group(1).lower() if m else None


def crop_box(cells: np.ndarray, cell_hw: tuple[float, float], jitter=(0.0, 0.0, 1.0)) -> tuple[float, ...]:
    """The square crop ``(x0, y0, x1, y1)`` in image pixels around the True cells of ``cells``
    (a stride-grid bool map whose cell is ``cell_hw`` pixels); ``jitter`` = (shift x, shift y
    as shares of the side, side factor), for training's augmentation."""
    rows, cols = np.nonzero(cells.any(axis=1))[0], np.nonzero(cells.any(axis=0))[0]
    ch, cw = cell_hw
    y0, y1, x0, x1 = rows[0] * ch, (rows[-1] + 1) * ch, cols[0] * cw, (cols[-1] + 1) * cw
    side = max(max(y1 - y0, x1 - x0) * (1 + 2 * MARGIN), MIN_SIDE) * jitter[2]
    cx, cy = (x0 + x1) / 2 + jitter[0] * side, (y0 + y1) / 2 + jitter[1] * side
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def crop_input(image: np.ndarray, cells: np.ndarray, cell_hw: tuple[float, float], jitter=(0.0, 0.0, 1.0)) -> np.ndarray:
    """The classifier's input for one region: ``4 x CROP x CROP`` float32 in 0..255, RGB of the
    square crop (zeros outside the image) and the region's cells as the fourth channel (255 in)."""
    x0, y0, x1, y1 = crop_box(cells, cell_hw, jitter)
    rgb = Image.fromarray(image).transform((CROP, CROP), Image.EXTENT, (x0, y0, x1, y1), Image.BILINEAR)
    ch, cw = cell_hw
    grid = Image.fromarray(cells.astype(np.float32) * 255.0, mode="F")
    mask = grid.transform((CROP, CROP), Image.EXTENT, (x0 / cw, y0 / ch, x1 / cw, y1 / ch), Image.NEAREST)
    out = np.empty((4, CROP, CROP), np.float32)
    out[:3] = np.asarray(rgb, np.float32).transpose(2, 0, 1)
    out[3] = np.asarray(mask, np.float32)
    return out


def asked_regions(scores: np.ndarray, share: float) -> np.ndarray:
    """Indices of the regions the check asks about: those scoring at least ``share`` x the best,
    the :data:`MAX_ASKED` surest first."""
    ask = np.nonzero(scores >= share * scores.max())[0]
    return ask[np.argsort(-scores[ask], kind="stable")[:MAX_ASKED]]


def region_cells(labels: np.ndarray, i: int, origin) -> np.ndarray:
    """Region ``i`` (0-based) of ``labels`` (whose top-left cell is ``origin`` on the grid) as a
    bool map of the grid from its top-left corner, as :func:`crop_input` takes it."""
    cells = np.zeros((labels.shape[0] + origin[0], labels.shape[1] + origin[1]), bool)
    cells[origin[0]:, origin[1]:] = labels == i + 1
    return cells


@dataclass
class CategoryCheck:
    """The bundle's crop classifier and how the runtime uses it (manifest ``category_check``):
    ``classes`` it tells apart, ``nouns`` (a phrase's noun -> the classes it names), and the rule:
    a candidate region (score >= ``share`` x the best; the :data:`MAX_ASKED` surest) has its score multiplied by
    p(category) ** ``power``, or ** ``pick_power`` when a where-word or relation then chooses
    among the candidates (they need every candidate of the category kept, not only the surest);
    the phrase is found only if the chosen region's p >= ``found_min``. When a where-word or
    relation chooses and some asked region passes ``found_min``, the asked regions that do not
    are dropped first: "the leftmost duck" is the leftmost of the ducks, not a mug further left
    that the found decision would then reject (README, "Session 18")."""
    session: object
    classes: list[str]
    nouns: dict[str, list[str]]
    share: float = 0.1
    power: float = 1.0
    found_min: float = 0.0
    pick_power: float | None = None   # None: ``power``

    def probabilities(self, crops: list[np.ndarray], noun: str) -> np.ndarray:
        """p(the noun's category) for each crop (:func:`crop_input`): one classifier run."""
        if not crops:
            return np.zeros(0)
        logits = self.session.run(None, {"crops": np.stack(crops)})[0].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        idx = [self.classes.index(c) for c in self.nouns[noun]]
        return p[:, idx].sum(axis=1)

    def weigh(self, image: np.ndarray, noun: str, labels: np.ndarray, scores: np.ndarray, origin, cell_hw,
              picking: bool = False, memo: dict | None = None):
        """``(new scores, p per region)``: candidates weighed by p(noun); regions under ``share``
        of the best keep their score (they are not asked; p = nan). ``picking``: a where-word or
        relation chooses next (``pick_power``). ``memo``: one frame's p by region (its cells), so
        that weighing the same frame's regions again after a split asks the classifier only about
        the new parts."""
        p = np.full(len(scores), np.nan)
        if len(scores) == 0:
            return scores, p
        memo = {} if memo is None else memo
        ask = asked_regions(scores, self.share)
        cells = {int(i): region_cells(labels, i, origin) for i in ask}
        keys = {i: (c.shape, np.packbits(c).tobytes()) for i, c in cells.items()}
        new = [i for i in cells if keys[i] not in memo]
        for i, q in zip(new, self.probabilities([crop_input(image, cells[i], cell_hw) for i in new], noun)):
            memo[keys[i]] = float(q)
        for i in cells:
            p[i] = memo[keys[i]]
        out = scores.astype(np.float64).copy()
        power = self.pick_power if picking and self.pick_power is not None else self.power
        out[ask] = scores[ask] * p[ask] ** power
        if picking:
            unlikely = ask[p[ask] < self.found_min]
            if len(unlikely) < len(ask):   # some candidate is likely enough: choose among those
                out[unlikely] = 0.0
        return out, p
