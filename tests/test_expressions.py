"""eris.data.expressions: meanings on crafted scenes, ambiguity rejection, left/right flips."""

import pytest

from eris.data.expressions import Expression, flip_phrase, is_clearly_unique, resolve
from eris.data.shapes import SceneObject


def obj(shape, colour, cx, cy, size=0.1):
    return SceneObject(shape=shape, colour=colour, rgb=(0, 0, 0), cx=cx, cy=cy, size=size, rotation=0,
                       extent=size * 0.8)


SCENE = [obj("circle", "red", 0.1, 0.5), obj("circle", "blue", 0.5, 0.5), obj("circle", "red", 0.9, 0.5),
         obj("star", "green", 0.5, 0.15, size=0.25), obj("square", "red", 0.9, 0.75)]


@pytest.mark.parametrize("expr,want", [
    (Expression("attribute", "blue", "circle"), [1]),
    (Expression("attribute", "red", "circle"), [0, 2]),                      # ambiguous
    (Expression("superlative", None, "circle", superlative="leftmost"), [0]),
    (Expression("superlative", None, "circle", superlative="rightmost"), [2]),
    (Expression("superlative", None, None, superlative="biggest"), [3]),
    (Expression("location", "red", "circle", location="left"), [0]),
    (Expression("location", None, "square", location="bottom right"), [4]),
    (Expression("ordinal", None, "circle", ordinal=2, direction="left"), [1]),
    (Expression("ordinal", None, "circle", ordinal=3, direction="right"), [0]),
    (Expression("relation", None, "star", relation="above", ref_colour="blue", ref_shape="circle"), [3]),
    (Expression("relation", None, "circle", relation="left of", ref_colour="blue", ref_shape="circle"), [0]),
    (Expression("relation", None, "circle", relation="next to", ref_colour="red", ref_shape="square"), [2]),
])
def test_resolve_on_a_crafted_scene(expr, want):
    assert sorted(resolve(expr, SCENE)) == want


def test_unclear_scenes_are_rejected():
    # two circles nearly level: "leftmost" is not clear, whichever is the target
    close = [obj("circle", "red", 0.40, 0.5), obj("circle", "blue", 0.45, 0.5)]
    assert not is_clearly_unique(Expression("superlative", None, "circle", superlative="leftmost"), close, 0)
    # a reference that is not unique makes a relation meaningless
    twins = [obj("star", "red", 0.2, 0.5), obj("circle", "blue", 0.5, 0.5), obj("circle", "blue", 0.8, 0.2)]
    assert resolve(Expression("relation", None, "star", relation="left of", ref_colour="blue",
                              ref_shape="circle"), twins) == []
    # a diagonal neighbour is neither clearly "left of" nor clearly not
    diag = [obj("star", "red", 0.3, 0.3), obj("circle", "blue", 0.5, 0.5), obj("star", "red", 0.2, 0.52)]
    e = Expression("relation", None, "star", relation="left of", ref_colour="blue", ref_shape="circle")
    assert not is_clearly_unique(e, diag, 2)


def test_size_words_need_a_clear_ratio():
    a, b = obj("circle", "red", 0.2, 0.5, size=0.2), obj("circle", "red", 0.7, 0.5, size=0.15)
    assert resolve(Expression("attribute", "red", "circle", size="big"), [a, b]) == [0, 1]
    b.extent = a.extent / 1.6
    assert resolve(Expression("attribute", "red", "circle", size="big"), [a, b]) == [0]
    assert resolve(Expression("attribute", "red", "circle", size="small"), [a, b]) == [1]


@pytest.mark.parametrize("phrase,flipped", [
    ("the red circle on the left", "the red circle on the right"),
    ("Leftmost star", "Rightmost star"),
    ("the second square from the right", "the second square from the left"),
    ("the cross left of the ring in the top left corner", "the cross right of the ring in the top right corner"),
    ("the bright star", "the bright star"),  # "bright" contains "right" but is not the word
])
def test_flip_phrase(phrase, flipped):
    assert flip_phrase(phrase) == flipped
    assert flip_phrase(flip_phrase(phrase)) == phrase
