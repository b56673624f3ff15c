"""pi_runtime.segmenter on a tiny exported bundle: same logits as the training side, results."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from eris.data.shapes import get_sample
from eris.evaluate import predict_logits
from pi_runtime.bundle import BundleError
from pi_runtime.segmenter import PhraseError, Segmenter


@pytest.fixture(scope="module")
def seg(bundle):
    return Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1)


def test_matches_the_training_side_at_the_original_resolution(seg, bundle, tokenizer):
    from eris import load_checkpoint

    model, tok, _ = load_checkpoint(bundle / "ckpt")
    for i in (0, 1, 3):  # 1:1, 16:9 and 4:3 scenes
        s = get_sample("val", i, long_side=200)
        got, timings = seg.logits(s.image, s.phrase)
        want = predict_logits(model, tok, s.image, s.phrase, 640).numpy()
        assert got.shape == s.image.shape[:2]
        assert np.abs(got - want).max() <= 2e-3 * (1 + np.abs(want).max())
        assert set(timings) == {"text", "image", "post"}


def test_paths_pil_and_arrays_give_the_same_result(seg, tmp_path):
    s = get_sample("val", 2, long_side=160)
    Image.fromarray(s.image).save(tmp_path / "x.png")
    a = seg.segment(tmp_path / "x.png", s.phrase)
    b = seg.segment(Image.fromarray(s.image), s.phrase)
    c = seg.segment(s.image, s.phrase)
    assert np.array_equal(a.probability, c.probability) and np.array_equal(b.probability, c.probability)
    assert c.mask.shape == s.image.shape[:2] and c.mask.dtype == bool
    assert c.found == (c.score >= 0.5) and c.found == bool(c.mask.any())
    many = seg.segment(s.image, [s.phrase, "the blue star"])
    assert [r.phrase for r in many] == [s.phrase, "the blue star"]
    assert np.array_equal(many[0].probability, c.probability)


def _fake_grid(seg, monkeypatch, grid: np.ndarray) -> np.ndarray:
    """Makes the image graph "output" ``grid`` for a blank image of the grid's size (stride-grid
    cells mapped 1:1 to image pixels), so results can be checked against known logits. A blank
    image has no edges for the outline to move to: the refinement is turned off (its own test
    paints an image)."""
    from pi_runtime.preprocess import Letterbox

    h, w = grid.shape
    box = Letterbox((h, w), (h * seg.stride, w * seg.stride), (h * seg.stride, w * seg.stride))
    monkeypatch.setattr(seg, "_raw_logits", lambda image, phrase: (grid, box, {"text": 0.0, "image": 0.0}))
    monkeypatch.setattr(seg, "refine", False)
    return np.zeros((h, w, 3), np.uint8)


def _fake_runs(seg, monkeypatch, grids: dict, default: np.ndarray, asked: list) -> None:
    """Makes ``seg``'s image graph "output" ``grids[phrase]`` (else ``default``), the stride grid
    mapped 1:1 to a blank image's pixels, 1 ms of text and 10 ms of image a run, and records each
    phrase asked for in ``asked``; the refinement off, as in :func:`_fake_grid`."""
    from pi_runtime.preprocess import Letterbox

    h, w = default.shape
    box = Letterbox((h, w), (h * seg.stride, w * seg.stride), (h * seg.stride, w * seg.stride))

    def fake(image, phrase):
        asked.append(phrase)
        return grids.get(phrase, default).copy(), box, {"text": 1.0, "image": 10.0}

    monkeypatch.setattr(seg, "_raw_logits", fake)
    monkeypatch.setattr(seg, "refine", False)


def test_result_geometry_from_a_known_mask(seg, monkeypatch):
    logits = np.full((40, 60), -5.0, np.float32)
    logits[10:20, 30:50] = 5.0
    r = seg.segment(_fake_grid(seg, monkeypatch, logits), "x")
    assert r.bbox == (30, 10, 50, 20) and r.centroid == (39.5, 14.5)
    assert r.area == pytest.approx(200 / 2400) and r.found and r.score > 0.99
    assert r.to_json()["bbox"] == [30, 10, 50, 20]
    assert set(r.timings) == {"text", "image", "post"}


def test_the_outline_moves_to_the_frames_edges_unless_turned_off(bundle, monkeypatch):
    """The logits mark a square a pixel off the painted one (cells 1:1 with pixels here); refined
    (the cells guided by the frame, then the mask's outline), the mask is the painted square but
    for a corner pixel or so; with refine=False it is the logits' square and their sigmoid."""
    logits = np.full((40, 60), -5.0, np.float32)
    logits[11:23, 21:35] = 5.0
    image = np.full((40, 60, 3), 40, np.uint8)
    image[10:22, 20:34] = (200, 60, 30)
    painted = (image[..., 0] == 200)
    results = {}
    for flag in (True, False):
        s = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, refine=flag)
        _fake_grid(s, monkeypatch, logits)
        monkeypatch.setattr(s, "refine", flag)
        results[flag] = s.segment(image, "x")
    assert results[True].bbox == (20, 10, 34, 22) and (results[True].mask != painted).sum() <= 4
    assert results[False].bbox == (21, 11, 35, 23) and results[False].mask.sum() == 12 * 14
    assert np.array_equal(results[False].probability, 1 / (1 + np.exp(-logits)))
    guided = results[True].probability > 0.5        # the cells, filtered with the frame as the guide
    print("DBG", (guided != painted).sum(), ((results[False].probability>0.5) != painted).sum())


def test_best_region_mode_keeps_one_object_and_all_keeps_every_one(bundle, monkeypatch):
    logits = np.full((40, 60), -5.0, np.float32)
    logits[5:15, 5:15] = 2.0      # the vaguer candidate
    logits[20:30, 35:55] = 4.0    # the one the model is surest of
    best = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1)
    every = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, regions="all")
    assert best.regions == "best"
    r_best = best.segment(_fake_grid(best, monkeypatch, logits), "x")
    r_all = every.segment(_fake_grid(every, monkeypatch, logits), "x")
    assert np.array_equal(r_all.mask, logits > 0)
    want = np.zeros_like(r_all.mask)
    want[20:30, 35:55] = True
    assert np.array_equal(r_best.mask, want) and r_best.bbox == (35, 20, 55, 30)
    assert np.array_equal(r_best.probability, r_all.probability) and r_best.score == r_all.score
    with pytest.raises(ValueError, match="regions 'most'"):
        Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, regions="most")


def test_a_region_track_keeps_the_last_frames_object_and_forgets_when_nothing_is_found(seg, monkeypatch):
    from pi_runtime.regions import RegionTrack

    def frame(a: float, b: float) -> np.ndarray:
        logits = np.full((40, 60), -6.0, np.float32)
        logits[5:15, 5:15] = a
        logits[20:30, 35:45] = b
        return _fake_grid(seg, monkeypatch, logits)

    on_a = lambda r: r.mask[10, 10] and not r.mask[25, 40]
    on_b = lambda r: r.mask[25, 40] and not r.mask[10, 10]
    track = RegionTrack(bonus=1.5)
    assert on_a(seg.segment(frame(4.0, 3.5), "x", track=track))
    assert on_a(seg.segment(frame(3.5, 4.0), "x", track=track))   # B a little surer: the mask stays
    assert on_b(seg.segment(frame(3.5, 4.0), "x"))                 # without the track it jumps
    found_threshold = seg.found_threshold
    monkeypatch.setattr(seg, "found_threshold", 0.999)              # next frame: judged absent
    assert not seg.segment(frame(2.0, 1.0), "x", track=track).mask.any() and track.last is None
    monkeypatch.setattr(seg, "found_threshold", found_threshold)
    assert on_b(seg.segment(frame(3.5, 4.0), "x", track=track))   # afresh after nothing was found
    with pytest.raises(ValueError, match="one phrase"):
        seg.segment(frame(3.5, 4.0), ["x", "y"], track=track)


def test_best_region_mode_at_full_resolution_keeps_the_kept_cells_pixels(seg, bundle, monkeypatch):
    """On a real letterbox (stride 4 cells upsampled to pixels), the kept mask is the "all" mask
    restricted to the pixels the kept region's cells reach, and the other region disappears."""
    every = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, regions="all")
    image = np.zeros((120, 160, 3), np.uint8)
    _, box = seg.canvas(image)
    gh, gw = -(-box.resized_hw[0] // seg.stride), -(-box.resized_hw[1] // seg.stride)
    grid = np.full((gh, gw), -6.0, np.float32)
    grid[2:8, 2:8] = 1.0
    grid[15:25, 20:35] = 5.0
    for s in (seg, every):
        monkeypatch.setattr(s, "_raw_logits", lambda image, phrase: (grid, box, {"text": 0.0, "image": 0.0}))
        monkeypatch.setattr(s, "refine", False)   # a blank frame: no edges to refine to
    r_best, r_all = seg.segment(image, "x"), every.segment(image, "x")
    assert r_best.mask.shape == (120, 160) and r_best.mask.any()
    assert not (r_best.mask & ~r_all.mask).any()           # a subset of the thresholded pixels
    y0, x0, y1, x1 = (v * 120 // gh for v in (2, 2, 8, 8))
    assert r_all.mask[y0:y1, x0:x1].any() and not r_best.mask[: 120 * 10 // gh, : 160 * 10 // gw].any()
    assert r_best.mask.sum() == r_all.mask[120 * 12 // gh:, 160 * 17 // gw:].sum()


def test_the_kept_region_grows_into_its_rim_unless_turned_off(bundle, monkeypatch):
    """The cut region takes in the cells joined to it over the threshold less GROW_MARGIN, and
    those cells' pixels come into the mask; with grow=False the mask is the cut region's."""
    from pi_runtime.regions import GROW_MARGIN

    logits = np.full((40, 60), -6.0, np.float32)
    logits[8:22, 28:52] = -GROW_MARGIN / 2     # the object's less sure part
    logits[12:18, 34:46] = 4.0                  # the part the model is sure of
    logits[25:35, 5:15] = 2.0                   # another candidate, away from it
    results = {}
    for flag in (True, False):
        s = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, grow=flag)
        results[flag] = s.segment(_fake_grid(s, monkeypatch, logits), "x")
    assert results[True].bbox == (28, 8, 52, 22) and results[True].mask.sum() == 14 * 24
    assert results[False].bbox == (34, 12, 46, 18) and results[False].mask.sum() == 6 * 12
    assert not results[True].mask[25:35, 5:15].any()


def test_text_tensors_are_cached(seg, monkeypatch):
    calls = []
    run = seg._text.run
    monkeypatch.setattr(seg, "_text", type("S", (), {"run": lambda self, *a: calls.append(1) or run(*a)})())
    seg._cache.clear()
    image = np.zeros((64, 64, 3), np.uint8)
    for _ in range(3):
        seg.segment(image, "the red ring")
    assert len(calls) == 1


def test_bad_phrases_and_long_phrases(seg):
    with pytest.raises(PhraseError):
        seg.segment(np.zeros((32, 32, 3), np.uint8), "   ")
    with pytest.warns(UserWarning, match="tokens"):
        ids, _ = seg.tokenize("a b " * 45)  # 180 characters, 92 tokens: under the length limit, over max_tokens
    assert ids.shape == (1, 32) and ids[0, -1] == 102
    assert seg.segment(np.zeros((32, 32, 3), np.uint8), "la tasse rouge à gauche — 赤いカップ").mask.shape == (32, 32)


def test_missing_precision_is_named(bundle):
    with pytest.raises(BundleError, match="int8"):
        Segmenter.from_bundle(bundle / "bundle", precision="int8")


def test_exif_rotated_photo_gives_a_mask_in_the_upright_orientation(seg, tmp_path):
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 255, (100, 160, 3), dtype=np.uint8))  # stored 160 wide, 100 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    image.save(tmp_path / "phone.jpg", exif=exif)
    r = seg.segment(tmp_path / "phone.jpg", "the red mug")
    assert r.mask.shape == (160, 100)  # displayed 100 wide, 160 high
    upright = np.asarray(Image.open(tmp_path / "phone.jpg").transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(seg.segment(upright, "the red mug").probability, r.probability)


def test_very_large_photo_is_downscaled_not_refused(seg, tmp_path):
    Image.new("RGB", (6000, 4000), (40, 90, 200)).save(tmp_path / "big.jpg", quality=70)
    r = seg.segment(tmp_path / "big.jpg", "the blue wall")
    assert r.mask.shape == (4000, 6000) and r.probability.dtype == np.float32


def test_non_ascii_phrases_segment(seg):
    image = np.zeros((64, 64, 3), np.uint8)
    for phrase in ("la tasse rouge à gauche", "красная чашка", "赤いマグカップ", "🍵 cup"):
        r = seg.segment(image, phrase)
        assert r.phrase == phrase and r.mask.shape == (64, 64)


def test_long_side_override_runs_the_graph_smaller(bundle):
    seg = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, long_side=320)
    r = seg.segment(np.zeros((480, 640, 3), np.uint8), "the red mug")
    assert seg.long_side == 320 and r.mask.shape == (480, 640)
    with pytest.raises(ValueError, match="multiple of 32"):
        Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, long_side=300)


def test_auto_precision_is_measured_once_and_cached(bundle, tmp_path, monkeypatch):
    """With both graphs in the bundle, auto times them, caches the faster by (bundle, CPU, threads),
    and the next load reads the cache instead of timing again."""
    import shutil

    from pi_runtime import precision as prec

    b = shutil.copytree(bundle / "bundle", tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    # a second "precision" that is the same fp32 graph under another name is enough to exercise the choice
    m["graphs"]["image"]["int8"] = dict(m["graphs"]["image"]["fp32"])
    data = json.dumps(m).encode()
    (b / "manifest.json").write_bytes(data)
    (b / "manifest.sha256").write_text(hashlib.sha256(data).hexdigest() + "  manifest.json\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    real = prec.measure
    monkeypatch.setattr(prec, "measure", lambda *a, **k: calls.append(1) or {"int8": 2.0, "fp32": 3.0})
    seg = Segmenter(b, "auto", threads=1)
    assert seg.precision == "int8" and seg.precision_source.startswith("measured now") and calls == [1]
    cached = json.loads((tmp_path / "cache" / "eris-pi" / "precision.json").read_text())
    (key, entry), = cached.items()
    assert key.endswith("|1") and entry["precision"] == "int8"
    again = Segmenter(b, "auto", threads=1)
    assert again.precision == "int8" and again.precision_source.startswith("measured earlier") and calls == [1]
    assert Segmenter(b, "auto", threads=2) and calls == [1, 1]  # another thread count is another key
    monkeypatch.setattr(prec, "measure", real)
    ms = real({"fp32": seg._image}, seg.encode("cup"), 64, 32)
    assert set(ms) == {"fp32"} and ms["fp32"] > 0


def test_flip_average_makes_the_model_mirror_equivariant(bundle):
    """Averaging with the mirrored canvas and the mirrored phrase: the mirrored image with left and
    right swapped in the phrase gives the mirrored probabilities (exactly, up to float error, where
    the canvas needs no padding), which the random model alone does not."""
    image = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    plain = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, long_side=128)
    both = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, long_side=128, flip_average=True)
    a, b = (s.segment(image, "the leftmost cube") for s in (plain, both))
    a_m, b_m = (s.segment(mirrored, "the rightmost cube") for s in (plain, both))
    assert np.allclose(b.probability, b_m.probability[:, ::-1], atol=1e-5)
    assert not np.allclose(a.probability, a_m.probability[:, ::-1], atol=1e-3)
    assert not np.allclose(a.probability, b.probability, atol=1e-3)


def test_mirror_phrase_swaps_sides_only():
    from pi_runtime.phrases import mirror_phrase

    assert mirror_phrase("Left of the leftmost cube, not the bright one") == "Right of the rightmost cube, not the bright one"
    assert mirror_phrase("the ball nearest to me, at the back") == "the ball nearest to me, at the back"


def test_a_where_word_in_the_phrase_picks_the_region_by_place_unless_turned_off(bundle, monkeypatch):
    logits = np.full((40, 60), -5.0, np.float32)
    logits[5:15, 5:15] = 3.0      # a candidate on the left
    logits[20:30, 35:55] = 4.0    # the one the model is surest of, on the right
    on = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1)
    off = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, where_words=False)
    assert on.where_words and not off.where_words
    left = lambda r: r.mask[10, 10] and not r.mask[25, 40]
    assert left(on.segment(_fake_grid(on, monkeypatch, logits), "the mug on the left"))
    assert not left(off.segment(_fake_grid(off, monkeypatch, logits), "the mug on the left"))
    assert not left(on.segment(_fake_grid(on, monkeypatch, logits), "the mug"))


def test_a_relation_phrase_asks_for_its_reference_and_keeps_the_candidate_in_the_relation(bundle, monkeypatch):
    from pi_runtime.preprocess import Letterbox

    scene = np.full((30, 60), -5.0, np.float32)
    scene[15:21, 4:10] = 4.0      # a mug on the left, the one the model is surest of
    scene[15:21, 40:46] = 2.0     # a mug right of the duck
    scene[15:21, 24:30] = 3.0     # the duck, lit up by the full phrase too
    duck = np.full((30, 60), -5.0, np.float32)
    duck[15:21, 24:30] = 5.0
    asked = []

    def fake(image, phrase):
        asked.append(phrase)
        box = Letterbox((30, 60), (30 * on.stride, 60 * on.stride), (30 * on.stride, 60 * on.stride))
        return (duck if phrase == "the duck" else scene), box, {"text": 1.0, "image": 10.0}

    on = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1)
    off = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, where_words=False)
    image = np.zeros((30, 60, 3), np.uint8)  # the letterbox maps grid cells 1:1 to its pixels
    for s in (on, off):
        monkeypatch.setattr(s, "_raw_logits", fake)
        monkeypatch.setattr(s, "refine", False)   # a blank frame: no edges to refine to
    r = on.segment(image, "the mug right of the duck")
    assert asked == ["the mug right of the duck", "the mug", "the duck"]   # the plain description too
    assert r.mask[18, 42] and not r.mask[18, 6] and not r.mask[18, 26]
    assert r.timings["image"] == 30.0 and r.timings["text"] == 3.0    # every run counted
    asked.clear()
    r = off.segment(image, "the mug right of the duck")
    assert asked == ["the mug right of the duck"] and r.mask[18, 6]
    asked.clear()
    every = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, regions="all")
    monkeypatch.setattr(every, "_raw_logits", fake)
    monkeypatch.setattr(every, "refine", False)   # a blank frame: no edges to refine to
    assert every.segment(image, "the mug right of the duck").mask[18, 6] and asked == ["the mug right of the duck"]


def test_the_plain_description_adds_the_objects_the_full_phrase_missed(bundle, monkeypatch):
    full = np.full((30, 60), -5.0, np.float32)
    full[15:21, 30:36] = 4.0      # the full phrase marks only the mug on the right
    plain = full.copy()
    plain[15:21, 4:10] = 2.0      # "the mug" also marks the one on the left, fainter
    plain[15:21, 30:36] = 1.0     # and the right one fainter than the full phrase did
    asked = []
    image = np.zeros((30, 60, 3), np.uint8)
    for flag in (True, False):
        seg = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, plain_pass=flag)
        _fake_runs(seg, monkeypatch, {"the mug": plain}, full, asked)
        asked.clear()
        r = seg.segment(image, "the leftmost mug")
        assert asked == (["the leftmost mug", "the mug"] if flag else ["the leftmost mug"])
        assert r.mask[18, 6] == flag and r.mask[18, 32] != flag   # the left mug only with the plain pass
        cells, _, _ = seg._phrase_cells(image, "the leftmost mug")
        assert np.array_equal(cells, np.maximum(full, plain) if flag else full)   # cell by cell, the larger
        asked.clear()
        seg.segment(image, "the red mug")                         # nothing to strip: one run
        assert asked == ["the red mug"]
    assert Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, where_words=False) \
        .plain_phrase("the leftmost mug") is None


def test_a_region_the_check_rejects_is_split_where_two_objects_joined(bundle, monkeypatch):
    """A red duck (left) and a blue mug joined over the threshold by a low bridge are one region,
    whose crop's centre (the bridge, black) reads "mug". The check's rejected region is split at
    its two peaks and the duck found, for a where-word and for the category alone; "the cup" (no
    part is likely) and anything without the split are not found."""
    import pi_runtime.regions as regions
    from pi_runtime.categories import CategoryCheck
    from tests.test_categories import _FakeClassifier

    grid = np.full((30, 60), -5.0, np.float32)
    grid[10:20, 10:20] = 6.0      # the duck
    grid[10:20, 20:24] = 1.0      # the bridge over the threshold
    grid[10:20, 24:34] = 6.0      # the mug
    image = np.zeros((30, 60, 3), np.uint8)
    image[10:20, 10:20] = (255, 0, 0)
    image[10:20, 24:34] = (0, 0, 255)
    seg = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1)
    _fake_runs(seg, monkeypatch, {}, grid, [])
    seg.category_check = CategoryCheck(_FakeClassifier(), ["duck", "mug", "none"],
                                       {"duck": ["duck"], "mug": ["mug"], "cup": ["none"]},
                                       share=0.1, power=1.0, found_min=0.5)
    for phrase in ("the leftmost duck", "the duck"):
        r = seg.segment(image, phrase)
        assert r.found and r.mask[10:20, 10:20].all() and not r.mask[:, 24:].any()
    assert not seg.segment(image, "the cup").found
    monkeypatch.setattr(regions, "SPLIT_MARGINS", ())
    assert not seg.segment(image, "the leftmost duck").found and not seg.segment(image, "the duck").found


def test_the_generic_description_replaces_the_plain_one_where_the_category_check_can_choose(bundle, monkeypatch):
    """With a category check, "the leftmost duck" is also run as "the thing" (not "the duck"),
    the larger logit kept, and the check keeps the duck among the things."""
    from pi_runtime.categories import CategoryCheck
    from tests.test_categories import _FakeClassifier

    full = np.full((30, 60), -5.0, np.float32)
    full[10:20, 5:15] = 4.0       # the phrase marks a mug on the left, surely
    generic = full.copy()
    generic[10:20, 40:50] = 2.0   # "the thing" also marks the red duck on the right
    asked = []
    image = np.zeros((30, 60, 3), np.uint8)
    image[10:20, 40:50] = (255, 0, 0)   # the fake classifier calls a red crop a duck, anything else a mug
    check = CategoryCheck(_FakeClassifier(), ["duck", "mug", "none"], {"duck": ["duck"], "mug": ["mug"]},
                          share=0.1, power=1.0, found_min=0.5)
    for flag in (True, False):
        seg = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1, generic_pass=flag)
        _fake_runs(seg, monkeypatch, {"the thing": generic}, full, asked)
        seg.category_check = check
        asked.clear()
        r = seg.segment(image, "the leftmost duck")
        assert asked == ["the leftmost duck", "the thing" if flag else "the duck"]
        assert r.found == flag and r.mask[15, 45] == flag and not r.mask[15, 10]
        assert r.timings["image"] == 20.0
        asked.clear()
        seg.segment(image, "the red thing")                       # no category named: no generic pass
        assert asked == ["the red thing"]
        asked.clear()
        r = seg.segment(image, "the mug left of the duck")        # the reference's generic description is
        assert asked == (["the mug left of the duck", "the thing", "the duck"] if flag   # the target's: run once
                         else ["the mug left of the duck", "the mug", "the duck"])
        assert r.timings["image"] == 30.0
    seg = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1)
    assert seg.generic_pass and seg.category_check is None          # no check to choose: the plain description
    assert seg.generic_phrase("the leftmost duck") is None and seg.second_phrase("the leftmost duck") == "the duck"


def test_in_live_mode_a_relations_reference_stays_on_the_last_frames_object(bundle, monkeypatch):
    from pi_runtime.preprocess import Letterbox
    from pi_runtime.regions import RegionTrack

    scene = np.full((30, 60), -5.0, np.float32)
    scene[15:21, 4:10] = 3.0      # mug 1, nearest duck 1
    scene[15:21, 50:56] = 3.0     # mug 2, nearest duck 2
    ducks = {}

    def fake(image, phrase):
        box = Letterbox((30, 60), (30 * seg.stride, 60 * seg.stride), (30 * seg.stride, 60 * seg.stride))
        return (ducks["grid"] if phrase == "the duck" else scene), box, {"text": 0.0, "image": 0.0}

    def frame(duck1: float, duck2: float) -> np.ndarray:
        grid = np.full((30, 60), -5.0, np.float32)
        grid[15:21, 20:26], grid[15:21, 36:42] = duck1, duck2
        ducks["grid"] = grid
        return np.zeros((30, 60, 3), np.uint8)

    seg = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1)
    monkeypatch.setattr(seg, "_raw_logits", fake)
    monkeypatch.setattr(seg, "refine", False)   # a blank frame: no edges to refine to
    on_mug1 = lambda r: r.mask[18, 6] and not r.mask[18, 52]
    phrase = "the mug next to the duck"
    track = RegionTrack(bonus=1.5)
    assert on_mug1(seg.segment(frame(5.0, 4.8), phrase, track=track))
    assert on_mug1(seg.segment(frame(4.8, 5.0), phrase, track=track))     # duck 2 a little surer: both stay
    assert track.reference.last is not None and track.reference.last[18, 22]
    assert not on_mug1(seg.segment(frame(4.8, 5.0), phrase))              # afresh: the other duck, the other mug
    track.forget()
    assert track.last is None and track.reference.last is None


def test_the_category_check_weighs_the_candidates_and_finds_nothing_when_none_fits(bundle, monkeypatch):
    from pi_runtime.categories import CategoryCheck
    from pi_runtime.relations import parse_relation
    from tests.test_categories import _FakeClassifier

    logits = np.full((30, 60), -5.0, np.float32)
    logits[10:20, 5:15] = 4.0     # the region the model is surest of, on the left
    logits[10:20, 40:50] = 3.0    # another candidate, on the right: the red one
    seg = Segmenter.from_bundle(bundle / "bundle", precision="fp32", threads=1)
    assert seg.category_check is None   # the tiny bundle has none
    image = _fake_grid(seg, monkeypatch, logits)
    image[10:20, 40:50] = (255, 0, 0)   # the fake classifier calls a red crop a duck, anything else a mug
    right = lambda r: r.found and r.mask[15, 45] and not r.mask[15, 10]
    assert not right(seg.segment(image, "the duck"))
    seg.category_check = CategoryCheck(_FakeClassifier(), ["duck", "mug", "none"], {"duck": ["duck"], "mug": ["mug"]},
                                       share=0.1, power=1.0, found_min=0.5)
    assert right(seg.segment(image, "where is the duck"))
    r = seg.segment(image, "the mug")
    assert r.found and r.mask[15, 10] and not r.mask[15, 45]
    r = seg.segment(image, "the thing")             # no category named: the model's choice
    assert r.found and r.mask[15, 10]
    r = seg.segment(np.zeros_like(image), "the duck")  # no candidate looks like a duck
    assert not r.found and not r.mask.any() and r.score > 0.9
    # a relation's reference is weighed by the reference's noun
    box = seg._raw_logits(image, "x")[1]
    ref = seg._reference_region(parse_relation("the mug left of the duck"), logits, None, image, box)
    assert ref[15, 45] and not ref[15, 10]
