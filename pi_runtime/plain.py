"""The plain description: a phrase without the words that say *which one*.

"the second mug from the left", "the duck farthest from me", "the biggest ball" and "the cube
left of the duck" name an object by its kind and colour *and* single it out by place, depth, size
or a relation. The shipped model is sure of plain descriptions ("the mug": RoboRef val colour 83,
colour + category 79 mIoU) and unsure of the singling-out words: on about one such phrase in five
it marks no object of the kind at all, and then no choosing among its candidates can help
(README, "Session 18"). So the runtime also asks the model for the plain description ("the mug",
"the duck", "the ball"; for a relation, the target's own words) and keeps, cell by cell, the
larger of the two logits: the full phrase's own choice stays, and the objects it missed become
candidates for the where-word, relation or category check to choose among
(:meth:`pi_runtime.segmenter.Segmenter._result`). One more run of the image graph, on these
phrases only.

:func:`plain_description` removes ordinals ("second ... from the left", "counting from the
right,"), places ("leftmost", "on the right", "in the middle", "at the top", "top left"), depth
words ("nearest", "farthest from the camera", "in front", "at the back") and size words
("biggest", "small", "tiny"), then a "that is" / "which is" left dangling.

The generic description goes one step further where the bundle has a category check: the plain
description with its category noun made "thing" ("the white duck" -> "the white thing", "the
leftmost mug" -> "the thing"). The model reads colours far better than categories, so "the white
thing" marks the white duck where "the white duck" often marks nothing or another object; the
category check (:mod:`pi_runtime.categories`) then tells the duck among the things. Where a
phrase has one, it is run instead of the plain description (:func:`generic_description`;
README, "Session 19").
"""

from __future__ import annotations

import re
from functools import lru_cache

from pi_runtime.categories import noun_match
from pi_runtime.relations import parse_relation
from pi_runtime.spatial import DEPTH_WORDS, ORDINALS, SIZE_WORDS, any_word

__all__ = ["plain_description", "generic_description", "GENERIC_NOUN"]

GENERIC_NOUN = "thing"   # RoboRef's own word for an object of any kind ("the yellow thing")

_WHICH_ONE = [re.compile(p, re.IGNORECASE) for p in (
    r"\bcounting from the (?:left|right|top|bottom),?",
    r"\bfrom the (?:left|right|top|bottom)\b",
    rf"\b{any_word(ORDINALS)}\b",
    r"\b(?:(?:in|at|on) the )?(?:top|upper|bottom|lower) (?:left|right)(?: corner)?\b",
    r"\b(?:on|at|to|in) the (?:far )?(?:left|right|top|bottom)(?: side)?\b",
    r"\b(?:on|at) top\b",
    r"\b(?:leftmost|rightmost|topmost|bottommost|highest|lowest)\b",
    r"\b(?:in the )?(?:middle|centre|center)\b",
    rf"\b{any_word(DEPTH_WORDS['near'] + DEPTH_WORDS['far'])}(?: (?:to|from) (?:the camera|me|us|the robot))?"
    r"(?: away)?\b",
    r"\bin (?:the )?front\b",
    r"\bat the back\b",
    rf"\b{any_word(SIZE_WORDS['big'] + SIZE_WORDS['small'])}\b",
)]
_NO_DESCRIPTION = {"the", "a", "an", "one", "that", "which", "is"}   # what is left of "the leftmost one"
_DANGLING = re.compile(r"(?:\b(?:that|which)(?: is| are|'s)?|\bis|,)\s*$", re.IGNORECASE)


def _strip(text: str) -> str:
    for pattern in _WHICH_ONE:
        text = pattern.sub(" ", text)
    text = " ".join(text.split())
    text = _DANGLING.sub("", text).strip()
    return " ".join(text.lstrip(", ").split())


@lru_cache(maxsize=64)
def plain_description(phrase: str) -> str | None:
    """``phrase`` without its which-one words (for a relation, the target's words without
    them), or None when that leaves the phrase as it was or without a word. Cached: live mode
    asks for the same phrase on every frame."""
    relation = parse_relation(phrase)
    plain = _strip(relation.target if relation is not None else phrase)
    if set(plain.lower().split()) <= _NO_DESCRIPTION or plain == " ".join(phrase.split()):
        return None
    return plain


def generic_description(phrase: str, nouns) -> str | None:
    """The plain description of ``phrase`` (the phrase itself where it has none) with its first
    category noun among ``nouns`` replaced by :data:`GENERIC_NOUN`, or None when it names no
    category: "the second white mug from the left" -> "the white thing"."""
    text = plain_description(phrase) or " ".join(phrase.split())
    m = noun_match(text, tuple(nouns))
    if m is None:
        return None
    return text[:m.start()] + GENERIC_NOUN + text[m.end():]
