"""The LiteRT backend on a committed tiny bundle with ONNX and ``.tflite`` graphs
(``tests/data/make_litert_bundle.py``): parity with PyTorch's logits, the choice between
backends, the CLI with neither onnxruntime nor torch importable, and refusals of bad ``.tflite``
files and missing packages. Skips, saying why, where ai-edge-litert is absent."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pi_runtime.bundle import BundleError, load_manifest, validate_manifest, verify_bundle, write_manifest
from pi_runtime.preprocess import letterbox_into, load_image

pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed (pip install '.[tflite]')")

from pi_runtime.segmenter import Segmenter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "tests" / "data" / "litert_tiny"
EXAMPLES = [e for e in map(json.loads, (REPO / "examples" / "manifest.jsonl").read_text().splitlines())
            if e["id"].startswith("shaperef_test_")]  # the scenes reference.npz was computed on
REFERENCE = np.load(BUNDLE / "reference.npz")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """``auto`` choices are timed and cached per machine: keep each test's cache to itself."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _raw_logits(seg: Segmenter, i: int) -> np.ndarray:
    """The image graph's logits on the static 96x128 canvas the reference was computed on."""
    canvas, _ = letterbox_into(load_image(REPO / "examples" / EXAMPLES[i]["image"]), (96, 128))
    return seg._image.run(None, {"image": canvas[None], **seg.encode(EXAMPLES[i]["phrase"])})[0]


def _litert_only(tmp_path) -> Path:
    """The fixture without its ONNX graphs: what a LiteRT-only bundle looks like."""
    b = tmp_path / "lite"
    shutil.copytree(BUNDLE, b)
    m = json.loads((b / "manifest.json").read_text())
    for name in ("text.onnx", "image_fp32.onnx"):
        (b / name).unlink()
        del m["files"][name]
    del m["graphs"]["text"], m["graphs"]["image"]
    m["files"] = list(m["files"])
    write_manifest(b, m)
    return b


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-4), ("fp16", 5e-3), ("int8", 5e-2)])
def test_litert_graphs_match_pytorch(precision, atol):
    seg = Segmenter(BUNDLE, precision, threads=1, backend="litert")
    assert (seg.backend, seg.precision, seg.input_hw) == ("litert", precision, (96, 128))
    for i in range(len(EXAMPLES)):
        want = REFERENCE[f"logits_{i}"]
        got = _raw_logits(seg, i)
        assert got.shape == want.shape == (1, 1, 24, 32)
        assert np.abs(got - want).max() <= atol * max(1.0, np.abs(want).max())
        assert np.mean((got > 0) == (want > 0)) >= (1.0 if precision == "fp32" else 0.97)


def test_onnx_graphs_of_the_same_bundle_match_pytorch_too():
    seg = Segmenter(BUNDLE, "fp32", threads=1, backend="onnxruntime")
    for i in range(len(EXAMPLES)):
        assert np.abs(_raw_logits(seg, i) - REFERENCE[f"logits_{i}"]).max() <= 1e-4


def test_auto_picks_litert_for_a_litert_only_bundle_and_masks_come_at_image_size(tmp_path):
    seg = Segmenter(_litert_only(tmp_path), "int8", threads=1)
    assert seg.backend == "litert"
    image = load_image(REPO / "examples" / EXAMPLES[0]["image"])
    r = seg.segment(image, EXAMPLES[0]["phrase"])
    assert r.mask.shape == image.shape[:2] and 0.0 <= r.score <= 1.0


@pytest.mark.parametrize("faster", ["litert int8", "onnxruntime fp32"])
def test_auto_backend_takes_the_one_measured_faster_and_caches_it(faster, monkeypatch):
    from pi_runtime import precision as prec

    timed = []

    def fake_timing(runs):
        timed.append(sorted(runs))
        if len(runs) == 2 and any(k.startswith("onnxruntime") for k in runs):  # the backend race
            return {k: (5.0 if k == faster else 9.0) for k in runs}
        return {k: (1.0 if k == "int8" else 2.0) for k in runs}  # each backend's precision race: int8

    monkeypatch.setattr(prec, "time_alternately", fake_timing)
    seg = Segmenter(BUNDLE, threads=1)
    assert f"{seg.backend} {seg.precision}" == faster
    assert seg.backend_source.startswith("measured now")
    n = len(timed)
    again = Segmenter(BUNDLE, threads=1)
    assert (again.backend, again.precision) == (seg.backend, seg.precision)
    assert again.backend_source.startswith("measured earlier") and len(timed) == n  # from the cache


def test_verify_runs_every_graph_of_both_backends():
    assert verify_bundle(BUNDLE) == {"fp32": [1, 1, 16, 24],
                                     **{f"litert_{p}": [1, 1, 24, 32] for p in ("fp16", "fp32", "int8")}}


def test_onnxruntime_backend_on_a_litert_only_bundle_is_refused(tmp_path):
    with pytest.raises(BundleError, match="no ONNX graphs"):
        Segmenter(_litert_only(tmp_path), backend="onnxruntime")


def test_long_side_cannot_resize_a_static_graph():
    with pytest.raises(ValueError, match="static, 96x128"):
        Segmenter(BUNDLE, "int8", long_side=320, backend="litert")


BLOCK = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path, target=None):\n"
    "        if name.split('.')[0] in BLOCKED:\n"
    "            raise ImportError(f'blocked: {name}')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _cli(blocked: set, *args: str) -> subprocess.CompletedProcess:
    code = (f"BLOCKED = {sorted(blocked)!r}\n" + BLOCK +
            "import runpy; sys.argv = ['pi_runtime', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('pi_runtime', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'onnxruntime', 'eris', 'convert', 'quantize'})\n"
            "print('IMPORTED', bad); sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_cli_segments_the_examples_with_litert_alone(tmp_path):
    """A LiteRT-only install: onnxruntime and torch cannot be imported; ``auto`` falls back to the
    bundle's .tflite graphs and the run completes."""
    proc = _cli({"onnxruntime", "torch"}, "--bundle", str(BUNDLE), "--input", str(REPO / "examples" / "manifest.jsonl"),
                "--output", str(tmp_path / "o"), "--threads", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IMPORTED []" in proc.stdout
    every = [json.loads(line)["id"] for line in (REPO / "examples" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == sorted(f"{i}.png" for i in every)
    assert len((tmp_path / "o" / "results.jsonl").read_text().splitlines()) == len(every)


def test_litert_backend_without_any_litert_package_says_what_to_install(tmp_path):
    proc = _cli({"ai_edge_litert", "tflite_runtime"}, "--bundle", str(BUNDLE), "--backend", "litert", "--input",
                str(REPO / "examples" / "manifest.jsonl"), "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "pip install ai-edge-litert" in proc.stderr and "tflite-runtime" in proc.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))


def test_tflite_runtime_under_numpy_2_is_refused_with_the_reason(monkeypatch):
    import types

    from pi_runtime import litert

    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = object
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # None in sys.modules: import fails
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    monkeypatch.setattr(litert.np, "__version__", "2.1.0")
    with pytest.raises(litert.BackendUnavailable, match="numpy 2.1.0.*_ARRAY_API"):
        litert.load_interpreter()
    monkeypatch.setattr(litert.np, "__version__", "1.26.4")
    assert litert.load_interpreter() == (object, "tflite_runtime")


def _copy(tmp_path) -> Path:
    b = tmp_path / "b"
    shutil.copytree(BUNDLE, b)
    return b


def _resign(b: Path, change=None) -> None:
    m = json.loads((b / "manifest.json").read_text())
    if change:
        change(m)
    m["files"] = list(m["files"])
    write_manifest(b, m)


def test_truncated_tflite_is_refused_naming_the_file(tmp_path):
    b = _copy(tmp_path)
    data = (b / "image_int8.tflite").read_bytes()
    (b / "image_int8.tflite").write_bytes(data[: len(data) // 3])
    _resign(b)  # checksums match the damaged file: LiteRT itself must refuse it
    with pytest.raises(BundleError, match="image_int8.tflite: LiteRT cannot load it"):
        Segmenter(b, "int8", backend="litert")


def test_a_file_that_is_not_tflite_is_refused(tmp_path):
    b = _copy(tmp_path)
    (b / "image_fp16.tflite").write_bytes(b"\x08\x01\x12\x04onnx" + bytes(100))
    _resign(b)
    with pytest.raises(BundleError, match="image_fp16.tflite: not a .tflite graph"):
        Segmenter(b, "fp16", backend="litert")


def test_swapped_tflite_graphs_are_refused_before_any_frame(tmp_path):
    b = _copy(tmp_path)

    def swap(m):
        lite = m["graphs"]["litert"]
        lite["text"]["file"], lite["image"]["fp32"]["file"] = lite["image"]["fp32"]["file"], lite["text"]["file"]
    _resign(b, swap)
    with pytest.raises(BundleError, match="not the text graph manifest.json describes"):
        Segmenter(b, "int8", backend="litert")


def test_manifest_input_hw_must_match_the_image_graphs():
    m = load_manifest(BUNDLE)
    m["graphs"]["litert"]["input_hw"] = [480, 640]
    with pytest.raises(BundleError, match=r"graphs.litert.image.\w+.input_shapes: image is not \[480, 640\]"):
        validate_manifest(m)


def test_doctor_lists_each_backend_and_the_graphs_it_can_run(tmp_path):
    from pi_runtime.doctor import run_checks

    rows = {check: (status, detail) for status, check, detail in run_checks(BUNDLE)}
    assert rows["backend litert"][0] == "OK" and "fp16, fp32, int8" in rows["backend litert"][1]
    assert rows["backend onnxruntime"][0] == "OK" and rows["backend onnxruntime"][1].endswith("graphs: fp32")
    assert rows["bundle"][0] == "OK" and "litert_int8" in rows["bundle"][1]
    rows = {check: (status, detail) for status, check, detail in run_checks(_litert_only(tmp_path))}
    assert "none (the bundle has no .onnx graphs)" in rows["backend onnxruntime"][1]
    assert rows["precision auto"][1].startswith("litert ")
