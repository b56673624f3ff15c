"""pi_runtime.plain: the phrase without the words that say which one, and its generic description."""

import pytest

from pi_runtime.plain import generic_description, plain_description


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


_NOUNS = {"duck": ["duck"], "mug": ["mug"], "cup": ["mug"], "teddy bear": ["teddy"], "teddy": ["teddy"],
          "can": ["cylinder"], "cube": ["cube"]}


@pytest.mark.parametrize("phrase, generic", [
    ("the white duck", "the white thing"),
    ("the second white mug from the left", "the white thing"),     # the plain description's noun
    ("the mug left of the duck", "the thing"),                     # a relation: the target's
    ("pick up the red cubes", "pick up the red thing"),
    ("where is  the Teddy Bear?", "where is the thing?"),         # the longest noun, any case
    ("can you see the cup", "can you see the thing"),              # "can" the verb is no noun
    ("the can", "the thing"),
])
def test_the_generic_description_names_a_thing_instead_of_the_category(phrase, generic):
    assert generic_description(phrase, _NOUNS) == generic


@pytest.mark.parametrize("phrase", ["the red thing", "the leftmost one", "the ball", "ducks2"])
def test_a_phrase_naming_no_known_category_has_no_generic_description(phrase):
    assert generic_description(phrase, _NOUNS) is None
