"""eris.config: the registry and the JSON round trip a checkpoint depends on."""

import pytest

from eris.config import CONFIGS, ErisConfig, get_config


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip(name, tmp_path):
    cfg = get_config(name)
    cfg.save(tmp_path / "c.json")
    assert ErisConfig.load(tmp_path / "c.json") == cfg


def test_student_and_teacher():
    s, t = get_config("stdc1-minilm"), get_config("stdc2-minilm")
    assert (s.backbone, s.dim) == ("stdc1", 128)
    assert t.backbone == "stdc2" and t.dim > s.dim


def test_unknown_name_and_bad_file(tmp_path):
    with pytest.raises(ValueError, match="stdc1-minilm"):
        get_config("nope")
    (tmp_path / "bad.json").write_text('{"name": "x", "colour": 3}')
    with pytest.raises(ValueError, match="bad.json.*colour"):
        ErisConfig.load(tmp_path / "bad.json")
