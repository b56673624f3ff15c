"""quantize/: the calibration reader's feeds, INT8 of a tiny model, what the manifest records."""

import json
import shutil

import numpy as np
import pytest

from pi_runtime.bundle import load_manifest, verify_bundle
from pi_runtime.segmenter import Segmenter
from quantize.__main__ import main as quantize_main
from quantize.calib import CalibrationReader, build_shapes_calibration, read_pairs


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    build_shapes_calibration(out, 6, long_side=160)
    return out


def test_shipped_calibration_set_is_what_the_command_rebuilds(tmp_path):
    from pathlib import Path

    shipped = read_pairs(Path(__file__).resolve().parents[1] / "calib_data")
    assert len(shipped) >= 200
    build_shapes_calibration(tmp_path, 3)
    rebuilt = read_pairs(tmp_path)
    assert [p for _, p in rebuilt] == [p for _, p in shipped[:3]]
    assert all(path.is_file() for path, _ in shipped)


def test_reader_yields_fixed_shape_feeds_with_the_phrase_tensors(bundle, calib):
    seg = Segmenter(bundle / "bundle", "fp32", threads=1)
    pairs = read_pairs(calib)
    reader = CalibrationReader(pairs, seg._text, seg._text_outputs, seg.tokenize, 640, 32, seg.max_tokens)
    feeds = []
    while (f := reader.get_next()) is not None:
        feeds.append(f)
    assert len(feeds) == 6
    names = set(seg.manifest["graphs"]["image"]["fp32"]["inputs"])
    for f, (_, phrase) in zip(feeds, pairs):
        assert set(f) == names
        assert f["image"].shape == (1, 640, 640, 3) and f["image"].dtype == np.uint8
        assert f["token_mask"].shape == (1, 32) and f["token_mask"].dtype == np.float32
        n = int(f["token_mask"].sum())
        ids, _ = seg.tokenize(phrase)
        assert n == ids.shape[1] and f["token_mask"][0, :n].all()  # real tokens first, padding after
        # padded token features equal the unpadded ones on the real tokens
        unpadded = seg.encode(phrase)
        assert np.allclose(f["text_tokens"][:, :n], unpadded["text_tokens"], atol=1e-5)
    reader.rewind()
    assert np.array_equal(reader.get_next()["image"], feeds[0]["image"])


def test_bad_manifest_line_is_named(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"image": "a.jpg", "phrase": "x"}\n{"image": "b.jpg"}\n')
    with pytest.raises(ValueError, match="manifest.jsonl:2"):
        read_pairs(tmp_path)


def test_quantize_tiny_model_records_its_choices(bundle, calib, tmp_path):
    b = shutil.copytree(bundle / "bundle", tmp_path / "b")
    assert quantize_main(["--bundle", str(b), "--calib", str(calib), "--compare-n", "2", "--holdout-n", "2",
                          "--sensitivity-n", "1", "--methods", "minmax,entropy", "--threads", "1",
                          "--op-sets", "Conv;all", "--latency-runs", "3"]) == 0
    m = load_manifest(b)
    q = m["graphs"]["image"]["int8"]["quantization"]
    assert q["scheme"] in ("S8S8", "U8S8") and q["calibration"] in ("minmax", "entropy")
    assert {(c["scheme"], c["method"]) for c in q["compared"]} == {(s, k) for s in ("S8S8", "U8S8")
                                                                  for k in ("minmax", "entropy")}
    assert isinstance(q["nodes_in_float"], list) and q["calibration_pairs"] == 6
    assert [r["op_types"] for r in q["op_sets_compared"]] == [["Conv"], None]
    rows = q["compared"] + q["op_sets_compared"]
    assert all("session" not in r and "label" not in r for r in rows)
    assert all(r["ms"] > 0 for r in rows if "error" not in r) and any("error" not in r for r in q["compared"])
    assert q["op_types"] in (["Conv"], "all")
    assert "image_int8.onnx" in m["files"]
    # int8 weights are half the fp16 the float graph stores them in
    assert (b / "image_int8.onnx").stat().st_size < 0.55 * (b / "image_fp32.onnx").stat().st_size
    assert verify_bundle(b) == {"fp32": [1, 1, 16, 24], "int8": [1, 1, 16, 24]}
    # no float weight left in the INT8 graph that fp16 holds exactly is stored as fp32
    import onnx
    from onnx import numpy_helper

    left = [numpy_helper.to_array(i) for i in onnx.load(str(b / "image_int8.onnx")).graph.initializer]
    exact32 = [w for w in left if w.dtype == np.float32 and w.size >= 1024
               and np.array_equal(w.astype(np.float16).astype(np.float32), w)]
    assert not exact32 and q["float_weight_bytes"]["kept_fp32"] == sum(
        w.nbytes for w in left if w.dtype == np.float32 and w.size >= 1024)
    report = json.loads((b / "quantization_report.json").read_text())
    assert report["sensitivity"] and {"node", "op", "qdq_sqnr_db"} <= set(report["sensitivity"][0])
    tq = m["text_quantization"]
    assert [c["kind"] for c in tq["candidates"]] == ["dynamic_int8"]  # tiny vocabulary: no embedding candidate
    dyn = tq["candidates"][0]
    assert 0 <= dyn["min_cosine"] <= 1.0 + 1e-6 and dyn["accepted_cosine"] == (dyn["min_cosine"] >= 0.999)
    text_file = m["graphs"]["text"]["file"]
    if tq["chosen"]:
        assert text_file == dyn["file"] and "text.onnx" not in m["files"] and not (b / "text.onnx").exists()
    else:
        assert text_file == "text.onnx" and not (b / dyn["file"]).exists()
    # quantizing again (another op set, say) redoes the image graph and leaves the text graph be
    text_bytes = (b / text_file).read_bytes()
    assert quantize_main(["--bundle", str(b), "--calib", str(calib), "--compare-n", "2", "--holdout-n", "2",
                          "--sensitivity-n", "1", "--methods", "minmax", "--threads", "1", "--op-sets", "Conv"]) == 0
    again = load_manifest(b)
    assert again["graphs"]["image"]["int8"]["quantization"]["op_types"] == ["Conv"]
    assert again["graphs"]["text"] == m["graphs"]["text"] and again["text_quantization"] == tq
    assert (b / text_file).read_bytes() == text_bytes and verify_bundle(b)["int8"] == [1, 1, 16, 24]


def test_collect_from_a_folder_skips_bad_files(tmp_path, capsys):
    from PIL import Image

    from quantize.collect import main as collect_main

    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((900, 1200, 3), 40 * i, np.uint8)).save(src / f"p{i}.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (tmp_path / "phrases.txt").write_text("the red mug\n\nthe blue cup\n")
    assert collect_main(["--from-folder", str(src), "--n", "10", "--out", str(tmp_path / "c"),
                         "--phrases", str(tmp_path / "phrases.txt")]) == 0
    assert "broken.jpg" in capsys.readouterr().err
    pairs = read_pairs(tmp_path / "c")
    assert [p for _, p in pairs] == ["the red mug", "the blue cup", "the red mug"]
    assert Image.open(pairs[0][0]).size == (640, 480)


def test_collect_camera_without_picamera2_says_what_to_do(tmp_path, monkeypatch):
    import sys

    from quantize.collect import main as collect_main

    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(SystemExit, match="picamera2.*--from-folder"):
        collect_main(["--camera", "--n", "1", "--out", str(tmp_path), "--phrase", "x"])


def test_candidates_are_timed_alternately():
    """Each candidate's median comes from calls interleaved with the others' (a drifting machine
    slows all alike), and the slower graph reads slower."""
    import time

    from quantize.__main__ import alternating_latency_ms

    calls = []

    class Fake:
        def __init__(self, name, seconds):
            self.name, self.seconds = name, seconds

        def run(self, outputs, feeds):
            calls.append(self.name)
            time.sleep(self.seconds)

    fast, slow = alternating_latency_ms([Fake("a", 0.001), Fake("b", 0.006)], {}, runs=4)
    assert calls == ["a", "b"] * 5  # one warm-up round, then four timed rounds in turn
    assert 0.9 < fast < slow and slow > 5.0


def test_holdout_alternates_between_the_val_sets_and_names_an_unknown_one(bundle):
    from eris.data import roboref, shapes
    from pi_runtime.preprocess import letterbox
    from quantize.__main__ import holdout_feeds

    seg = Segmenter(bundle / "bundle", "fp32", threads=1, long_side=160)  # small scenes: order and content count
    feeds = holdout_feeds(seg, 3)
    expected = [shapes.get_sample("val", 0, long_side=160), roboref.get_sample("val", 0, long_side=160),
                shapes.get_sample("val", 1, long_side=160)]
    for f, s in zip(feeds, expected, strict=True):
        assert np.array_equal(f["image"][0], letterbox(s.image, 160, seg.divisor)[0])
        assert np.array_equal(f["token_mask"], seg.encode(s.phrase)["token_mask"])
    with pytest.raises(SystemExit, match="refcoco"):
        holdout_feeds(seg, 1, ("shapes", "refcoco"))
