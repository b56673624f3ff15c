"""eris.data.roboref: deterministic PyBullet scenes, unique expressions, exact masks, settled objects."""

import json
import re

import numpy as np
import pytest

pytest.importorskip("pybullet", reason="RoboRef needs pybullet (the [train] extra)")

from eris.data import roboref  # noqa: E402
from eris.data.expressions import flip_phrase  # noqa: E402
from eris.data.roboref import (CATEGORIES, COLOURS, MIN_PIXELS, MIN_SEEN_PIXELS, MIN_VISIBLE,  # noqa: E402
                               RoboObject, get_sample, main, place_scene, render_sequence)
from eris.data.roboref_expressions import (ROBOREF_KINDS, WRAPPERS, generate_expression,  # noqa: E402
                                           template_count)

SIDE = 128
NOUNS = {noun: cat for cat, (nouns, _, _) in CATEGORIES.items() for noun in nouns}
NOUN_RE = re.compile(r"\b(" + "|".join(sorted(NOUNS, key=len, reverse=True)) + r")\b")
COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


def _np(phrase: str) -> str:
    """The noun phrase without its imperative/question wrapper ("can you see ..." names no can)."""
    for prefix in sorted((w.split("{np}")[0] for w in WRAPPERS), key=len, reverse=True):
        if prefix and phrase.startswith(prefix):
            return phrase[len(prefix):]
    return phrase


@pytest.fixture(scope="module")
def samples():
    return [get_sample("val", i, long_side=SIDE) for i in range(120)]


def test_same_arguments_same_sample():
    a, b = get_sample("val", 7, long_side=SIDE), get_sample("val", 7, long_side=SIDE)
    assert a.phrase == b.phrase and a.kind == b.kind and a.target == b.target
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    c = get_sample("val", 7, seed=1, long_side=SIDE)
    assert c.phrase != a.phrase or not np.array_equal(c.image, a.image)


def test_kinds_and_absent_targets(samples):
    kinds = {s.kind for s in samples}
    assert kinds <= set(ROBOREF_KINDS) and len(kinds) >= 6
    absent = [s for s in samples if s.kind == "absent"]
    assert 3 <= len(absent) <= 25  # about 10 %
    for s in absent:
        assert s.target is None and not s.mask.any()
        colour, noun = COLOUR_RE.search(_np(s.phrase)), NOUN_RE.search(_np(s.phrase))
        cat = NOUNS[noun.group(1)]
        # nothing in the scene, seen or not, is what the phrase names
        assert not any(o.category == cat and (colour is None or o.colour == colour.group(1))
                       for o in s.scene.objects)
    assert template_count() >= 40


def test_present_targets_are_visible_and_the_only_match(samples):
    for s in samples:
        if s.kind == "absent":
            continue
        objs = s.scene.objects
        t = objs[s.target]
        assert t.pixels >= MIN_PIXELS and t.visible >= MIN_VISIBLE and s.mask.any(), s.phrase
        if s.kind in ("colour", "category", "colour+category"):
            colour, noun = COLOUR_RE.search(_np(s.phrase)), NOUN_RE.search(_np(s.phrase))
            matching = [i for i, o in enumerate(objs) if o.pixels >= MIN_SEEN_PIXELS
                        and (colour is None or o.colour == colour.group(1))
                        and (noun is None or o.category == NOUNS[noun.group(1)])]
            assert matching == [s.target], s.phrase
        if s.kind == "location" and ("leftmost" in s.phrase or "on the left" in s.phrase):
            noun = NOUN_RE.search(_np(s.phrase))
            same = [o for o in objs if o.pixels >= MIN_SEEN_PIXELS
                    and (noun is None or o.category == NOUNS[noun.group(1)])
                    and (not COLOUR_RE.search(s.phrase) or o.colour == COLOUR_RE.search(s.phrase).group(1))]
            assert min(same, key=lambda o: o.cx) is t, s.phrase


def _obj(category, colour, pixels, cx, visible=1.0):
    return RoboObject(category, colour, 0.05, position=(cx, 0.3, 0.02), pixels=pixels, visible=visible, cx=cx,
                      cy=0.5, depth=0.5)


def test_small_objects_in_view_are_distractors_but_not_targets():
    """An object too small to be a target (under MIN_PIXELS) is still in plain view: a phrase must
    not also fit it. Here a big red cube and a small red cube: "the red cube" / "the cube" /
    "the red one" fit both, so no attribute phrase may be made, and the small one is never the
    target; with the small cube out of view (under MIN_SEEN_PIXELS) they are fine again."""
    small = (MIN_SEEN_PIXELS + MIN_PIXELS) // 2
    for hidden, expect_attribute in ((False, False), (True, True)):
        objs = [_obj("cube", "red", 400, 0.3), _obj("cube", "red", MIN_SEEN_PIXELS - 1 if hidden else small, 0.7),
                _obj("duck", "yellow", 300, 0.5)]
        made = set()
        for seed in range(60):
            out = generate_expression(objs, np.random.default_rng(seed), weights={"attribute": 1.0})
            if out is not None:
                assert out[0] != 1, out
                made.add(out[0])
        assert (0 in made) == expect_attribute, made
        assert 2 in made  # the duck is unique either way


def test_an_ordinal_is_made_only_where_a_small_object_does_not_change_the_count():
    """Rings at x 0.2, 0.5 (small: may be seen or not) and 0.8: counting from the left, the ring at
    0.8 is second or third depending on the small one, so no ordinal picks it; counted from the
    right the small ring comes after the ring at 0.8 (first either way), so that one is made."""
    small = (MIN_SEEN_PIXELS + MIN_PIXELS) // 2
    objs = [_obj("ring", "red", 300, 0.2), _obj("ring", "blue", small, 0.5), _obj("ring", "green", 300, 0.8),
            _obj("duck", "yellow", 300, 0.35)]
    made = set()
    for seed in range(200):
        out = generate_expression(objs, np.random.default_rng(seed), weights={"ordinal": 1.0})
        if out is not None and out[0] == 2:
            made.add(out[2])
    assert made and all("right" in p and ("first" in p or "1st" in p) for p in made), made


def test_mask_is_exactly_the_targets_pixels():
    """Without shadows, removing the target changes the pixels inside its mask and no other."""
    s = next(s for s in (get_sample("val", i, long_side=SIDE) for i in range(20)) if s.target is not None)
    sim = roboref._sim()
    bodies = roboref._build(sim, s.scene, place=False)
    w, h = s.scene.size_at(SIDE)
    with_target, seg = roboref._render(sim, s.scene, w, h, shadows=False)
    assert np.array_equal(roboref._object_mask(seg, bodies[s.target]), s.mask)
    sim["p"].resetBasePositionAndOrientation(bodies[s.target], [50, 50, 0], [0, 0, 0, 1])
    without, _ = roboref._render(sim, s.scene, w, h, shadows=False)
    changed = np.any(with_target != without, axis=2)
    assert not changed[~s.mask].any()
    assert changed[s.mask].mean() > 0.9


def test_settled_objects_rest_on_something():
    """After the physics run every object touches the surface or another object, sinks into
    nothing by more than 5 mm and touches nothing below the surface (world AABBs of rotated meshes
    are loose and mesh origins are not centres, so contacts are what is checked)."""
    for i in range(6):
        scene, bodies = place_scene(roboref._rng("val", i, 3))
        p, cid = roboref._sim()["p"], roboref._sim()["cid"]
        for obj, body in zip(scene.objects, bodies):
            contacts = p.getContactPoints(bodyA=body, physicsClientId=cid)
            assert contacts, f"{obj.category} floats"
            assert min(c[8] for c in contacts) > -0.005, f"{obj.category} sinks into something"
            assert min(c[5][2] for c in contacts) > -0.005, f"{obj.category} touches below the surface"


def test_flip_rewrites_left_right_but_not_depth():
    assert flip_phrase("pick up the leftmost duck closest to me") == "pick up the rightmost duck closest to me"
    assert flip_phrase("the mug left of the red ball") == "the mug right of the red ball"
    assert flip_phrase("the second cube from the right") == "the second cube from the left"
    assert flip_phrase("the ball behind the cup, at the back") == "the ball behind the cup, at the back"


def test_surface_textures_are_written_once_for_all_processes(tmp_path, monkeypatch):
    """Each new simulator (one per DataLoader worker) used to leave a temp folder of textures behind."""
    monkeypatch.setattr(roboref.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(roboref, "_SIM", {})
    before = get_sample("val", 3, long_side=SIDE)
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("eris-roboref-textures-")
    stamps = {f.name: f.stat().st_mtime_ns for f in folders[0].iterdir()}
    assert len(stamps) == 9                                 # white + 8 surfaces, no stray temp files
    roboref._SIM["pid"] = -1                                # as a new worker process would see it
    after = get_sample("val", 3, long_side=SIDE)
    roboref._SIM["p"].disconnect(physicsClientId=roboref._SIM["cid"])
    assert list(tmp_path.iterdir()) == folders
    assert {f.name: f.stat().st_mtime_ns for f in folders[0].iterdir()} == stamps
    assert np.array_equal(before.image, after.image)


def test_sequence_renders_frames_of_one_scene(tmp_path):
    paths = render_sequence(tmp_path / "seq", frames=3, long_side=96)
    assert [p.name for p in paths] == ["frame_0000.jpg", "frame_0001.jpg", "frame_0002.jpg"]
    assert json.loads((tmp_path / "seq" / "scene.json").read_text())["objects"]


def test_cli_writes_samples_with_kinds(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "val"), "--split", "val", "--n", "2", "--long-side", "96", "--workers", "2"]) == 0
    lines = [json.loads(l) for l in (tmp_path / "val" / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(l["kind"] in ROBOREF_KINDS for l in lines)
    assert all((tmp_path / "val" / l["image"]).is_file() and (tmp_path / "val" / l["mask"]).is_file() for l in lines)


def test_runtime_never_needs_pybullet():
    from importlib.metadata import requires

    reqs = requires("eris-pi")
    base = [r for r in reqs if "extra ==" not in r]
    train = [r for r in reqs if 'extra == "train"' in r]
    assert not any(r.startswith("pybullet") for r in base) and any(r.startswith("pybullet") for r in train)


def test_kind_weights_parse_and_validate():
    from eris.data.roboref_expressions import KIND_WEIGHTS, kind_weights, parse_kind_weights

    assert parse_kind_weights(" location=0.3, ordinal=0 ") == {"location": 0.3, "ordinal": 0.0}
    full = kind_weights({"location": 0.3})
    assert set(full) == set(KIND_WEIGHTS) and full["location"] == 0.3 and full["relation"] == KIND_WEIGHTS["relation"]
    for spec, message in [("colour=0.2", "unknown RoboRef phrase kind 'colour'"), ("location", "not KIND=NUMBER"),
                          ("location=lots", "not KIND=NUMBER"), ("depth=-1", "non-negative"),
                          ("depth=nan", "non-negative"),
                          (",".join(f"{k}=0" for k in KIND_WEIGHTS), "at least one must be positive")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_kind_weights(spec)


def test_kind_weights_steer_which_kinds_training_draws():
    from eris.data.roboref_expressions import KIND_WEIGHTS

    only_ordinal = {k: 0.0 for k in KIND_WEIGHTS} | {"ordinal": 1.0}
    kinds = [get_sample("train", i, long_side=SIDE, kind_weights=only_ordinal).kind for i in range(12)]
    assert set(kinds) <= {"ordinal", "absent"} and kinds.count("ordinal") >= 8
    again = get_sample("train", 3, long_side=SIDE, kind_weights=only_ordinal)
    first = get_sample("train", 3, long_side=SIDE, kind_weights=only_ordinal)
    assert again.phrase == first.phrase and np.array_equal(again.mask, first.mask)
    # No weights: the defaults, so val stays what it was.
    assert get_sample("val", 5, long_side=SIDE).phrase == get_sample("val", 5, long_side=SIDE, kind_weights=None).phrase


def test_kind_weights_need_roboref_in_the_training_data(capsys):
    from eris.data.datasets import train_dataset
    from eris.train import build_parser

    with pytest.raises(ValueError, match="RoboRef only"):
        train_dataset("shapes", 64, kind_weights={"location": 0.5})
    ds = train_dataset("shapes:1+roboref:1", 64, kind_weights={"location": 0.5})
    assert ds is not None
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--out", "r", "--kind-weights", "where=1"])
    assert exc.value.code == 2 and "--kind-weights: unknown RoboRef phrase kind 'where'" in capsys.readouterr().err
    assert build_parser().parse_args(["--out", "r", "--kind-weights", "depth=0.4"]).kind_weights == {"depth": 0.4}


def test_sequence_eval_scores_sweeps_and_equal_rules_agree(bundle, capsys):
    """Two frames of one val scene through a tiny bundle: every rule is scored on the same
    frames, a bonus of 1 chooses exactly what choosing afresh does, and the middle view of a
    zero-degree sweep is the sample's own frame."""
    from eris.sequence_eval import identity, main as sequence_main, sweep_frames

    s = next(get_sample("val", i) for i in range(10) if get_sample("val", i).target is not None)
    (image, masks), = list(sweep_frames(s.scene, 1, 0.0))
    assert np.array_equal(image, s.image) and np.array_equal(masks[s.target], s.mask)
    assert identity(s.mask, masks) == s.target and identity(np.zeros_like(s.mask), masks) is None
    assert sequence_main(["--bundle", str(bundle / "bundle"), "--precision", "fp32", "--threads", "1",
                          "--n", "1", "--frames", "2", "--bonus", "1", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"args", "fresh", "sticky x1", "sticky x3"}
    assert out["sticky x1"]["mIoU"] == out["fresh"]["mIoU"] is not None
    assert out["fresh"]["sequences_with_a_switch"].endswith("/1")
    assert out["args"]["where_words"] is True
    assert sequence_main(["--bundle", str(bundle / "bundle"), "--precision", "fp32", "--threads", "1",
                          "--n", "1", "--frames", "1", "--no-where-words"]) == 0
    assert json.loads(capsys.readouterr().out)["args"]["where_words"] is False


def _six_distinct_objects():
    from eris.data.roboref import RoboObject

    cats = ["cube", "ball", "duck", "mug", "lego", "ring"]
    colours = ["white", "red", "blue", "green", "black", "orange"]
    return [RoboObject(c, col, 0.05, pixels=500, visible=1.0, cx=0.1 + 0.15 * i, cy=0.5, depth=0.5 + 0.05 * i,
                       position=(0.1 * i, 0.0, 0.0)) for i, (c, col) in enumerate(zip(cats, colours))]


def test_colour_weights_steer_which_targets_training_draws():
    from eris.data.roboref_expressions import generate_expression

    objects = _six_distinct_objects()

    def white_share(weights):
        targets = [generate_expression(objects, np.random.default_rng([3, i]), colour_weights=weights)[0]
                   for i in range(300)]
        return np.mean([objects[t].colour == "white" for t in targets])

    # Six colours, one object each: uniform draws give white about 1/6; white=5 about 5/10.
    assert 0.08 < white_share(None) < 0.26
    assert white_share({"white": 5.0}) > 0.38
    assert white_share({"white": 0.0}) == 0.0
    # No weights draw exactly as before (val and test phrases unchanged).
    a = generate_expression(objects, np.random.default_rng(11))
    b = generate_expression(objects, np.random.default_rng(11), colour_weights=None)
    assert a == b


def test_colour_weights_parse_validate_and_reach_the_train_cli(capsys):
    from eris.data.datasets import train_dataset
    from eris.data.roboref_expressions import colour_weights
    from eris.train import build_parser

    assert colour_weights(" white=3, pink=2 ") == {"white": 3.0, "pink": 2.0}
    for spec, message in [("grey=2", "unknown RoboRef colour 'grey'"), ("white", "not COLOUR=NUMBER"),
                          ("white=lots", "not COLOUR=NUMBER"), ("white=-1", "non-negative")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            colour_weights(spec)
    with pytest.raises(ValueError, match="colour weights apply to rendered RoboRef only"):
        train_dataset("shapes", 64, colour_weights={"white": 3.0})
    ds = train_dataset("shapes:1+roboref:1", 64, colour_weights={"white": 3.0})
    assert ds.sources[1].colour_weights == {"white": 3.0} and not hasattr(ds.sources[0], "colour_weights")
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--out", "r", "--colour-weights", "grey=1"])
    assert exc.value.code == 2 and "--colour-weights: unknown RoboRef colour 'grey'" in capsys.readouterr().err
    assert build_parser().parse_args(["--out", "r", "--colour-weights", "white=5"]).colour_weights == {"white": 5.0}
