"""eris.data.shapes: determinism, unique expressions, masks that match the pixels, export."""

import json

import numpy as np
import pytest

from eris.data.expressions import TEMPLATES, resolve
from eris.data.shapes import COLOURS, SHAPES, get_sample, main, render_scene

N_CHECK = 300


@pytest.fixture(scope="module")
def val_samples():
    return [get_sample("val", i, long_side=160, degrade=False) for i in range(N_CHECK)]


def test_same_arguments_same_sample():
    a, b = get_sample("val", 17), get_sample("val", 17)
    assert a.phrase == b.phrase and np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    c = get_sample("val", 18)
    assert c.phrase != a.phrase or not np.array_equal(c.image, a.image)
    assert get_sample("train", 17).phrase != a.phrase or not np.array_equal(get_sample("train", 17).image, a.image)
    assert get_sample("val", 17, seed=1).describe() != a.describe()


def test_scene_is_resolution_independent():
    small, large = get_sample("test", 5, long_side=320), get_sample("test", 5, long_side=640)
    assert small.phrase == large.phrase and small.target == large.target
    assert max(large.image.shape[:2]) == 640 and max(small.image.shape[:2]) == 320
    assert abs(small.mask.mean() - large.mask.mean()) < 0.002


def test_every_expression_picks_exactly_its_target(val_samples):
    kinds = set()
    for s in val_samples:
        objects = s.scene.objects
        assert 2 <= len(objects) <= 7 or len(objects) >= 1
        assert resolve(s.expression, objects) == [s.target], s.phrase
        assert resolve(s.expression, objects, relaxed=True) == [s.target], s.phrase
        kinds.add(s.expression.kind)
    assert kinds == set(TEMPLATES)


def test_scene_statistics(val_samples):
    counts = [len(s.scene.objects) for s in val_samples]
    assert min(counts) >= 2 and max(counts) == 7
    aspects = {round(s.image.shape[1] / s.image.shape[0], 2) for s in val_samples}
    assert aspects == {1.0, 1.33, 1.78}
    for s in val_samples[:50]:
        for o in s.scene.objects:
            assert o.shape in SHAPES and o.colour in COLOURS
            assert 0.04 <= o.size <= 0.30 and o.visible >= 0.7 - 0.02  # occlusion <= 30 % (measured at 320)


def test_masks_match_the_rendered_pixels(val_samples):
    for s in val_samples[:100]:
        image, masks = render_scene(s.scene, long_side=160, degrade=False)
        target = s.scene.objects[s.target]
        assert s.mask.any()
        assert np.array_equal(masks[s.target], s.mask)
        # every mask pixel shows the target's colour, and no two visible masks overlap
        assert (image[s.mask] == np.array(target.rgb, np.uint8)).all()
        assert np.sum(masks, axis=0).max() <= 1


def test_at_least_thirty_surface_templates():
    assert sum(len(t) for t in TEMPLATES.values()) >= 30


def test_fixed_splits_have_1000_samples():
    get_sample("val", 999, long_side=64)
    with pytest.raises(IndexError, match="1000"):
        get_sample("val", 1000)
    with pytest.raises(ValueError, match="split"):
        get_sample("dev", 0)


def test_cli_writes_images_masks_and_manifest(tmp_path):
    assert main(["--out", str(tmp_path), "--split", "val", "--n", "3", "--long-side", "128"]) == 0
    lines = [json.loads(l) for l in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [l["id"] for l in lines] == ["val-000000", "val-000001", "val-000002"]
    from PIL import Image

    mask = np.asarray(Image.open(tmp_path / lines[0]["mask"]))
    assert set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask > 127, get_sample("val", 0, long_side=128).mask)
    assert Image.open(tmp_path / lines[0]["image"]).size[0] == 128


def test_absent_variant_keeps_the_scene_and_names_nothing_in_it():
    from eris.data.shapes import get_sample

    for i in range(20):
        present, absent = get_sample("val", i, long_side=96), get_sample("val", i, long_side=96, absent=True)
        assert np.array_equal(present.image, absent.image) and present.phrase != absent.phrase
        assert absent.kind == "absent" and absent.target is None and not absent.mask.any()
        e = absent.expression
        assert not any(o.shape == e.shape and (e.colour is None or o.colour == e.colour) for o in absent.scene.objects)
