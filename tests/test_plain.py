"""pi_runtime.plain: the phrase without the words that say which one."""

import pytest

from pi_runtime.plain import plain_description


@pytest.mark.parametrize("phrase, plain", [
    ("grab the green one on the right", "grab the green one"),
    ("show me the blue ring that is at the left", "show me the blue ring"),
    ("push the second mug from the left", "push the mug"),
    ("counting from the left, the second orange object", "the orange object"),
    ("highlight the rightmost ball", "highlight the ball"),
    ("the orange object which is in the middle", "the orange object"),
    ("the ring on top", "the ring"),
    ("the cube in the top left corner", "the cube"),
    ("can you see the domino that is farthest from the camera", "can you see the domino"),
    ("look at the triangle closest to me", "look at the triangle"),
    ("find the can furthest away", "find the can"),
    ("the ball in front", "the ball"),
    ("pick up the smallest cube", "pick up the cube"),
    ("the big red ball", "the red ball"),
    ("where is the teddy to the right of the blue cube", "where is the teddy"),   # a relation: the target
    ("the leftmost mug next to the duck", "the mug"),
    ("the block which is on the black domino", "the block"),
])
def test_which_one_words_are_dropped(phrase, plain):
    assert plain_description(phrase) == plain


@pytest.mark.parametrize("phrase", ["the red mug", "the duck", "where is the teddy bear", "the leftmost", "the one on the left", "second",
                                    "the ball on the table"])
def test_nothing_to_drop_or_nothing_left_gives_none(phrase):
    assert plain_description(phrase) is None
