"""pi_runtime.spatial: where-words read from phrases, and the region they pick among candidates."""

import numpy as np
import pytest

from pi_runtime.regions import RegionTrack, best_region, region_scores
from pi_runtime.spatial import CANDIDATE_SHARE, PLACE_SHARE, Selector, parse_selector, select_region


@pytest.mark.parametrize("phrase, want", [
    ("the red mug on the left", Selector("x")),
    ("pick up the leftmost duck", Selector("x")),
    ("The RIGHTMOST ball", Selector("x", True)),
    ("the cube that is at the right", Selector("x", True)),
    ("pick up the second ring from the right", Selector("x", True, 1)),
    ("counting from the left, the third cube", Selector("x", False, 2)),
    ("the 2nd circle from the top", Selector("y", False, 1)),
    ("the mug in the middle", Selector("centre")),
    ("the green shape in the top left corner", Selector("top left")),
    ("the square at the bottom right", Selector("bottom right")),
    ("green shape on top", Selector("y")),
    ("the lowest star", Selector("y", True)),
    # depth words: how low the region reaches; size words: its area (with the plain pass's candidates)
    ("the ball closest to me", Selector("bottom", True)),
    ("grab the nearest can", Selector("bottom", True)),
    ("the cup in front", Selector("bottom", True)),
    ("the block at the back", Selector("bottom")),
    ("can you see the domino that is farthest from the camera", Selector("bottom")),
    ("the biggest cube", Selector("size", True)),
    ("a small thing", Selector("size")),
    ("the leftmost small cube", Selector("x")),            # a place word first
])
def test_where_words_become_selectors(phrase, want):
    assert parse_selector(phrase) == want


@pytest.mark.parametrize("phrase", [
    "the red mug", "the red cube on the table", "where is the teddy bear",
    # relations name another object: the grid alone cannot place it
    "the mug left of the duck", "the ball to the right of the red cube", "the cube on the domino",
    "the ball in front of the mug", "the duck behind the can", "the block next to the ring",
    "the star above the circle", "the square below the red star", "the blue circle on top of the star",
    "the cube beside the mug",
    # "closest to" another object is no depth word
    "the ball closest to the duck", "the cube nearest to a mug",
])
def test_phrases_without_a_where_word_of_their_own_get_none(phrase):
    assert parse_selector(phrase) is None


def _three_blobs(strengths=(3.0, 4.0, 2.0), size=4):
    """A 20 x 40 grid: three square blobs left to right (columns 2, 16, 30), rows 8-12."""
    grid = np.full((20, 40), -5.0, np.float32)
    for x, s in zip((2, 16, 30), strengths):
        grid[8:8 + size, x:x + size] = s
    return grid


def _kept_column(mask):
    return int(np.nonzero(mask.any(axis=0))[0][0])


@pytest.mark.parametrize("selector, column", [
    (Selector("x"), 2), (Selector("x", True), 30), (Selector("x", False, 1), 16),
    (Selector("x", True, 2), 2), (Selector("centre"), 16),
])
def test_selection_orders_candidates_by_place(selector, column):
    grid = _three_blobs()
    assert _kept_column(best_region(grid, 0.0)) == 16              # the model's own choice: the brightest
    assert _kept_column(best_region(grid, 0.0, pick=selector.pick)) == column


def test_depth_words_order_by_the_lowest_row_and_size_words_by_area():
    grid = np.full((30, 40), -5.0, np.float32)
    grid[2:6, 2:6] = 4.0        # high in the frame (far), small: the model's own choice
    grid[10:20, 16:26] = 2.0    # big, in the middle
    grid[24:28, 30:34] = 3.5    # low in the frame (near), small
    assert _kept_column(best_region(grid, 0.0)) == 2
    assert _kept_column(best_region(grid, 0.0, pick=parse_selector("the nearest cube").pick)) == 30
    assert _kept_column(best_region(grid, 0.0, pick=parse_selector("the cube at the back").pick)) == 2
    assert _kept_column(best_region(grid, 0.0, pick=parse_selector("the biggest cube").pick)) == 16
    assert _kept_column(best_region(grid, 0.0, pick=parse_selector("the small cube").pick)) in (2, 30)


def test_size_words_weigh_apparent_size_by_how_far_below_the_horizon_a_region_stands(monkeypatch):
    import pi_runtime.spatial as spatial

    grid = np.full((40, 40), -5.0, np.float32)
    grid[4:8, 4:8] = 3.0        # high in the frame (far): looks 4 cells wide, bottom row 0.2
    grid[32:37, 24:29] = 3.0    # low in the frame (near): looks 5 cells wide, bottom row 0.93
    # 0.1 / (0.2 + 0.5) = 0.14 against 0.125 / (0.93 + 0.5) = 0.09: the far one is the bigger object
    assert spatial.SIZE_HORIZON == -0.5
    assert _kept_column(best_region(grid, 0.0, pick=parse_selector("the biggest can").pick)) == 4
    assert _kept_column(best_region(grid, 0.0, pick=parse_selector("the smallest can").pick)) == 24
    monkeypatch.setattr(spatial, "SIZE_HORIZON", -float("inf"))   # apparent size alone: the near one
    assert _kept_column(best_region(grid, 0.0, pick=parse_selector("the biggest can").pick)) == 24


def test_a_faint_region_is_no_candidate_and_a_rank_past_the_candidates_keeps_the_best():
    grid = _three_blobs(strengths=(0.2, 4.0, 3.0))                # the left blob scores 5 % of the best
    assert _kept_column(best_region(grid, 0.0, pick=Selector("x").pick)) == 16
    assert _kept_column(best_region(grid, 0.0, pick=Selector("x", False, 2).pick)) == 16
    labels, n, scores, origin = region_scores(grid, 0.0)
    assert n == 3 and scores[0] < 0.25 * scores[1]
    assert select_region(labels, scores, Selector("x"), grid.shape, share=0.01, origin=origin) == 1


def test_places_count_fainter_candidates_than_depth_and_size_words():
    grid = _three_blobs(strengths=(1.2, 4.0, 3.0))    # the left blob scores 30 % of the best
    grid[8:12, 2:6] = -5.0
    grid[16:20, 2:6] = 1.2                           # ... and reaches lowest in the frame
    grid[8:10, 30:34] = -5.0
    grid[12:14, 30:34] = 3.0                         # the right one next lowest
    labels, n, scores, origin = region_scores(grid, 0.0)
    assert PLACE_SHARE <= scores.min() / scores.max() < CANDIDATE_SHARE
    assert _kept_column(best_region(grid, 0.0, pick=parse_selector("the leftmost cube").pick)) == 2
    assert _kept_column(best_region(grid, 0.0, pick=parse_selector("the nearest cube").pick)) == 30
    assert _kept_column(best_region(grid, 0.0, pick=parse_selector("the smallest cube").pick)) in (16, 30)


def test_region_geometry_is_measured_on_the_whole_grid_not_the_labelled_box():
    """region_scores labels only the box around passing cells; "middle" must still mean the grid's."""
    grid = np.full((20, 100), -5.0, np.float32)
    grid[5:9, 50:54] = 2.0      # at the grid's centre
    grid[5:9, 66:70] = 2.0
    grid[5:9, 80:84] = 2.0      # nearest the centre if positions were counted from the box's corner
    assert _kept_column(best_region(grid, 0.0, pick=Selector("centre").pick)) == 50


def test_a_where_word_decides_over_the_tracks_memory():
    track = RegionTrack(bonus=10.0)
    grid = _three_blobs()
    assert _kept_column(track.choose(grid, 0.0, "the ball")) == 16
    assert _kept_column(track.choose(grid, 0.0, "the ball")) == 16          # memory and the model agree
    assert _kept_column(track.choose(grid, 0.0, "the ball", Selector("x").pick)) == 2


def test_live_mode_keeps_a_preferred_candidate_only_while_it_is_about_as_far_left():
    grid = np.full((20, 100), -5.0, np.float32)
    grid[8:12, 10:14] = 3.0      # A: centre x 0.12
    grid[8:12, 18:22] = 3.0      # B: centre x 0.20, 0.08 further right
    grid[2:6, 12:16] = 3.0       # C: centre x 0.14, within the hysteresis of A
    labels, n, scores, origin = region_scores(grid, 0.0)
    by_column = {int(np.nonzero((labels == k + 1).any(axis=0))[0][0]) + origin[1]: k for k in range(n)}
    leftmost = Selector("x")
    for preferred_column, kept_column in ((None, 10), (12, 12), (18, 10)):
        preferred = None
        if preferred_column is not None:
            preferred = np.zeros(n, bool)
            preferred[by_column[preferred_column]] = True
        label = leftmost.pick(labels, scores, origin, grid.shape, preferred=preferred)
        assert int(np.nonzero((labels == label).any(axis=0))[0][0]) + origin[1] == kept_column
