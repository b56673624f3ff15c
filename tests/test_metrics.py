"""eris.metrics against values computed by hand."""

import numpy as np
import pytest

from eris.metrics import intersection_union, summarize


def test_hand_computed():
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True                     # 4 pixels
    a = np.zeros((4, 4), bool)
    a[:2, :1] = True                      # I=2, U=4 -> 0.5
    b = gt.copy()                         # I=4, U=4 -> 1.0
    c = np.zeros((4, 4), bool)
    c[3, 3] = True                        # I=0, U=5 -> 0
    pairs = [intersection_union(p, gt) for p in (a, b, c)]
    assert pairs == [(2, 4), (4, 4), (0, 5)]
    m = summarize(pairs)
    assert m["mIoU"] == pytest.approx(100 * 1.5 / 3)
    assert m["oIoU"] == pytest.approx(100 * 6 / 13)
    assert m["P@0.5"] == pytest.approx(100 * 2 / 3)
    assert m["P@0.6"] == pytest.approx(100 / 3) and m["P@0.9"] == pytest.approx(100 / 3)
    assert m["n"] == 3


def test_both_empty_counts_as_agreement_and_shapes_must_match():
    empty = np.zeros((3, 3), bool)
    assert summarize([intersection_union(empty, empty)])["mIoU"] == 100
    with pytest.raises(ValueError, match="shape"):
        intersection_union(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        summarize([])


def test_per_kind_counts_and_mean_add_up_to_the_overall():
    from eris.metrics import summarize_by_kind

    pairs = [(5, 10), (0, 4), (3, 3), (1, 8), (0, 0)]
    kinds = ["colour", "relation", "colour", "ordinal", "absent"]
    overall, by_kind = summarize(pairs), summarize_by_kind(pairs, kinds)
    assert sum(m["n"] for m in by_kind.values()) == overall["n"]
    weighted = sum(m["mIoU"] * m["n"] for m in by_kind.values()) / overall["n"]
    assert weighted == pytest.approx(overall["mIoU"])
    assert by_kind["colour"]["mIoU"] == pytest.approx(75.0) and by_kind["absent"]["mIoU"] == 100.0
    with pytest.raises(ValueError):
        summarize_by_kind(pairs, kinds[:2])


def test_found_rates():
    from eris.metrics import found_rates

    r = found_rates([True, False, True, False, False], [True, True, True, False, False])
    assert r["present_found"] == pytest.approx(200 / 3) and r["absent_rejected"] == 100.0
    assert found_rates([True], [True])["absent_rejected"] is None
