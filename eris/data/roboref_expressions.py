"""Referring expressions for RoboRef scenes: what a phrase picks, and its surface text.

Only objects the camera sees (enough visible pixels) can be referred to or get in the way. An
expression is kept when its strict reading picks the target and its relaxed reading picks no
other object (as in ShapeRef): "left of" strictly means clearly to the left in the image,
relaxed anything to the left at all; "the nearest" strictly needs a 20 % lead in distance.
Kinds: colour, category, colour+category, size, location (image left/right/middle), depth
(nearest/farthest from the camera), ordinal, relation (left of, right of, next to, behind,
in front of, on) and absent (the scene has no such object: the answer is an empty mask).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["generate_expression", "ROBOREF_KINDS", "NP_TEMPLATES", "WRAPPERS", "template_count"]

ROBOREF_KINDS = ("colour", "category", "colour+category", "size", "location", "depth", "ordinal", "relation",
                 "absent")
KIND_WEIGHTS = {"attribute": 0.25, "size": 0.1, "location": 0.15, "depth": 0.15, "ordinal": 0.1, "relation": 0.25}
X_GAP = 0.12          # image-x lead of an extreme (fraction of the width)
ORDINAL_GAP = 0.06
DEPTH_RATIO = 1.2     # nearest/farthest: distance lead
SIZE_RATIO = 1.5      # big/small, biggest/smallest: longest-dimension ratio (relaxed: 1.2)
NEXT_RATIO = 1.6      # next to: the nearest candidate beats the runner-up by this ratio
ORDINALS = {1: "first", 2: "second", 3: "third"}

# Noun-phrase patterns by kind ({d}: description, {ref}: reference description) ...
NP_TEMPLATES = {
    "attribute": ["the {d}", "a {d}", "that {d}", "the {d} on the table"],
    "size": ["the {s} {d}", "the {d} that is {s}", "a {s} {d}"],
    "location": ["the {d} {loc}", "the {d} that is {loc}", "the {sup} {d}"],
    "depth": ["the {d} {dep}", "the {dsup} {d}", "the {d} that is {dep}"],
    "ordinal": ["the {ord} {d} from the {dir}", "counting from the {dir}, the {ord} {d}"],
    "relation": ["the {d} {rel} the {ref}", "the {d} that is {rel} the {ref}", "the {d} which is {rel} the {ref}"],
}
# ... wrapped in imperative or question forms a robot builder would type.
WRAPPERS = ["{np}", "{np}", "pick up {np}", "grab {np}", "where is {np}", "find {np}", "segment {np}",
            "show me {np}", "point at {np}", "go to {np}", "look at {np}", "can you see {np}", "highlight {np}",
            "push {np}", "bring me {np}"]
LOCATION_WORDS = {"left": ["on the left", "at the left"], "right": ["on the right", "at the right"],
                  "middle": ["in the middle", "in the centre", "in the center"]}
LOCATION_SUP = {"left": ["leftmost"], "right": ["rightmost"]}
DEPTH_WORDS = {"near": ["closest to the camera", "closest to me", "nearest to me", "in front"],
               "far": ["farthest from the camera", "farthest from me", "at the back", "furthest away"]}
DEPTH_SUP = {"near": ["nearest", "closest"], "far": ["farthest", "furthest"]}
SIZE_WORDS = {"big": ["big", "large"], "small": ["small", "little"], "biggest": ["biggest", "largest"],
              "smallest": ["smallest"]}
RELATION_WORDS = {"left of": ["left of", "to the left of"], "right of": ["right of", "to the right of"],
                  "next to": ["next to", "beside"], "behind": ["behind"], "in front of": ["in front of"],
                  "on": ["on", "on top of"]}


def template_count() -> int:
    """Distinct phrase templates (noun-phrase patterns x wrappers)."""
    return sum(len(v) for v in NP_TEMPLATES.values()) * len(set(WRAPPERS))


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _matches(o, colour, category) -> bool:
    return (colour is None or o.colour == colour) and (category is None or o.category == category)


def _desc(rng, colour, category, generic_ok=True) -> str:
    from eris.data.roboref import CATEGORIES

    noun = _pick(rng, CATEGORIES[category][0]) if category else _pick(rng, ("object", "thing", "one"))
    return f"{colour} {noun}" if colour else noun


def _lead(values: dict[int, float], target: int, gap: float, ratio: bool = False) -> bool:
    """The target has the smallest value and every other is at least ``gap`` (or ``x gap``) larger."""
    t = values[target]
    others = [v for k, v in values.items() if k != target]
    if not others:
        return False
    return all((v >= t * gap) if ratio else (v >= t + gap) for v in others)


def _unique_desc(objs, i, rng):
    """A (colour, category) description picking object ``i`` alone among ``objs`` (dict idx->obj), or None."""
    o = objs[i]
    options = [(o.colour, o.category), (None, o.category), (o.colour, None)]
    rng.shuffle(options)
    for colour, cat in options:
        if [k for k, x in objs.items() if _matches(x, colour, cat)] == [i]:
            return colour, cat
    return None


def _propose(kind: str, objs: dict, t: int, rng, sure: dict):
    """``(phrase kind, np text)`` if an expression of ``kind`` clearly picks ``t``, else None.
    ``objs``: every object a person may see (the phrase must not fit another of them); ``sure``:
    those nobody can miss (a subset of ``objs``). An object in ``objs`` but not in ``sure`` (small,
    far or mostly hidden) is never a reference, and an ordinal is made only where counting it or
    not gives the same answer: whether a person counts a sliver of ring behind a mug is not known."""
    o = objs[t]
    level = int(rng.integers(3))
    colour = o.colour if level in (0, 2) else None
    cat = o.category if level in (0, 1) else None
    if kind != "attribute" and cat is None and rng.random() < 0.7:
        cat = o.category
    cand = {k: x for k, x in objs.items() if _matches(x, colour, cat)}
    d = _desc(rng, colour, cat)
    if kind == "attribute":
        if list(cand) != [t]:
            return None
        pk = "colour+category" if colour and cat else ("colour" if colour else "category")
        return pk, _pick(rng, NP_TEMPLATES["attribute"]).format(d=d)
    if len(cand) < 2:
        return None
    if kind == "size":
        big = rng.random() < 0.5
        vals = {k: (1 / x.size if big else x.size) for k, x in cand.items()}
        if not _lead(vals, t, SIZE_RATIO, ratio=True):
            return None
        word = ("big" if big else "small") if len(cand) == 2 and rng.random() < 0.5 else (
            "biggest" if big else "smallest")
        s = _pick(rng, SIZE_WORDS[word])
        if word in ("biggest", "smallest"):
            return "size", f"the {s} {d}"
        return "size", _pick(rng, NP_TEMPLATES["size"]).format(s=s, d=d)
    if kind == "location":
        side = _pick(rng, ["left", "right", "middle"])
        if side == "middle":
            if len(cand) < 3:
                return None
            vals = {k: abs(x.cx - 0.5) for k, x in cand.items()}
            if vals[t] > 0.15 or not _lead(vals, t, 0.15):
                return None
            return "location", _pick(rng, ["the {d} {loc}", "the {d} that is {loc}"]).format(
                d=d, loc=_pick(rng, LOCATION_WORDS["middle"]))
        vals = {k: (x.cx if side == "left" else -x.cx) for k, x in cand.items()}
        if not _lead(vals, t, X_GAP):
            return None
        return "location", _pick(rng, NP_TEMPLATES["location"]).format(
            d=d, loc=_pick(rng, LOCATION_WORDS[side]), sup=_pick(rng, LOCATION_SUP[side]))
    if kind == "depth":
        near = rng.random() < 0.5
        vals = {k: (x.depth if near else 1 / x.depth) for k, x in cand.items()}
        if not _lead(vals, t, DEPTH_RATIO, ratio=True):
            return None
        key = "near" if near else "far"
        return "depth", _pick(rng, NP_TEMPLATES["depth"]).format(
            d=d, dep=_pick(rng, DEPTH_WORDS[key]), dsup=_pick(rng, DEPTH_SUP[key]))
    if kind == "ordinal":
        side = _pick(rng, ["left", "right"])
        order = sorted(cand, key=lambda k: cand[k].cx if side == "left" else -cand[k].cx)
        pos = order.index(t)
        if pos > 2 or len(cand) < max(pos + 1, 2) or [k for k in order if k in sure].index(t) != pos:
            return None
        xs = [cand[k].cx for k in order]
        gaps = [abs(xs[j + 1] - xs[j]) for j in range(max(pos - 1, 0), min(pos + 1, len(xs) - 1))]
        if min(gaps) < ORDINAL_GAP:
            return None
        return "ordinal", _pick(rng, NP_TEMPLATES["ordinal"]).format(d=d, ord=ORDINALS[pos + 1], dir=side)
    if kind == "relation":
        rel = _pick(rng, list(RELATION_WORDS))
        if rel == "on":
            if o.on is None or o.on not in sure:
                return None
            refs = [o.on]
        else:
            refs = [k for k in sure if k != t]
            rng.shuffle(refs)
        for r in refs:
            found = _relation(rel, objs, cand, t, r, rng, d)
            if found is not None:
                return found
        return None
    raise ValueError(f"unknown kind {kind!r}")


def _relation(rel: str, objs: dict, cand: dict, t: int, r: int, rng, d: str):
    """A relation phrase "target rel ref" if it clearly picks ``t`` with ``r`` as the reference, else None."""
    o, ref = objs[t], objs[r]
    pool = {k: x for k, x in cand.items() if k != r}
    if rel == "on":
        picked = [k for k, x in pool.items() if x.on == r]
    elif rel in ("left of", "right of"):
        sign = 1 if rel == "left of" else -1
        if sign * (ref.cx - o.cx) < 0.08:
            return None
        picked = [k for k, x in pool.items() if sign * (ref.cx - x.cx) > 0]
    elif rel in ("behind", "in front of"):
        sign = 1 if rel == "behind" else -1
        if sign * (o.depth - ref.depth) < 0.05 or abs(o.cx - ref.cx) > 0.25:
            return None
        picked = [k for k, x in pool.items() if sign * (x.depth - ref.depth) > 0 and abs(x.cx - ref.cx) < 0.4]
    else:  # next to: the nearest in 3D by a clear ratio, and close
        def dist(k):
            return math.dist(pool[k].position, ref.position)
        order = sorted(pool, key=dist)
        if order[0] != t or dist(t) > 0.2 or (len(order) > 1 and dist(order[1]) < NEXT_RATIO * dist(t)):
            return None
        picked = [t]
    if picked != [t]:
        return None
    ref_desc = _unique_desc(objs, r, rng)
    if ref_desc is None:
        return None
    return "relation", _pick(rng, NP_TEMPLATES["relation"]).format(
        d=d, rel=_pick(rng, RELATION_WORDS[rel]), ref=_desc(rng, *ref_desc))


def _absent(objects, rng) -> str | None:
    """A noun phrase naming a (colour, category) that no object in the scene has (seen or not)."""
    from eris.data.roboref import CATEGORIES, COLOURS

    present = {(o.colour, o.category) for o in objects}
    cats_present = {o.category for o in objects}
    for _ in range(50):
        cat = _pick(rng, list(CATEGORIES))
        if rng.random() < 0.4 and cat not in cats_present:
            return f"the {_desc(rng, None, cat)}"
        colour = _pick(rng, list(COLOURS))
        if (colour, cat) not in present:
            return f"the {_desc(rng, colour, cat)}"
    return None


def kind_weights(overrides: dict[str, float] | None = None) -> dict[str, float]:
    """:data:`KIND_WEIGHTS` with ``overrides`` applied (training may draw hard kinds more often;
    val and test always use the defaults, so they stay comparable across runs)."""
    weights = dict(KIND_WEIGHTS)
    for kind, w in (overrides or {}).items():
        if kind not in weights:
            raise ValueError(f"unknown RoboRef phrase kind {kind!r}; choose from {', '.join(weights)}")
        if not (w >= 0 and np.isfinite(w)):
            raise ValueError(f"kind weight {kind}={w}: must be a non-negative number")
        weights[kind] = float(w)
    if sum(weights.values()) <= 0:
        raise ValueError("kind weights: at least one must be positive")
    return weights


def colour_weights(spec: str) -> dict[str, float]:
    """``"white=3,pink=2"`` -> ``{"white": 3.0, "pink": 2.0}``: training draws a target of a listed
    colour that many times as often as one of another colour. Why: on RoboRef val the shipped
    model found white targets far less often than others (45.5 mIoU against 84-93 for the other
    colours, README "Session 22"); white objects under the scene's light are greyish and often
    darker than a pale table."""
    from eris.data.roboref import COLOURS

    out = _name_numbers(spec, "colour")
    for colour, w in out.items():
        if colour not in COLOURS:
            raise ValueError(f"unknown RoboRef colour {colour!r}; choose from {', '.join(COLOURS)}")
        if not (w >= 0 and np.isfinite(w)):
            raise ValueError(f"colour weight {colour}={w}: must be a non-negative number")
    return out


def _name_numbers(spec: str, what: str) -> dict[str, float]:
    """``"a=0.3, b=2"`` -> ``{"a": 0.3, "b": 2.0}``; a part that is not NAME=NUMBER is a ValueError
    naming ``what`` ("kind", "colour")."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"{what} weights {spec!r}: {part!r} is not {what.upper()}=NUMBER")
    return out


def parse_kind_weights(spec: str) -> dict[str, float]:
    """``"location=0.3,ordinal=0.2"`` -> ``{"location": 0.3, "ordinal": 0.2}`` (checked by :func:`kind_weights`)."""
    out = _name_numbers(spec, "kind")
    kind_weights(out)
    return out


def generate_expression(objects, rng: np.random.Generator, absent: bool = False, attempts_per_kind: int = 25,
                        weights: dict[str, float] | None = None, colour_weights: dict[str, float] | None = None):
    """``(target index or None, phrase kind, phrase)``, or None when no expression is clearly unique.
    ``weights``: how often each proposal kind is tried first (default :data:`KIND_WEIGHTS`).
    ``colour_weights``: training only, how much likelier an object of that colour is drawn as the
    target (others 1; :func:`colour_weights`); None draws uniformly, as val and test do."""
    if absent:
        np_text = _absent(objects, rng)
        return None if np_text is None else (None, "absent", _pick(rng, WRAPPERS).format(np=np_text))
    from eris.data.roboref import MIN_PIXELS, MIN_SEEN_PIXELS, MIN_VISIBLE

    # Every object in view is a distractor; those showing MIN_PIXELS are surely seen (references,
    # counted by ordinals); only the clearly visible ones of those can be targets.
    seen = {i: o for i, o in enumerate(objects) if o.pixels >= MIN_SEEN_PIXELS}
    sure = {i: o for i, o in seen.items() if o.pixels >= MIN_PIXELS}
    targets = [i for i, o in sure.items() if o.visible >= MIN_VISIBLE]
    if not targets:
        return None
    weights = weights or KIND_WEIGHTS
    kinds = [k for k in weights if weights[k] > 0]
    w = np.array([weights[k] for k in kinds])
    tw = None
    if colour_weights:
        tw = np.array([colour_weights.get(seen[i].colour, 1.0) for i in targets], np.float64)
        tw = tw / tw.sum() if tw.sum() > 0 else None
    for k in rng.choice(len(kinds), size=len(kinds), replace=False, p=w / w.sum()):
        for _ in range(attempts_per_kind):
            t = targets[int(rng.integers(len(targets)) if tw is None else rng.choice(len(targets), p=tw))]
            found = _propose(kinds[k], seen, t, rng, sure)
            if found is not None:
                kind, np_text = found
                wrapper = "{np}" if np_text.startswith("counting") else _pick(rng, WRAPPERS)
                return t, kind, wrapper.format(np=np_text)
    return None
