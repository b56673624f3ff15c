"""Hostile input, one test per defect of the reliability issue: traversal ids, silent overwrites,
bad items that used to stop a run, memory, malformed bundles, temp files, disk full, the preview
server under idle/slow clients, two writers, phrase rules, and the order of checks."""

import errno
import hashlib
import json
import os
import shutil
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pi_runtime import batch as batch_mod
from pi_runtime.__main__ import main as runtime_main
from pi_runtime.batch import _DirLock, check_id
from pi_runtime.bundle import BundleError, load_manifest, verify_bundle
from pi_runtime.phrases import PhraseError, check_phrase, printable
from pi_runtime.preprocess import ImageError, load_image
from pi_runtime.segmenter import Segmenter
from tests.test_pi_runtime_cli import _run


@pytest.fixture
def img(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(d / "a.jpg")
    return d


def _manifest(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# 1. no write outside --output ------------------------------------------------------------------

@pytest.mark.parametrize("bad_id,why", [("../../x", "'/'"), ("/abs/x", "'/'"), ("a\\b", "'\\'"), ("..", "starts with '.'"),
                                        (".hidden", "starts with '.'"), ("a\x00b", "NUL"), ("x" * 300, "limit is 120"),
                                        ("\x1b[31mred", "control"), ("\ud800", "not encodable"), ("", "empty")])
def test_unsafe_ids_are_refused_by_name(bad_id, why):
    with pytest.raises(batch_mod.ItemError, match=why.replace("\\", "\\\\").replace("[", "\\[")):
        check_id(bad_id)


def test_traversal_ids_write_nothing_outside_output(bundle, img, tmp_path, capsys):
    before = _files(tmp_path)
    rows = [{"id": i, "image": str(img / "a.jpg"), "phrase": "the cup"} for i in ("../../x", "/tmp/eris-abs-x", "ok")]
    m = _manifest(tmp_path / "jobs.jsonl", rows)
    assert _run(bundle, "--input", str(m), "--output", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "jobs.jsonl:1: id ../../x contains a '/'" in err and "jobs.jsonl:2:" in err
    new = _files(tmp_path) - before - {"jobs.jsonl"}
    assert new == {"out/ok.png", "out/results.jsonl"}
    assert not Path("/tmp/eris-abs-x.png").exists()
    lines = [json.loads(l) for l in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [l["mask"] for l in lines] == ["ok.png"]


# 2. no silent overwrite; resume keys on (id, image, phrase) ---------------------------------------

def test_same_stem_and_same_image_two_phrases_get_distinct_masks(bundle, img, tmp_path, capsys):
    (img / "b").mkdir()
    shutil.copy(img / "a.jpg", img / "b" / "a.jpg")
    assert _run(bundle, "--input", str(img / "a.jpg"), str(img / "b" / "a.jpg"), "--text", "cup",
                "--output", str(tmp_path / "o1")) == 0
    lines = [json.loads(l) for l in (tmp_path / "o1" / "results.jsonl").read_text().splitlines()]
    assert len({l["mask"] for l in lines}) == 2 and all(l["mask"].startswith("a-") for l in lines)
    rows = [{"image": str(img / "a.jpg"), "phrase": p} for p in ("the cup", "the ball")]
    assert _run(bundle, "--input", str(_manifest(tmp_path / "m.jsonl", rows)), "--output", str(tmp_path / "o2")) == 0
    assert len(list((tmp_path / "o2").glob("a-*.png"))) == 2


def test_duplicate_ids_are_an_error_for_the_second(bundle, img, tmp_path, capsys):
    rows = [{"id": "x", "image": str(img / "a.jpg"), "phrase": p} for p in ("the cup", "the ball")]
    assert _run(bundle, "--input", str(_manifest(tmp_path / "m.jsonl", rows)), "--output", str(tmp_path / "o")) == 1
    assert "m.jsonl:2: id x already used by" in capsys.readouterr().err
    lines = (tmp_path / "o" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["phrase"] == "the cup"


def test_resume_reruns_an_id_whose_phrase_changed(bundle, img, tmp_path, capsys):
    m = tmp_path / "m.jsonl"
    _manifest(m, [{"id": "x", "image": str(img / "a.jpg"), "phrase": "the cup"}])
    assert _run(bundle, "--input", str(m), "--output", str(tmp_path / "o")) == 0
    _manifest(m, [{"id": "x", "image": str(img / "a.jpg"), "phrase": "the ball"}])
    capsys.readouterr()
    assert _run(bundle, "--input", str(m), "--output", str(tmp_path / "o")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["done"] == 1 and summary["skipped"] == 0
    lines = [json.loads(l) for l in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert [l["phrase"] for l in lines] == ["the ball"]


# 3. one bad item never stops the run -------------------------------------------------------------

def _bad_images(d: Path) -> dict[str, str]:
    (d / "ihdr.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00")       # truncated IHDR chunk
    bmp = bytearray(open(d / "a.jpg", "rb").read()[:0])
    header = struct.pack("<2sIHHIIiiHHIIiiII", b"BM", 70, 0, 0, 54, 40, 2, 2, 1, 7, 0, 16, 0, 0, 0, 0)
    (d / "raw.bmp").write_bytes(bytes(bmp) + header + b"\x00" * 16)                    # 7 bits per pixel
    (d / "dir.png").mkdir()
    (d / "loop.png").symlink_to(d / "loop.png")
    os.mkfifo(d / "fifo.png")
    return {"ihdr.png": "cannot read image", "raw.bmp": "cannot read image", "dir.png": "is a directory",
            "loop.png": "cannot open", "fifo.png": "is a FIFO"}


def test_each_bad_image_class_is_reported_and_the_run_goes_on(bundle, img, tmp_path, capsys):
    expected = _bad_images(img)
    rows = [{"image": str(img / name), "phrase": "the cup"} for name in expected]
    rows.insert(2, {"image": str(img / "a.jpg"), "phrase": "the cup", "id": "good"})
    rows.append({"image": str(img / "a.jpg"), "phrase": "\ud800 cup", "id": "surrogate"})
    m = _manifest(tmp_path / "m.jsonl", rows)
    with m.open("ab") as f:
        f.write(b'{"image": "a.jpg", "phrase": "caf\xe9"}\n')                              # not UTF-8
    assert _run(bundle, "--input", str(m), "--output", str(tmp_path / "o")) == 1
    err = capsys.readouterr().err
    for name, why in expected.items():
        assert any(name in line and why in line for line in err.splitlines()), (name, err)
    assert "lone surrogate" in err and "not UTF-8 text" in err and f"{m}:8:" in err
    assert (tmp_path / "o" / "good.png").is_file()
    for name in expected:
        with pytest.raises(ImageError):
            load_image(img / name)


def test_live_replay_skips_a_corrupt_frame_and_stdin_survives_bad_utf8(bundle, img, tmp_path, capsys):
    from pi_runtime.stream import PhraseBox, watch_stdin

    (img / "b_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00")
    (img / ".b_tmp.jpg").write_bytes(b"partial")                                        # a dotfile is not a frame
    assert _run(bundle, "--source", str(img), "--text", "cup", "--json") == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1 and "b_bad.png" in err and ".b_tmp" not in err

    class Tty:
        def __init__(self, data):
            import io

            self.buffer = io.BytesIO(data)

        def isatty(self):
            return True

    import io

    box, log = PhraseBox("cup"), io.StringIO()
    watch_stdin(box, Tty(b"\xff\xfe bad\nthe red ball\n"), log).join(5)
    assert box.get() == "the red ball" and "not UTF-8" in log.getvalue()


# 4. memory ------------------------------------------------------------------------------------------

def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width * 3 + 1) * 4)                                  # 4 rows of data
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_bomb_sized_header_is_refused_without_allocating(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 12000, 12000)
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="144.0 Mpx, over the 40 Mpx limit"):
            load_image(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6  # decoding would take 432 MB


def test_large_jpeg_is_drafted_and_the_mask_keeps_full_size(bundle, tmp_path):
    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 1536, 3), dtype=np.uint8)).save(big)
    assert load_image(big, draft_long_side=320).shape[1] < 1536 // 2 + 1
    assert _run(bundle, "--input", str(big), "--text", "cup", "--output", str(tmp_path / "o"),
                "--long-side", "128") == 0
    assert Image.open(tmp_path / "o" / "big.png").size == (1536, 1024)


def test_one_phrase_limit_everywhere_and_huge_manifest_lines(bundle, img, tmp_path, capsys):
    with pytest.raises(PhraseError, match="limit is 200"):
        check_phrase("x" * 201)
    m = _manifest(tmp_path / "m.jsonl", [{"image": str(img / "a.jpg"), "phrase": "x" * 100_000},
                                         {"image": str(img / "a.jpg"), "phrase": "y" * 300}])
    assert _run(bundle, "--input", str(m), "--output", str(tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert "m.jsonl:1: line is" in err and "the limit is 65536" in err and "limit is 200" in err


# 5. the bundle is checked whole ------------------------------------------------------------------

def _edited_bundle(bundle, tmp_path, edit):
    b = shutil.copytree(bundle / "bundle", tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    edit(m)
    data = json.dumps(m).encode()
    (b / "manifest.json").write_bytes(data)
    (b / "manifest.sha256").write_text(hashlib.sha256(data).hexdigest() + "  manifest.json\n")
    return b


def _swap(m):
    text, image = m["graphs"]["text"]["file"], m["graphs"]["image"]["fp32"]["file"]
    m["graphs"]["text"]["file"], m["graphs"]["image"]["fp32"]["file"] = image, text


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(files={}), "graphs.text.file: .* is not listed"),
    (lambda m: m["graphs"]["text"].update(file="/etc/passwd"), "graphs.text.file: '/etc/passwd' must be a plain"),
    (lambda m: m["graphs"]["image"]["fp32"].update(file="../x.onnx"), "fp32.file: '../x.onnx' must be a plain"),
    (lambda m: m["preprocessing"].update(long_side=0), "preprocessing.long_side: 0 is out of range"),
    (lambda m: m["output"].update(threshold=2.0), "output.threshold: 2.0 is out of range"),
    (lambda m: m["output"].update(threshold=None), "output.threshold: must be int or float, got null"),
    (lambda m: m["preprocessing"].update(size_divisor=0), "preprocessing.size_divisor: 0 is out of range"),
    (lambda m: m["output"].update(stride=0), "output.stride: 0 is out of range"),
    (lambda m: m.pop("tokenizer"), "tokenizer: missing"),
    (lambda m: m["graphs"].pop("image"), "graphs.image: missing"),
])
def test_malformed_manifests_are_refused_naming_the_key(bundle, tmp_path, edit, match):
    b = _edited_bundle(bundle, tmp_path, edit)
    with pytest.raises(BundleError, match=match):
        load_manifest(b)


def test_dropped_graph_and_swapped_graphs_are_caught_by_every_entry_point(bundle, tmp_path, capsys):
    from convert.verify import main as verify_main
    from pi_runtime.doctor import main as doctor_main

    b = _edited_bundle(bundle, tmp_path, _swap)
    with pytest.raises(BundleError, match="not the text graph"):
        Segmenter(b, "fp32", threads=1)
    with pytest.raises(BundleError, match="not the text graph"):
        verify_bundle(b)
    assert verify_main([str(b)]) == 1
    assert doctor_main(["--bundle", str(b)]) == 1
    assert runtime_main(["--bundle", str(b), "--input", str(tmp_path), "--text", "cup", "--output",
                         str(tmp_path / "o")]) == 2
    err_lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error")]
    assert err_lines and all("Traceback" not in l for l in err_lines)
    unsigned = shutil.copytree(bundle / "bundle", tmp_path / "u")
    (unsigned / "manifest.sha256").unlink()
    with pytest.raises(BundleError, match="manifest.sha256: missing"):
        load_manifest(unsigned)


# 6, 7. temp files and a full disk --------------------------------------------------------------------

def test_stale_temp_files_are_removed_and_dotfiles_are_not_inputs(bundle, img, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    stale = out / ".a.overlay.jpg.tmp-k1ll3d.jpg"                                        # a kill mid-overlay
    stale.write_bytes(b"half")
    (img / ".a.jpg.tmp-x.jpg").write_bytes(b"half")
    assert _run(bundle, "--input", str(img), "--text", "cup", "--output", str(out), "--overlay") == 0
    assert not stale.exists() and sorted(p.name for p in out.iterdir()) == ["a.overlay.jpg", "a.png", "results.jsonl"]


def test_disk_full_is_one_line_and_a_clean_state(bundle, img, tmp_path, capsys, monkeypatch):
    for i in range(3):
        shutil.copy(img / "a.jpg", img / f"c{i}.jpg")
    real = batch_mod.atomic_write
    calls = []

    def full_after_two(path, write):
        calls.append(path)
        if len(calls) > 2:
            tmp = Path(path).parent / f".{Path(path).name}.tmp-full.png"
            tmp.write_bytes(b"")                                                         # what a torn write leaves
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(batch_mod, "atomic_write", full_after_two)
    out = tmp_path / "o"
    assert _run(bundle, "--input", str(img), "--text", "cup", "--output", str(out)) == 1
    err = capsys.readouterr().err
    assert [l for l in err.splitlines() if l.startswith("error")] == [
        f"error: {out}: no space left on device after 2 new items; free space and rerun to continue"]
    assert not list(out.glob(".*"))
    assert all(json.loads(l) for l in (out / "results.jsonl").read_text().splitlines())
    monkeypatch.setattr(batch_mod, "atomic_write", real)
    assert _run(bundle, "--input", str(img), "--text", "cup", "--output", str(out)) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 4


# 8. the preview server ---------------------------------------------------------------------------------

@pytest.fixture
def server(monkeypatch):
    from pi_runtime import serve
    from pi_runtime.stream import PhraseBox

    monkeypatch.setattr(serve, "SOCKET_TIMEOUT_S", 0.5)
    monkeypatch.setattr(serve, "MAX_CONNECTIONS", 4)
    s = serve.PreviewServer(PhraseBox("cup"), "127.0.0.1", 0).start()
    yield s
    s.close()


def _request(server, raw: bytes, read=True) -> bytes:
    host, port = server.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as c:
        c.sendall(raw)
        return c.recv(4096) if read else b""


def test_idle_sockets_are_capped_and_time_out(server):
    host, port = server.httpd.server_address[:2]
    idle = [socket.create_connection((host, port), timeout=5) for _ in range(6)]
    try:
        time.sleep(0.2)
        refused = 0
        for s in idle[4:]:
            if s.recv(64).startswith(b"HTTP/1.1 503"):
                refused += 1
        assert refused == 2
        assert sum(t.name.startswith("Thread") or "process_request" in t.name for t in threading.enumerate()) <= 8
        time.sleep(1.0)                                                                  # past the socket timeout
        assert _request(server, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.0 200")
    finally:
        for s in idle:
            s.close()


def test_strict_headers_short_bodies_and_quiet_disconnects(server, capsys):
    bad = _request(server, b"POST /phrase HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\ntext=x")
    assert b" 400 " in bad.split(b"\r\n")[0]
    t0 = time.monotonic()
    short = _request(server, b"POST /phrase HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\ntext=ball")
    assert time.monotonic() - t0 < 3 and server.box.get() == "cup"
    assert short == b"" or b" 400 " in short.split(b"\r\n")[0]
    _request(server, b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n", read=False)        # leaves at once
    ok = _request(server, b"POST /phrase HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\ntext=the+ball")
    assert b" 200 " in ok.split(b"\r\n")[0] and server.box.get() == "the ball"
    time.sleep(0.3)
    assert "Traceback" not in capsys.readouterr().err


# 9. notes: two writers, phrase rules, terminal escapes ---------------------------------------------

def test_a_second_writer_on_one_output_directory_is_refused(bundle, img, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    lock = _DirLock(out)
    try:
        assert _run(bundle, "--input", str(img), "--text", "cup", "--output", str(out)) == 2
        assert "another batch run is writing" in capsys.readouterr().err
    finally:
        lock.close()
    assert _run(bundle, "--input", str(img), "--text", "cup", "--output", str(out)) == 0


@pytest.mark.parametrize("phrase,why", [(None, "must be a string"), ("\x00", "empty"), ("\u200b", "no letters"),
                                        ("🙂🙂", "no letters"), ("  \t ", "empty")])
def test_content_free_phrases_are_refused(bundle, phrase, why):
    seg = Segmenter(bundle / "bundle", "fp32", threads=1)
    with pytest.raises(PhraseError, match=why):
        seg.segment(np.zeros((32, 32, 3), np.uint8), phrase)


def test_terminal_escapes_never_reach_the_terminal():
    assert "\x1b" not in printable("\x1b[2J\x1b[31mred mug")
    assert check_phrase("the \x1b[31mred mug") == "the [31mred mug"


# 10. order of checks ---------------------------------------------------------------------------------

def test_arguments_and_sources_are_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_picamera(name, *a, **k):
        if name.startswith("picamera2"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_picamera)
    missing = str(tmp_path / "no-bundle")
    assert runtime_main(["--bundle", missing, "--camera", "--text", "cup"]) == 2
    assert "picamera2 is not importable" in capsys.readouterr().err
    assert runtime_main(["--bundle", missing, "--input", str(tmp_path), "--text", "", "--output", "o"]) == 2
    assert "phrase is empty" in capsys.readouterr().err
