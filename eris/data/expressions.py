"""Referring expressions for ShapeRef scenes: structured meaning, uniqueness check, surface text.

An :class:`Expression` is what a phrase means (kind, description, location, ...). The generator
keeps one only if it is *clearly* unique: the target satisfies the strict reading and no other
object satisfies a relaxed one (e.g. "left of" strictly means well to the left and mostly
level; relaxed, anything to the left within a wide cone), so borderline scenes a person could
read either way are never used. :func:`resolve` gives the objects a phrase's meaning picks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pi_runtime.phrases import mirror_phrase

__all__ = ["Expression", "phrase_kind", "PHRASE_KINDS", "resolve", "generate_expression", "realise", "flip_phrase", "TEMPLATES"]

GENERIC_NOUNS = ("object", "shape", "thing")
SIZE_RATIO = 1.5       # size words need this ratio of extents (linear size)
POSITION_GAP = 0.10    # extremes must lead the runner-up by this much (fraction of the canvas side)
ORDINAL_GAP = 0.06
LOCATION_WORDS = {
    "left": ["on the left", "at the left"], "right": ["on the right", "at the right"],
    "top": ["at the top", "on top"], "bottom": ["at the bottom", "on the bottom"],
    "middle": ["in the middle", "in the centre", "in the center"],
    "top left": ["in the top left corner", "at the top left"], "top right": ["in the top right corner", "at the top right"],
    "bottom left": ["in the bottom left corner", "at the bottom left"],
    "bottom right": ["in the bottom right corner", "at the bottom right"],
}
SUPERLATIVE_WORDS = {"leftmost": ["leftmost"], "rightmost": ["rightmost"], "topmost": ["topmost", "highest"],
                     "bottommost": ["bottommost", "lowest"], "biggest": ["biggest", "largest"], "smallest": ["smallest"]}
SIZE_WORDS = {"small": ["small", "tiny"], "big": ["big", "large"]}
ORDINAL_WORDS = {2: "second", 3: "third"}
RELATION_WORDS = {"left of": ["left of", "to the left of"], "right of": ["right of", "to the right of"],
                  "above": ["above"], "below": ["below", "under"], "next to": ["next to", "beside"]}
TEMPLATES = {
    "attribute": ["{desc}", "the {desc}", "a {desc}", "segment the {desc}", "find the {desc}", "show me the {desc}",
                  "select the {desc}", "the {desc} in the picture", "where is the {desc}", "mask the {desc}",
                  "highlight the {desc}", "pick out the {desc}"],
    "location": ["the {desc} {loc}", "{desc} {loc}", "the {desc} that is {loc}", "the {desc} which is {loc}",
                 "segment the {desc} {loc}", "find the {desc} that is {loc}"],
    "superlative": ["the {sup} {desc}", "{sup} {desc}", "find the {sup} {desc}", "segment the {sup} {desc}",
                    "the {desc} that is {sup}"],
    "ordinal": ["the {ord} {desc} from the {dir}", "{ord} {desc} from the {dir}",
                "segment the {ord} {desc} from the {dir}", "counting from the {dir}, the {ord} {desc}"],
    "relation": ["the {desc} {rel} the {ref}", "{desc} {rel} the {ref}", "the {desc} that is {rel} the {ref}",
                 "the {desc} which is {rel} the {ref}", "find the {desc} {rel} the {ref}",
                 "segment the {desc} {rel} the {ref}"],
}
KIND_WEIGHTS = {"attribute": 0.3, "location": 0.2, "superlative": 0.2, "ordinal": 0.1, "relation": 0.2}


@dataclass
class Expression:
    kind: str                      # attribute | location | superlative | ordinal | relation
    colour: str | None = None      # description of the target (None: any)
    shape: str | None = None
    size: str | None = None        # attribute: "small" | "big"
    location: str | None = None    # location: key of LOCATION_WORDS
    superlative: str | None = None
    ordinal: int | None = None     # ordinal: 2 | 3 ...
    direction: str | None = None   # ordinal: left | right | top | bottom
    relation: str | None = None
    ref_colour: str | None = None  # relation: the reference object's description (unique on its own)
    ref_shape: str | None = None


PHRASE_KINDS = ("colour", "shape", "colour+shape", "size", "location", "superlative", "ordinal", "relation")


def phrase_kind(expr: Expression) -> str:
    """The kind used in per-kind reports: attributes split by what they name (colour only, shape
    only, both, a size word), the other kinds as they are."""
    if expr.kind != "attribute":
        return expr.kind
    if expr.size:
        return "size"
    if expr.colour and expr.shape:
        return "colour+shape"
    return "colour" if expr.colour else "shape"


def _matches(obj, colour, shape) -> bool:
    return (colour is None or obj.colour == colour) and (shape is None or obj.shape == shape)


def _axis(obj, direction: str) -> float:
    """Position along a direction, larger = further that way."""
    return {"left": -obj.cx, "right": obj.cx, "top": -obj.cy, "bottom": obj.cy}[direction]


def _leader(values: list[float], gap: float) -> int | None:
    """Index of the largest value if it leads the runner-up by ``gap``, else None."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    if len(order) == 1 or values[order[0]] - values[order[1]] >= gap:
        return order[0]
    return None


def _geometry(a, b) -> tuple[float, float]:
    """(dx, dy) from b to a, in fractions of the canvas width and height (y grows downwards)."""
    return a.cx - b.cx, a.cy - b.cy


def _relation_holds(obj, ref, relation: str, relaxed: bool) -> bool:
    dx, dy = _geometry(obj, ref)
    if relation == "next to":
        return True  # decided by distance ranking in resolve
    along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    if relaxed:
        return along > 0 and abs(across) <= 1.6 * along
    return along >= 0.08 and abs(across) <= along


def resolve(expr: Expression, objects: list, relaxed: bool = False) -> list[int]:
    """Indices of the objects the expression picks (more than one = ambiguous, none = false)."""
    cand = [i for i, o in enumerate(objects) if _matches(o, expr.colour, expr.shape)]
    if expr.kind == "attribute":
        if expr.size is None or len(cand) < 2:
            return cand if expr.size is None else []
        extents = [objects[i].extent for i in cand]
        if expr.size == "small":
            extents = [-math.log(e) for e in extents]
        else:
            extents = [math.log(e) for e in extents]
        lead = _leader(extents, math.log(SIZE_RATIO))
        return cand if lead is None else [cand[lead]]
    if expr.kind in ("location", "superlative"):
        key = expr.location if expr.kind == "location" else expr.superlative
        key = {"leftmost": "left", "rightmost": "right", "topmost": "top", "bottommost": "bottom"}.get(key, key)
        if key in ("biggest", "smallest"):
            if len(cand) < 2:
                return []
            vals = [math.log(objects[i].extent) * (1 if key == "biggest" else -1) for i in cand]
            lead = _leader(vals, math.log(SIZE_RATIO))
            return cand if lead is None else [cand[lead]]
        if key in ("left", "right", "top", "bottom"):
            if expr.kind == "superlative" and len(cand) < 2:
                return []
            lead = _leader([_axis(objects[i], key) for i in cand], POSITION_GAP) if cand else None
            if lead is None:
                return cand
            # "on the left" also needs the object to be in that half of the picture
            if expr.kind == "location" and _axis(objects[cand[lead]], key) < (-0.5 if key in ("left", "top") else 0.5):
                return []
            return [cand[lead]]
        if key == "middle":
            inside = [i for i in cand if abs(objects[i].cx - 0.5) < (0.3 if relaxed else 0.2)
                      and abs(objects[i].cy - 0.5) < (0.3 if relaxed else 0.2)]
            return inside
        vert, horiz = key.split()
        lim = 0.45 if relaxed else 1 / 3
        return [i for i in cand
                if (objects[i].cy < lim if vert == "top" else objects[i].cy > 1 - lim)
                and (objects[i].cx < lim if horiz == "left" else objects[i].cx > 1 - lim)]
    if expr.kind == "ordinal":
        k = expr.ordinal
        if len(cand) < k:
            return []
        pos = sorted(((_axis(objects[i], expr.direction), i) for i in cand), reverse=True)
        gaps = [pos[j][0] - pos[j + 1][0] for j in range(min(k, len(pos) - 1))]
        if any(g < ORDINAL_GAP for g in gaps):
            return [i for _, i in pos]  # ambiguous ordering
        return [pos[k - 1][1]]
    if expr.kind == "relation":
        refs = [i for i, o in enumerate(objects) if _matches(o, expr.ref_colour, expr.ref_shape)]
        if len(refs) != 1:
            return []  # a reference that is missing or not unique makes the phrase meaningless
        ref = objects[refs[0]]
        cand = [i for i in cand if i != refs[0]]
        if expr.relation == "next to":
            if not cand:
                return []
            dist = sorted((math.hypot(*_geometry(objects[i], ref)), i) for i in cand)
            if dist[0][0] > 0.4:
                return []
            if len(dist) > 1 and dist[1][0] < dist[0][0] * (1.3 if relaxed else 1.6):
                return [i for _, i in dist]
            return [dist[0][1]]
        return [i for i in cand if _relation_holds(objects[i], ref, expr.relation, relaxed)]
    raise ValueError(f"unknown expression kind {expr.kind!r}")


def is_clearly_unique(expr: Expression, objects: list, target: int) -> bool:
    return resolve(expr, objects) == [target] and resolve(expr, objects, relaxed=True) == [target]


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _description(rng: np.random.Generator, colour, shape, size=None) -> str:
    words = []
    if size:
        words.append(_pick(rng, SIZE_WORDS[size]))
    if colour:
        words.append(colour)
    words.append(shape if shape else _pick(rng, GENERIC_NOUNS))
    return " ".join(words)


def realise(expr: Expression, rng: np.random.Generator) -> str:
    """Surface text for an expression, with a random template and synonyms."""
    desc = _description(rng, expr.colour, expr.shape, expr.size)
    template = _pick(rng, TEMPLATES[expr.kind])
    fields = {"desc": desc}
    if expr.kind == "location":
        fields["loc"] = _pick(rng, LOCATION_WORDS[expr.location])
    elif expr.kind == "superlative":
        fields["sup"] = _pick(rng, SUPERLATIVE_WORDS[expr.superlative])
    elif expr.kind == "ordinal":
        fields["ord"], fields["dir"] = ORDINAL_WORDS[expr.ordinal], expr.direction
    elif expr.kind == "relation":
        fields["rel"] = _pick(rng, RELATION_WORDS[expr.relation])
        fields["ref"] = _description(rng, expr.ref_colour, expr.ref_shape)
    return template.format(**fields)


def _propose(rng: np.random.Generator, objects: list, target: int, kind: str) -> Expression:
    obj = objects[target]
    level = rng.integers(4)  # how much of the description to say
    colour = obj.colour if level in (0, 1) else None
    shape = obj.shape if level in (0, 2) else None
    if kind == "attribute":
        size = _pick(rng, ["small", "big"]) if rng.random() < 0.3 else None
        if size is None and level == 3:
            colour, shape = obj.colour, obj.shape
        return Expression("attribute", colour, shape, size=size)
    if kind == "location":
        return Expression("location", colour, shape, location=_pick(rng, list(LOCATION_WORDS)))
    if kind == "superlative":
        return Expression("superlative", colour, shape, superlative=_pick(rng, list(SUPERLATIVE_WORDS)))
    if kind == "ordinal":
        return Expression("ordinal", colour, shape, ordinal=int(_pick(rng, [2, 3])),
                          direction=_pick(rng, ["left", "right", "top", "bottom"]))
    others = [i for i in range(len(objects)) if i != target]
    ref = objects[_pick(rng, others)] if others else obj
    return Expression("relation", colour, shape, relation=_pick(rng, list(RELATION_WORDS)),
                      ref_colour=ref.colour, ref_shape=ref.shape)


def generate_expression(objects: list, rng: np.random.Generator, attempts_per_kind: int = 30):
    """``(target, expression, phrase)`` for a clearly unique expression, or None.

    The kind is drawn by ``KIND_WEIGHTS`` and tried with random targets before falling back to
    the next kind, so hard kinds (ordinals, relations) are not crowded out by easy attributes.
    """
    if not objects:
        return None
    kinds = list(KIND_WEIGHTS)
    weights = np.array([KIND_WEIGHTS[k] for k in kinds])
    for k in rng.choice(len(kinds), size=len(kinds), replace=False, p=weights / weights.sum()):
        for _ in range(attempts_per_kind):
            target = int(rng.integers(len(objects)))
            expr = _propose(rng, objects, target, kinds[k])
            if is_clearly_unique(expr, objects, target):
                return target, expr, realise(expr, rng)
    return None


# The phrase for the mirrored image (left and right swap): one rule, shared with the runtime's
# --flip-average, which must rewrite phrases exactly as training's flip augmentation did.
flip_phrase = mirror_phrase
