"""Live mode: the camera source (a fake Picamera2), replay, JSON lines, the preview server."""

import io
import json
import sys
import threading
import time
import types
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from pi_runtime.__main__ import main as runtime_main
from pi_runtime.segmenter import PhraseError, Segmenter
from pi_runtime.serve import PreviewServer
from pi_runtime.sources import CameraError, FrameGrabber, ImageFolderSource, PicameraSource
from pi_runtime.stream import MAX_PHRASE_CHARS, PhraseBox, run_stream

JSON_KEYS = {"frame", "time", "phrase", "found", "score", "bbox", "centroid", "area", "latency_ms"}


class FakePicamera2:
    """Mimics the picamera2 calls we use. Frames are a known RGB scene stored B, G, R, as picamera2's
    RGB888 is. ``unplug_after`` frames, every capture fails; ``plugged`` decides whether reopening works."""

    opened: list = []
    plugged = True

    def __init__(self, camera_num=0, unplug_after=None):
        if not FakePicamera2.plugged:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        self.num, self.config, self.started, self.frames = camera_num, None, False, 0
        self.unplug_after = unplug_after
        FakePicamera2.opened.append(self)

    def create_video_configuration(self, main=None, buffer_count=4):
        return {"main": dict(main), "buffer_count": buffer_count}

    def configure(self, config):
        assert config["main"]["format"] == "RGB888"
        self.config = config

    def start(self):
        assert self.config is not None, "configure() before start()"
        self.started = True

    def capture_array(self, name="main"):
        assert self.started and name == "main"
        if self.unplug_after is not None and self.frames >= self.unplug_after:
            raise RuntimeError("Device or resource busy")
        self.frames += 1
        w, h = self.config["main"]["size"]
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[:, : w // 2] = (255, 0, 0)      # left half red
        rgb[:, w // 2:] = (0, 0, 255)       # right half blue
        return rgb[:, :, ::-1].copy()       # in memory: B, G, R

    def stop(self):
        self.started = False

    def close(self):
        pass


@pytest.fixture(autouse=True)
def _reset_fake():
    FakePicamera2.opened, FakePicamera2.plugged = [], True


@pytest.fixture(scope="module")
def seg(bundle):
    return Segmenter(bundle / "bundle", "fp32", threads=1)


@pytest.fixture
def frames(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    (d / "002b.jpg").write_bytes(b"broken")
    return d


def test_camera_frames_come_out_rgb_at_the_configured_size():
    cam = PicameraSource((64, 48), picamera2_class=FakePicamera2)
    frame = cam.read()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    assert tuple(frame[0, 0]) == (255, 0, 0) and tuple(frame[0, -1]) == (0, 0, 255)
    assert FakePicamera2.opened[0].config["main"]["size"] == (64, 48)
    cam.close()


def test_unplugged_camera_reconnects_or_fails_clearly():
    cam = PicameraSource((32, 24), picamera2_class=lambda n: FakePicamera2(n, unplug_after=2), reconnect_delay=0)
    for _ in range(3):  # the third capture fails, the camera is reopened, the frame arrives
        assert cam.read().shape == (24, 32, 3)
    assert cam.reconnects == 1 and len(FakePicamera2.opened) == 2
    cam2 = PicameraSource((32, 24), picamera2_class=lambda n: FakePicamera2(n, unplug_after=0), reconnect_delay=0)
    FakePicamera2.plugged = False
    with pytest.raises(CameraError, match="did not come back after 3 reconnect attempts"):
        cam2.read()


def test_grabber_keeps_only_the_latest_frame():
    class Counter:
        live, n = True, 0

        def read(self):
            time.sleep(0.002)
            self.n += 1
            return np.full((2, 2, 3), self.n % 256, np.uint8) if self.n <= 200 else None

        def close(self):
            pass

    source = Counter()
    grabber = FrameGrabber(source)
    time.sleep(0.1)
    first = grabber.read()
    assert first[0, 0, 0] > 5  # not the first frame: older ones were dropped
    while grabber.read() is not None:
        time.sleep(0.01)
    assert grabber.dropped > 0
    grabber.close()


def test_replay_writes_one_json_line_per_frame_and_masks(seg, frames, tmp_path):
    out = io.StringIO()
    summary = run_stream(seg, ImageFolderSource(frames), PhraseBox("the red mug"), json_out=out,
                         save_dir=tmp_path / "masks", log=io.StringIO())
    lines = [json.loads(l) for l in out.getvalue().splitlines()]
    assert [l["frame"] for l in lines] == [0, 1, 2, 3] and summary["frames"] == 4
    for line in lines:
        assert set(line) == JSON_KEYS and line["phrase"] == "the red mug" and line["latency_ms"] > 0
    assert len(summary["skipped"]) == 1 and "002b.jpg" in summary["skipped"][0]
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert [m.name for m in masks] == ["000000.png", "000001.png", "000002.png", "000003.png"]
    assert Image.open(masks[0]).size == (128, 96)


def test_replay_passes_one_region_track_through_the_stream_unless_told_not_to(seg, frames):
    from pi_runtime.regions import RegionTrack

    class Recording:
        def __init__(self):
            self.tracks = []

        def segment(self, frame, phrase, track=None):
            self.tracks.append(track)
            return seg.segment(frame, phrase, track=track)

    sticky, fresh = Recording(), Recording()
    run_stream(sticky, ImageFolderSource(frames), PhraseBox("the red mug"), log=io.StringIO())
    run_stream(fresh, ImageFolderSource(frames), PhraseBox("the red mug"), sticky=False, log=io.StringIO())
    assert len(sticky.tracks) == 4 and isinstance(sticky.tracks[0], RegionTrack)
    assert all(t is sticky.tracks[0] for t in sticky.tracks)   # one memory for the whole stream
    assert fresh.tracks == [None] * 4


def test_cli_camera_path_with_a_fake_picamera2(bundle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    code = runtime_main(["--bundle", str(bundle / "bundle"), "--threads", "1", "--precision", "fp32", "--camera",
                         "--text", "the red half", "--json", "--frames", "3", "--capture-size", "64x48"])
    out = capsys.readouterr().out
    assert code == 0
    lines = [json.loads(l) for l in out.splitlines()]
    assert len(lines) == 3 and all(set(l) == JSON_KEYS for l in lines)
    assert FakePicamera2.opened[0].config["main"]["size"] == (64, 48)


def test_cli_camera_errors(bundle, monkeypatch, capsys):
    args = ["--bundle", str(bundle / "bundle"), "--threads", "1", "--camera", "--text", "cup"]
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails
    assert runtime_main(args) == 2
    err = capsys.readouterr().err
    assert "picamera2 is not importable" in err and "--source" in err
    FakePicamera2.plugged = False
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    assert runtime_main(args) == 2
    assert "cannot open camera 0" in capsys.readouterr().err


def test_camera_lost_mid_stream_exits_1(bundle, monkeypatch, capsys):
    monkeypatch.setattr("pi_runtime.sources.time.sleep", lambda s: None)

    class Flaky(FakePicamera2):
        def __init__(self, n=0):
            super().__init__(n, unplug_after=2)
            FakePicamera2.plugged = False  # the first open works, reopening does not

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=Flaky))
    code = runtime_main(["--bundle", str(bundle / "bundle"), "--threads", "1", "--camera", "--text", "cup",
                         "--json", "--capture-size", "64x48"])
    captured = capsys.readouterr()
    assert code == 1 and "stopped delivering frames" in captured.err
    assert 1 <= len(captured.out.splitlines()) <= 2


def test_cli_source_errors(bundle, tmp_path, capsys):
    base = ["--bundle", str(bundle / "bundle"), "--threads", "1", "--text", "cup"]
    assert runtime_main([*base, "--source", str(tmp_path / "nope")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert runtime_main(["--bundle", str(bundle / "bundle"), "--source", str(tmp_path), "--text", "  "]) == 2
    assert "--text: phrase is empty" in capsys.readouterr().err


def test_cli_no_sticky_reaches_the_stream(bundle, frames, monkeypatch):
    import pi_runtime.stream as stream

    seen = []
    real = stream.run_stream
    monkeypatch.setattr(stream, "run_stream", lambda *a, **k: seen.append(k["sticky"]) or real(*a, **k))
    base = ["--bundle", str(bundle / "bundle"), "--threads", "1", "--text", "cup", "--source", str(frames)]
    assert runtime_main(base) == 0 and runtime_main([*base, "--no-sticky"]) == 0
    assert seen == [True, False]


def _get(url, data=None):
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read() if "mjpg" not in url else r.read1(4096)


def test_preview_server_page_frames_and_phrase_changes():
    box = PhraseBox("the red mug")
    server = PreviewServer(box, "127.0.0.1", 0).start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        status, ctype, page = _get(server.url)
        assert status == 200 and ctype.startswith("text/html") and b'value="the red mug"' in page
        jpeg = io.BytesIO()
        Image.new("RGB", (32, 24), (200, 10, 10)).save(jpeg, format="JPEG")
        server.publish(jpeg.getvalue(), {"frame": 7, "phrase": "the red mug", "fps": 3.0, "latency_ms": 12.0,
                                         "found": True})
        status, ctype, body = _get(server.url + "frame.jpg")
        assert ctype == "image/jpeg" and Image.open(io.BytesIO(body)).size == (32, 24)
        status, ctype, body = _get(server.url + "stream.mjpg")
        assert ctype.startswith("multipart/x-mixed-replace") and b"Content-Type: image/jpeg" in body
        assert json.loads(_get(server.url + "status")[2])["frame"] == 7
        status, _, body = _get(server.url + "phrase", b"text=the+blue+cup")
        assert status == 200 and json.loads(body) == {"phrase": "the blue cup"} and box.get() == "the blue cup"
        for bad, message in ((b"text=" + b"a" * (MAX_PHRASE_CHARS + 1), b"limit is 200"), (b"text=+++", b"empty")):
            with pytest.raises(urllib.error.HTTPError) as exc:
                _get(server.url + "phrase", bad)
            assert exc.value.code == 400 and message in exc.value.read()
        with pytest.raises(urllib.error.HTTPError) as exc:
            _get(server.url + "phrase", b"text=" + b"a" * 5000)
        assert exc.value.code == 413
        assert box.get() == "the blue cup"
    finally:
        server.close()


def test_phrase_change_reaches_the_loop(seg):
    class Endless:
        live = False

        def read(self):
            time.sleep(0.01)
            return np.zeros((64, 64, 3), np.uint8)

        def close(self):
            pass

    box = PhraseBox("the red mug")
    server = PreviewServer(box, "127.0.0.1", 0).start()
    stop = threading.Event()
    thread = threading.Thread(target=run_stream, args=(seg, Endless(), box),
                              kwargs={"preview": server, "stop": stop, "log": io.StringIO()}, daemon=True)
    thread.start()
    try:
        _get(server.url + "phrase", b"text=a+green+bottle")
        deadline = time.time() + 20
        while server.status()["phrase"] != "a green bottle":
            assert time.time() < deadline, "the loop never used the new phrase"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
        server.close()


def test_phrase_box_rules():
    box = PhraseBox(" cup ")
    assert box.get() == "cup"
    with pytest.raises(PhraseError):
        box.set("   ")
    with pytest.raises(PhraseError, match="limit"):
        box.set("x" * (MAX_PHRASE_CHARS + 1))
    assert box.set("né 杯子") == "né 杯子"


def test_bench_prints_a_table_and_a_json_last_line(bundle, capsys):
    from pi_runtime.bench import main as bench_main

    assert bench_main(["--bundle", str(bundle / "bundle"), "--precision", "fp32", "--threads", "1", "--size", "128",
                       "--aspect", "4:3", "--runs", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    for key in ("image_p50_ms", "frame_p50_ms", "text_p50_ms", "peak_rss_mb", "precision", "threads", "fps",
                "cold_start_ms", "text_cached_p50_ms"):
        assert key in report
    assert report["precision"] == "fp32" and report["threads"] == 1
    assert report["frame_hw"] == [96, 128]
    assert report["input_hw"] == [96, 128]  # --size sets the model input; a 4:3 frame is not padded to a square
    assert report["text_cached_p50_ms"] < report["text_p50_ms"]
    assert any(line.startswith("image graph") for line in out)


def test_bench_profile_sums_node_time_by_op_type(bundle, capsys):
    """The tiny bundle's fp32 graph: three deformable convs (one GridSample each), two of them
    narrowed (a 1x1 Conv before the sampling); shares sum to one and match the ms."""
    import onnx

    from pi_runtime.bench import main as bench_main

    assert bench_main(["--bundle", str(bundle / "bundle"), "--precision", "fp32", "--threads", "1", "--size", "128",
                       "--aspect", "4:3", "--runs", "3", "--warmup", "1", "--profile"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    ops = report["profile"]
    graph = onnx.load(str(bundle / "bundle" / "image_fp32.onnx"))
    assert ops["GridSample"]["nodes"] == sum(n.op_type == "GridSample" for n in graph.graph.node) == 3
    assert ops["Conv"]["nodes"] == sum(n.op_type == "Conv" for n in graph.graph.node)
    assert sum(v["share"] for v in ops.values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(v["ms"] for v in ops.values()) == pytest.approx(report["node_ms"], rel=1e-3, abs=1e-3)
    assert list(ops) == sorted(ops, key=lambda k: -ops[k]["ms"])
    assert report["input_hw"] == [96, 128] and report["runs"] == 3
    assert any(line.startswith("GridSample") for line in out)


def test_doctor_reports_each_check_and_fails_on_a_broken_bundle(bundle, tmp_path, capsys):
    import shutil

    from pi_runtime.doctor import main as doctor_main

    assert doctor_main(["--bundle", str(bundle / "bundle")]) == 0
    out = capsys.readouterr().out
    for check in ("64-bit OS and Python", "backend onnxruntime", "backend litert", "CPU int8 dot-product", "camera", "bundle"):
        assert check in out
    assert all(line.split()[0] in {"OK", "WARN", "FAIL", "INFO"} for line in out.strip().splitlines())
    broken = shutil.copytree(bundle / "bundle", tmp_path / "b")
    (broken / "tokenizer.json").write_text("{}")
    assert doctor_main(["--bundle", str(broken)]) == 1
    assert "FAIL  bundle" in capsys.readouterr().out


def test_bench_times_a_peer_model_alternately(bundle, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    from pi_runtime.bench import main as bench_main

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], [0.01] * 108)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "peer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    peer = tmp_path / "peer.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), peer)
    args = ["--bundle", str(bundle / "bundle"), "--precision", "fp32", "--threads", "1", "--size", "64",
            "--runs", "3", "--warmup", "1", "--peer", str(peer)]
    assert bench_main([*args, "--peer-input", "1x3x64x64"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["peer"]
    assert report["input"] == {"x": [1, 3, 64, 64]}
    assert report["peer_p50_ms"] > 0 and report["ratio"] > 0  # (the p50s are rounded to 0.01 ms; the ratio is not)
    assert bench_main([*args[:-1], str(tmp_path / "missing.onnx")]) == 2
