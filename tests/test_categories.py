"""The category check: phrase nouns, crops, the weighing rule, the bundle entry, the training command."""

import json
import shutil

import numpy as np
import pytest

from eris.category_check import CLASSES, NOUNS, _region_crops_of_scene, _region_label, object_cells
from pi_runtime.bundle import BundleError, validate_manifest
from pi_runtime.categories import CROP, MAX_ASKED, CategoryCheck, crop_box, crop_input, phrase_category


@pytest.mark.parametrize("phrase, noun", [
    ("pick up the teddy bear left of the mug", "teddy bear"),
    ("the teddy", "teddy"),
    ("where is the red cup", "cup"),
    ("grab the lego brick on the right", "lego brick"),
    ("the second block from the left", "block"),
    ("the blue donut", "donut"),
    ("the hexagon at the top", "hexagon"),
    ("The Duck", "duck"),
    ("can you see the domino that is farthest from the camera", "domino"),   # "can" the verb, not the noun
    ("Can you see the red can", "can"),
    ("can't you find the mug left of the can", "mug"),
    ("grab the cans", "can"),
])
def test_the_phrase_names_its_category(phrase, noun):
    assert phrase_category(phrase, NOUNS) == noun


@pytest.mark.parametrize("phrase", ["the red one", "the thing on the left", "the biggest object", "cubed ice",
                                    "the mugshot", "can you see a purple one", "can I have the green thing"])
def test_phrases_without_a_category_noun(phrase):
    assert phrase_category(phrase, NOUNS) is None


def test_every_dataset_noun_names_classes_and_shared_nouns_name_both():
    from eris.data import roboref, shapes

    for cat, (words, _, _) in roboref.CATEGORIES.items():
        assert all(cat in NOUNS[w] for w in words)
    for s in shapes.SHAPES:
        assert f"shape:{s}" in NOUNS[s]
    assert sorted(NOUNS["ring"]) == ["ring", "shape:ring"] and sorted(NOUNS["triangle"]) == ["prism", "shape:triangle"]
    assert "none" in CLASSES and all(c in CLASSES for named in NOUNS.values() for c in named)


def test_crop_box_is_a_square_around_the_cells_with_the_margin():
    cells = np.zeros((10, 12), bool)
    cells[2:4, 4:8] = True               # 8 x 16 pixels at 4 pixels a cell, from (16, 8)
    assert crop_box(cells, (4.0, 4.0)) == pytest.approx((12.0, 0.0, 36.0, 24.0))    # side 16 x 1.5
    assert crop_box(cells, (4.0, 4.0), (0.5, 0.0, 2.0)) == pytest.approx((24.0 - 24 + 24, -12.0, 72.0, 36.0))
    tiny = np.zeros((10, 12), bool)
    tiny[5, 5] = True                   # one 4-pixel cell: the crop never shrinks under MIN_SIDE
    x0, y0, x1, y1 = crop_box(tiny, (4.0, 4.0))
    assert x1 - x0 == pytest.approx(12.0) and (x0 + x1) / 2 == pytest.approx(22.0)


def test_crop_input_holds_the_object_and_its_cells_and_zeros_outside_the_image():
    image = np.zeros((40, 48, 3), np.uint8)
    image[8:16, 16:32] = (255, 0, 0)
    cells = np.zeros((10, 12), bool)
    cells[2:4, 4:8] = True
    x = crop_input(image, cells, (4.0, 4.0))
    assert x.shape == (4, CROP, CROP) and x.dtype == np.float32
    c = CROP // 2
    assert x[:3, c, c].tolist() == [255.0, 0.0, 0.0] and x[3, c, c] == 255.0
    assert x[3, 0, 0] == 0.0 and x[:3, 2, 2].tolist() == [0.0, 0.0, 0.0]   # margin: background
    # an object at the top edge: the crop reaches above the image, which reads as zeros
    assert x[:3, 0, c].tolist() == [0.0, 0.0, 0.0]


class _FakeClassifier:
    """An onnxruntime-like session: "duck" for crops whose centre is red, "mug" otherwise."""

    def __init__(self):
        self.calls = []

    def run(self, _, feeds):
        crops = feeds["crops"]
        self.calls.append(len(crops))
        red = crops[:, 0, CROP // 2, CROP // 2] > 128
        logits = np.zeros((len(crops), 3), np.float32)
        logits[red, 0] = 4.0
        logits[~red, 1] = 4.0
        return [logits]


def _two_regions():
    image = np.zeros((40, 80, 3), np.uint8)
    image[8:24, 8:24] = (255, 0, 0)     # red, left
    image[8:24, 48:64] = (0, 0, 255)    # blue, right
    labels = np.zeros((10, 20), np.int32)
    labels[2:6, 2:6] = 1
    labels[2:6, 12:16] = 2
    return image, labels


def test_weigh_multiplies_candidates_by_p_of_the_noun_and_skips_faint_regions():
    image, labels = _two_regions()
    session = _FakeClassifier()
    check = CategoryCheck(session, ["duck", "mug", "none"], {"duck": ["duck"], "cup": ["mug", "none"]},
                          share=0.5, power=1.0)
    p_duck, q = np.exp(4) / (np.exp(4) + 2), 1 / (np.exp(4) + 2)   # softmax of (4, 0, 0) and (0, 4, 0)
    weighed, p = check.weigh(image, "duck", labels, np.array([1.0, 2.0]), (0, 0), (4.0, 4.0))
    assert p == pytest.approx([p_duck, q]) and weighed == pytest.approx([p_duck, 2 * q])
    assert session.calls == [2]                    # one classifier run for all candidates
    _, p = check.weigh(image, "cup", labels, np.array([1.0, 2.0]), (0, 0), (4.0, 4.0))
    assert p == pytest.approx([1 - p_duck, 1 - q])   # a noun naming two classes sums them
    weighed, p = check.weigh(image, "duck", labels, np.array([0.4, 2.0]), (0, 0), (4.0, 4.0))
    assert np.isnan(p[0]) and weighed[0] == 0.4    # under share x best: not asked, kept as it was
    check.power = 2.0
    weighed, _ = check.weigh(image, "duck", labels, np.array([1.0, 2.0]), (0, 0), (4.0, 4.0))
    assert weighed == pytest.approx([p_duck ** 2, 2 * q ** 2])
    weighed, _ = check.weigh(image, "duck", labels, np.array([1.0, 2.0]), (0, 0), (4.0, 4.0), picking=True)
    assert weighed == pytest.approx([p_duck ** 2, 2 * q ** 2])      # no pick_power: power
    check.pick_power = 0.5
    weighed, _ = check.weigh(image, "duck", labels, np.array([1.0, 2.0]), (0, 0), (4.0, 4.0), picking=True)
    assert weighed == pytest.approx([p_duck ** 0.5, 2 * q ** 0.5])


def test_picking_drops_candidates_the_found_decision_would_reject_if_any_passes():
    image, labels = _two_regions()
    check = CategoryCheck(_FakeClassifier(), ["duck", "mug", "none"], {"duck": ["duck"], "cup": ["mug"]},
                          share=0.0, power=1.0, pick_power=0.25, found_min=0.2)
    p_duck, q = np.exp(4) / (np.exp(4) + 2), 1 / (np.exp(4) + 2)   # the red region is the duck
    weighed, _ = check.weigh(image, "duck", labels, np.array([1.0, 2.0]), (0, 0), (4.0, 4.0), picking=True)
    assert weighed == pytest.approx([p_duck ** 0.25, 0.0])          # the blue non-duck is no candidate
    weighed, _ = check.weigh(image, "duck", labels, np.array([1.0, 2.0]), (0, 0), (4.0, 4.0))
    assert weighed == pytest.approx([p_duck, 2 * q])                # without a pick: weighed only
    weighed, _ = check.weigh(image, "cup", labels, np.array([1.0, 2.0]), (0, 0), (4.0, 4.0), picking=True)
    assert weighed == pytest.approx([0.0, 2 * p_duck ** 0.25])      # the blue one is the mug
    check.found_min = 0.999
    weighed, _ = check.weigh(image, "duck", labels, np.array([1.0, 2.0]), (0, 0), (4.0, 4.0), picking=True)
    assert weighed == pytest.approx([p_duck ** 0.25, 2 * q ** 0.25])   # none passes: nothing dropped


def test_object_cells_thresholds_the_share_of_each_cell():
    mask = np.zeros((8, 8), bool)
    mask[0:4, 0:2] = True   # half of cell (0, 0)
    mask[4:8, 4:8] = True   # all of cell (1, 1)
    assert object_cells(mask, 0.25).tolist() == [[True, False], [False, True]]
    assert object_cells(mask, 0.75).tolist() == [[False, False], [False, True]]


def test_a_region_is_labelled_by_the_object_covering_most_of_it_or_none():
    region = np.zeros((4, 4), bool)
    region[0:2, 0:2] = True
    fractions = np.zeros((2, 4, 4))
    fractions[0, 0:2, 0:2] = 0.3    # the duck covers 30 % of the region
    fractions[1, 0:2, 0:1] = 1.0    # the mug covers half of it
    assert _region_label(region, fractions, ["duck", "mug"], 0.4) == "mug"
    assert _region_label(region, fractions, ["duck", "mug"], 0.6) == "none"   # nothing covers enough
    assert _region_label(region, np.zeros((0, 4, 4)), [], 0.4) == "none"       # a scene without objects


class _StubSegmenter:
    """What ``_region_crops_of_scene`` asks of a Segmenter, on a 12 x 16 grid of 4-pixel cells:
    the phrase lights a duck (left) and a mug (right); the phrase relates to the duck, whose
    region the reference pass finds."""

    _threshold_logit = 0.0

    def __init__(self, relation: bool):
        self.relation = relation
        self.cells = np.full((12, 16), -5.0, np.float32)
        self.cells[2:6, 1:5] = 3.0     # over the duck
        self.cells[2:6, 9:13] = 2.0    # over the mug

    def _frame_logits(self, image, phrase):
        if not self.relation:
            return self.cells, "box", {}, None, None
        ref = np.full((12, 16), -5.0, np.float32)
        ref[2:6, 1:5] = 4.0
        return self.cells, "box", {}, ref, ref >= 0

    def cell_hw(self, box):
        return 4.0, 4.0


def test_region_crops_are_the_runtime_candidates_with_a_relations_reference_taken_out():
    image = np.zeros((48, 64, 3), np.uint8)
    duck, mug = np.zeros((48, 64), bool), np.zeros((48, 64), bool)
    duck[8:24, 4:20], mug[8:24, 36:52] = True, True
    masks, labels = np.stack([duck, mug]), ["duck", "mug"]
    alone = _region_crops_of_scene(_StubSegmenter(False), image, "the mug", masks, labels)
    assert sorted(CLASSES[y] for _, y in alone) == ["duck", "mug"]   # both candidates asked about
    related = _region_crops_of_scene(_StubSegmenter(True), image, "the mug right of the duck", masks, labels)
    # the target's candidates lose the duck (it is the reference); the reference's candidate is cut too
    assert [CLASSES[y] for _, y in related] == ["mug", "duck"]
    assert all(c.shape == (4, CROP, CROP) and c.dtype == np.uint8 for c, _ in related)


def _manifest_with_check(bundle, **changes):
    m = json.loads((bundle / "manifest.json").read_text())
    m["category_check"] = {"file": "category_check.onnx", "classes": ["duck", "mug"], "nouns": {"duck": ["duck"]},
                           "share": 0.1, "power": 1.0, "found_min": 0.0, **changes}
    m["files"]["category_check.onnx"] = {"sha256": "0" * 64, "bytes": 1}
    return m


def test_the_manifest_check_names_a_wrong_category_check_key(bundle):
    validate_manifest(_manifest_with_check(bundle / "bundle"))
    for changes, key in [({"nouns": {"duck": ["goose"]}}, "category_check.nouns.duck"),
                         ({"share": 1.5}, "category_check.share"), ({"file": "../x.onnx"}, "category_check.file"),
                         ({"pick_power": -1}, "category_check.pick_power"),
                         ({"classes": []}, "category_check.classes")]:
        with pytest.raises(BundleError, match=key.replace(".", r"\.")):
            validate_manifest(_manifest_with_check(bundle / "bundle", **changes))
    m = _manifest_with_check(bundle / "bundle")
    del m["files"]["category_check.onnx"]
    with pytest.raises(BundleError, match="category_check.file: category_check.onnx is not listed"):
        validate_manifest(m)


def test_training_then_adding_to_a_bundle_and_loading_it(bundle, tmp_path):
    from eris.category_check import main
    from pi_runtime.bundle import verify_bundle
    from pi_runtime.segmenter import Segmenter

    target = tmp_path / "bundle"
    shutil.copytree(bundle / "bundle", target)
    args = ["--out", str(tmp_path / "cc"), "--roboref", "1", "--shapes", "2", "--region-roboref", "1",
            "--region-shapes", "1", "--epochs", "1", "--threads", "1"]
    assert main(args + ["--bundle", str(target), "--found-min", "0.2", "--pick-power", "0.25"]) == 0
    assert (tmp_path / "cc" / "category_check.onnx").exists() and len(list((tmp_path / "cc").glob("crops_*.npz"))) == 1
    regions = np.load(next((tmp_path / "cc").glob("candidates_*.npz")))
    assert regions["x"].shape[1:] == (4, CROP, CROP) and len(regions["x"]) == len(regions["y"])
    assert set(regions["y"].tolist()) <= set(range(len(CLASSES)))
    verify_bundle(target)
    seg = Segmenter.from_bundle(target, precision="fp32", threads=1)
    assert seg.category_check is not None and seg.category_check.found_min == 0.2
    assert seg.category_check.pick_power == 0.25
    assert seg.category_check.classes == CLASSES and seg.category_check.nouns == NOUNS
    crops = [crop_input(np.zeros((32, 32, 3), np.uint8), np.ones((8, 8), bool), (4.0, 4.0))]
    assert seg.category_check.probabilities(crops, "ring").shape == (1,)
    off = Segmenter.from_bundle(target, precision="fp32", threads=1, category_check=False)
    assert off.category_check is None
    # a second run reuses the trained graph (no retraining) and only rewrites the rule
    mtime = (tmp_path / "cc" / "category_check.onnx").stat().st_mtime_ns
    assert main(args + ["--bundle", str(target), "--found-min", "0.3"]) == 0
    assert (tmp_path / "cc" / "category_check.onnx").stat().st_mtime_ns == mtime
    assert Segmenter.from_bundle(target, precision="fp32", threads=1).category_check.found_min == 0.3


def test_at_most_max_asked_candidates_are_cropped_the_surest_first():
    n = MAX_ASKED + 3
    labels = np.zeros((10, 4 * n + 2), np.int32)
    image = np.zeros((40, 4 * labels.shape[1], 3), np.uint8)
    for i in range(n):
        labels[2:5, 4 * i:4 * i + 2] = i + 1
    scores = np.arange(1, n + 1, dtype=float)       # the last regions are the surest
    session = _FakeClassifier()
    check = CategoryCheck(session, ["duck", "mug", "none"], {"duck": ["duck"]}, share=0.0)
    weighed, p = check.weigh(image, "duck", labels, scores, (0, 0), (4.0, 4.0))
    assert session.calls == [MAX_ASKED]
    assert np.isnan(p[:n - MAX_ASKED]).all() and not np.isnan(p[n - MAX_ASKED:]).any()
    assert weighed[:n - MAX_ASKED] == pytest.approx(scores[:n - MAX_ASKED])
