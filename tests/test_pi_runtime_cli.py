"""python -m pi_runtime batch mode: outputs, resume, bad input, and no training-side imports."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pi_runtime.__main__ import main as runtime_main
from pi_runtime.batch import assign_ids, read_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(d / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (90, 90), dtype=np.uint8)).save(d / "gray.png")              # grayscale
    Image.fromarray(rng.integers(0, 255, (64, 48, 4), dtype=np.uint8)).save(d / "rgba.png")           # RGBA
    Image.fromarray(rng.integers(0, 65535, (50, 70), dtype=np.uint16)).save(d / "deep.png")          # 16-bit
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).convert("P").save(d / "pal.png")  # palette
    Image.fromarray(rng.integers(0, 255, (8, 6, 3), dtype=np.uint8)).save(d / "tiny.png")             # tiny
    (d / "empty.jpg").write_bytes(b"")
    good = (d / "rgb.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(good[: len(good) // 3])                                                 # truncated
    (d / "junk.png").write_bytes(b"definitely not a png")
    return d


def _run(bundle, *args):
    return runtime_main(["--bundle", str(bundle / "bundle"), "--threads", "1", "--precision", "fp32", *args])


def test_batch_writes_masks_results_and_lists_bad_files(bundle, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(bundle, "--input", str(photos), "--text", "the red mug", "--output", str(out), "--overlay") == 1
    err = capsys.readouterr().err
    for bad in ("empty.jpg: empty file", "cut.jpg: cannot read", "junk.png: cannot read"):
        assert bad in err
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(l["id"] for l in lines) == ["deep", "gray", "pal", "rgb", "rgba", "tiny"]
    for line in lines:
        src = Image.open(photos / Path(line["image"]).name)
        mask = Image.open(out / line["mask"])
        assert mask.size == src.size and set(np.unique(np.asarray(mask))) <= {0, 255}
        assert {"found", "score", "bbox", "centroid", "area", "text_ms", "image_ms"} <= set(line)
        assert (out / f"{line['id']}.overlay.jpg").is_file()
    assert not list(out.glob(".*"))  # no temporary files left


def test_rerun_skips_finished_items_and_repairs_a_cut_line(bundle, photos, tmp_path, capsys):
    out = tmp_path / "out"
    good = [str(photos / n) for n in ("rgb.jpg", "gray.png", "tiny.png")]
    assert _run(bundle, "--input", *good[:2], "--text", "cup", "--output", str(out)) == 0
    with (out / "results.jsonl").open("a") as f:
        f.write('{"id": "tiny", "ima')  # killed mid-line
    before = (out / "rgb.png").stat().st_mtime_ns
    capsys.readouterr()
    assert _run(bundle, "--input", *good, "--text", "cup", "--output", str(out)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == 2 and summary["done"] == 1
    assert (out / "rgb.png").stat().st_mtime_ns == before
    ids = [json.loads(l)["id"] for l in (out / "results.jsonl").read_text().splitlines()]
    assert ids == ["rgb", "gray", "tiny"]


def test_manifest_with_a_bad_line_runs_the_rest(bundle, photos, tmp_path, capsys):
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("\n".join([json.dumps({"image": str(photos / "rgb.jpg"), "phrase": "the cup", "id": "a"}),
                                   "{broken json",
                                   json.dumps({"image": str(photos / "gray.png"), "phrase": "   "}),
                                   json.dumps({"image": str(photos / "tiny.png"), "phrase": "the star"})]) + "\n")
    items, errors = read_manifest(manifest)
    assert [i.id for i in assign_ids(items)[0]] == ["a", "gray", "tiny"] and errors[0].startswith(f"{manifest}:2:")
    assert _run(bundle, "--input", str(manifest), "--output", str(tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert "jobs.jsonl:2" in err and "gray.png: phrase is empty" in err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["a.png", "tiny.png"]


def test_empty_phrase_and_missing_bundle_exit_non_zero(bundle, photos, tmp_path, capsys):
    assert _run(bundle, "--input", str(photos / "rgb.jpg"), "--text", "  ", "--output", str(tmp_path / "o")) == 2
    assert "phrase is empty" in capsys.readouterr().err
    assert runtime_main(["--bundle", str(tmp_path / "nope"), "--input", str(photos / "rgb.jpg"), "--text", "x",
                         "--output", str(tmp_path / "o")]) == 2
    assert "manifest.json: missing" in capsys.readouterr().err


def test_cli_never_imports_the_training_side(bundle, photos, tmp_path):
    code = (
        "import sys, runpy; sys.argv = ['pi_runtime', '--bundle', sys.argv[1], '--input', sys.argv[2], "
        "'--text', 'cup', '--output', sys.argv[3], '--threads', '1'];\n"
        "try:\n    runpy.run_module('pi_runtime', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'transformers', 'eris', 'convert', 'quantize'})\n"
        "print('IMPORTED', bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(bundle / "bundle"), str(photos / "rgb.jpg"),
                           str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert "IMPORTED []" in proc.stdout, proc.stdout + proc.stderr
    assert (tmp_path / "o" / "rgb.png").is_file()


def test_regions_flag_reaches_the_segmenter_and_bad_values_are_refused(bundle, photos, tmp_path, monkeypatch, capsys):
    import pi_runtime.__main__ as cli

    made = []
    real = cli.Segmenter.from_bundle
    monkeypatch.setattr(cli.Segmenter, "from_bundle",
                        lambda *a, **k: made.append(k.get("regions")) or real(*a, **k))
    image = str(photos / "rgb.jpg")
    assert _run(bundle, "--input", image, "--text", "cup", "--output", str(tmp_path / "a"), "--no-grow") == 0
    assert _run(bundle, "--input", image, "--text", "cup", "--output", str(tmp_path / "b"), "--regions", "all") == 0
    assert made == ["best", "all"]
    best, every = (np.asarray(Image.open(tmp_path / d / "rgb.png")) > 0 for d in ("a", "b"))
    assert not (best & ~every).any()  # one region kept out of every pixel over the threshold
    flips = []
    monkeypatch.setattr(cli.Segmenter, "from_bundle", lambda *a, **k: flips.append(k.get("flip_average")) or real(*a, **k))
    assert _run(bundle, "--input", image, "--text", "cup", "--output", str(tmp_path / "d"), "--flip-average") == 0
    assert _run(bundle, "--input", image, "--text", "cup", "--output", str(tmp_path / "e")) == 0
    assert flips == [True, False]
    assert (tmp_path / "d" / "rgb.png").is_file()
    where = []
    monkeypatch.setattr(cli.Segmenter, "from_bundle", lambda *a, **k: where.append(k.get("where_words")) or real(*a, **k))
    assert _run(bundle, "--input", image, "--text", "cup", "--output", str(tmp_path / "f"), "--no-where-words") == 0
    assert _run(bundle, "--input", image, "--text", "cup", "--output", str(tmp_path / "g")) == 0
    assert where == [False, True]
    switches = []
    monkeypatch.setattr(cli.Segmenter, "from_bundle",
                        lambda *a, **k: switches.append((k.get("grow"), k.get("generic_pass"))) or real(*a, **k))
    assert _run(bundle, "--input", image, "--text", "cup", "--output", str(tmp_path / "h"), "--no-grow",
                "--no-generic-pass") == 0
    assert _run(bundle, "--input", image, "--text", "cup", "--output", str(tmp_path / "i")) == 0
    assert switches == [(False, False), (True, True)]
    with pytest.raises(SystemExit) as exc:
        _run(bundle, "--input", image, "--text", "cup", "--output", str(tmp_path / "c"), "--regions", "most")
    assert exc.value.code == 2 and "--regions" in capsys.readouterr().err
