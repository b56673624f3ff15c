"""eris.profile: the JSON line, the part sum, and FLOPs that scale with pixels."""

import json

import pytest

from eris.profile import main, profile_model


def test_cli_prints_json_last(capsys):
    assert main(["--config", "stdc1-minilm", "--size", "320", "--tokens", "12"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    for key in ("params", "gflops", "gflops_backbone", "gflops_text", "gflops_eris"):
        assert result[key] > 0, key
    assert result["gflops"] == pytest.approx(result["gflops_backbone"] + result["gflops_text"] + result["gflops_eris"])
    assert result["params"] == result["params_backbone"] + result["params_text"] + result["params_eris"]
    assert [l.split()[0] for l in lines[2:6]] == ["backbone", "text", "ERIS", "total"]


def test_image_flops_scale_with_pixels_and_text_with_tokens():
    a = profile_model("stdc1-minilm", 256, 256, 10)
    b = profile_model("stdc1-minilm", 512, 256, 20)
    assert b["gflops_backbone"] == pytest.approx(2 * a["gflops_backbone"], rel=1e-6)
    assert b["gflops_eris"] == pytest.approx(2 * a["gflops_eris"], rel=0.01)  # L-dependent terms are tiny
    assert b["gflops_text"] > 1.9 * a["gflops_text"]


def test_stdc1_backbone_matches_the_published_count():
    # STDCNet813 is named for ~813 M multiply-adds at 224x224, classifier included; ours has no
    # classifier (conv_last 1024x1024 on 7x7 = 51 M, two FC layers = 2 M).
    r = profile_model("stdc1-minilm", 224, 224, 4)
    macs = r["gflops_backbone"] / 2 * 1e3
    assert macs + 53 == pytest.approx(813, rel=0.02)


def test_rejects_sizes_not_multiple_of_32():
    with pytest.raises(SystemExit):
        main(["--size", "300"])
