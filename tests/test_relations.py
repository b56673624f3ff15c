"""pi_runtime.relations: relation phrases split into target and reference, and the region kept."""

from functools import partial

import numpy as np
import pytest

from pi_runtime.regions import best_region, region_scores
from pi_runtime.relations import DEPTH_REACH, NOT_THERE, Relation, choose_related, parse_relation, without_reference


@pytest.mark.parametrize("phrase, want", [
    ("where is the teddy to the right of the blue cube", Relation("right of", "where is the teddy", "the blue cube")),
    ("the mug left of the duck", Relation("left of", "the mug", "the duck")),
    ("the duck on the left of the mug", Relation("left of", "the duck", "the mug")),
    ("pick up the ring which is behind the white one", Relation("behind", "pick up the ring", "the white ring")),
    ("the lego brick that is to the right of the green one", Relation("right of", "the lego brick", "the green brick")),
    ("the cube on the domino", Relation("on", "the cube", "the domino")),
    ("the red cube that is on top of the blue box", Relation("on", "the red cube", "the blue box")),
    ("black object above the pink hexagon", Relation("above", "black object", "the pink hexagon")),
    ("ring under white triangle", Relation("below", "ring", "the white triangle")),
    ("the thing beside the orange star", Relation("next to", "the thing", "the orange star")),
    ("The ball IN FRONT OF the mug", Relation("in front of", "the ball", "the mug")),
])
def test_relation_phrases_split_into_target_and_reference(phrase, want):
    assert parse_relation(phrase) == want


@pytest.mark.parametrize("phrase", ["the red mug", "the mug on the left", "the red cube on the table",
                                    "the leftmost duck", "the ball in front", "left of the duck", "the mug left of"])
def test_phrases_without_a_relation_to_another_object_get_none(phrase):
    assert parse_relation(phrase) is None


def _scene():
    """A 30 x 60 grid: candidates A (left, surest), B (right of centre), C (far right, high up),
    and the reference R in the middle, which the full phrase also lights up."""
    grid = np.full((30, 60), -5.0, np.float32)
    grid[15:21, 4:10] = 4.0     # A
    grid[15:21, 34:40] = 2.0    # B
    grid[2:6, 50:56] = 1.5      # C
    grid[15:21, 24:30] = 3.0    # R
    reference = np.zeros(grid.shape, bool)
    reference[15:21, 24:30] = True
    return grid, reference


def _keep(grid, relation, reference, share=None):
    labels, n, scores, origin = region_scores(grid, 0.0)
    label = choose_related(labels, scores, origin, grid.shape, relation, reference, share)
    keep = np.zeros(grid.shape, bool)
    keep[origin[0]:origin[0] + labels.shape[0], origin[1]:origin[1] + labels.shape[1]] = labels == label
    return int(np.nonzero(keep.any(axis=0))[0][0])


@pytest.mark.parametrize("relation, column", [
    ("left of", 4), ("right of", 34), ("above", 50), ("next to", 34),
])
def test_the_surest_candidate_in_the_relation_is_kept_and_never_the_reference(relation, column):
    grid, reference = _scene()
    assert _keep(grid, relation, reference) == column


def test_depth_relations_compare_the_lowest_rows_near_the_reference_columns():
    grid = np.full((30, 40), -5.0, np.float32)
    grid[4:10, 14:20] = 2.0      # behind the reference: higher in the frame, same columns
    grid[22:28, 16:22] = 3.0     # in front of it
    grid[22:28, 34:40] = 4.0     # surest, but far to the side
    reference = np.zeros(grid.shape, bool)
    reference[12:18, 15:21] = True
    assert _keep(grid, "behind", reference) == 14
    assert _keep(grid, "in front of", reference) == 16


def test_depth_relations_reach_beside_a_small_reference_but_not_across_the_frame():
    grid = np.full((30, 40), -5.0, np.float32)
    grid[4:10, 24:29] = 2.0      # behind, its centre 10 cells (a quarter of the frame) right of the reference's
    grid[4:10, 32:38] = 4.0      # surest, but 18.5 cells (46 %) to the side
    grid[22:28, 30:36] = 3.0     # in front of it, 16.5 cells (41 %) to the side: too far
    reference = np.zeros(grid.shape, bool)
    reference[12:18, 16:18] = True   # two cells wide: overlapping its columns would find nothing
    assert DEPTH_REACH * 40 >= 10 > 0.2 * 40
    assert _keep(grid, "behind", reference) == 24
    assert _keep(grid, "in front of", reference) == 32   # no candidate in the relation: the surest


def test_on_needs_the_candidate_above_and_over_the_reference():
    grid = np.full((30, 40), -5.0, np.float32)
    grid[6:12, 15:21] = 2.0      # stacked on the reference
    grid[6:12, 30:36] = 4.0      # above, but beside it
    reference = np.zeros(grid.shape, bool)
    reference[12:18, 12:24] = True
    assert _keep(grid, "on", reference) == 15


def test_the_models_choice_stands_without_a_reference_or_a_candidate_in_the_relation():
    grid, reference = _scene()
    assert _keep(grid, "left of", np.zeros_like(reference)) == 4          # reference not found
    assert _keep(grid, "left of", reference[:10]) == 4                     # a grid of another size
    only_right = grid.copy()
    only_right[15:21, 4:10] = -5.0
    assert _keep(only_right, "left of", reference) == 24                   # nothing left of it: the surest
    assert _keep(grid, "right of", reference, share=0.9) == 4              # B and C too faint: the surest
    with pytest.raises(ValueError, match="unknown relation"):
        _keep(grid, "around", reference)


def test_best_region_takes_a_relation_as_its_pick():
    from functools import partial

    grid, reference = _scene()
    keep = best_region(grid, 0.0, pick=partial(choose_related, relation="right of", reference=reference))
    assert keep[18, 36] and keep.sum() == 36


def test_live_mode_prefers_the_last_frames_candidate_among_those_in_the_relation():
    grid, reference = _scene()
    grid[25:29, 40:46] = 1.8     # D: also right of the reference, a little less sure than B
    labels, n, scores, origin = region_scores(grid, 0.0)
    column = lambda label: int(np.nonzero((labels == label).any(axis=0))[0][0]) + origin[1]
    d = next(k for k in range(n) if column(k + 1) == 40)
    preferred = np.zeros(n, bool)
    preferred[d] = True
    pick = lambda **k: column(choose_related(labels, scores, origin, grid.shape, "right of", reference, **k))
    assert pick() == 34                                           # B, the surest right of R
    assert pick(preferred=preferred, bonus=1.5) == 40             # D stays: within the bonus
    assert pick(preferred=preferred, bonus=1.05) == 34


def test_without_reference_clears_the_references_cells_only():
    cells = np.arange(12, dtype=np.float32).reshape(3, 4)
    ref = np.zeros((3, 4), bool)
    ref[1, 1:3] = True
    out = without_reference(cells, ref)
    assert out.dtype == np.float32 and np.all(out[ref] == NOT_THERE)
    assert np.array_equal(out[~ref], cells[~ref]) and cells[1, 1] == 5.0     # the input is not changed
    assert without_reference(cells, None) is cells
    assert without_reference(cells, np.zeros((3, 4), bool)) is cells
    assert without_reference(cells, np.ones((2, 2), bool)) is cells          # another grid: no reference


def test_a_target_merged_with_its_reference_becomes_a_candidate_of_its_own():
    """A cube stacked on a domino, marked as one region with it: without the domino's cells the
    cube is a region of its own, and "on" keeps it, not the other cube."""
    cells = np.full((20, 30), -5.0, np.float32)
    cells[10:16, 4:14] = 3.0     # the domino
    cells[6:10, 6:11] = 3.0      # the cube on it, touching: one region with the domino
    cells[12:16, 20:25] = 4.0    # another cube, on the table
    domino = np.zeros_like(cells, bool)
    domino[10:16, 4:14] = True
    rel = partial(choose_related, relation="on", reference=domino)
    merged = best_region(cells, 0.0, pick=rel)
    assert merged[12, 8] and merged[8, 8]                    # merged: the mask takes the domino with the cube
    kept = best_region(without_reference(cells, domino), 0.0, pick=rel)
    want = np.zeros_like(kept)
    want[6:10, 6:11] = True
    assert np.array_equal(kept, want)
