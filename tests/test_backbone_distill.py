"""eris.backbone_distill: adapters per backbone pair, a loss that is zero exactly when features agree, a run."""

import json

import pytest
import torch

from eris.backbone_distill import FeatureAdapters, backbone_kd_loss, main, normalise
from eris.backbones import build_backbone


@pytest.mark.parametrize("student,teacher", [("stdc1", "lite0"), ("stdc1", "lite2"), ("stdc2", "lite0"),
                                             ("stdc1", "lite1")])
def test_adapters_map_student_levels_to_teacher_widths(student, teacher):
    s, t = build_backbone(student).eval(), build_backbone(teacher).eval()
    adapters = FeatureAdapters([f.channels for f in s.feature_info], [f.channels for f in t.feature_info])
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        adapted, target = adapters(s(x)), t(x)
    assert [a.shape for a in adapted] == [f.shape for f in target]
    assert backbone_kd_loss(s(x), target, adapters).item() > 0


def test_loss_is_zero_for_equal_features_through_identity_adapters():
    t = build_backbone("lite0").eval()
    widths = [f.channels for f in t.feature_info]
    adapters = FeatureAdapters(widths, widths)
    assert all(isinstance(a, torch.nn.Identity) for a in adapters.adapters)
    with torch.no_grad():
        feats = t(torch.randn(2, 3, 64, 64))
        assert backbone_kd_loss(feats, [f.clone() for f in feats], adapters).item() == pytest.approx(0, abs=1e-6)
        scaled = [2.5 * f for f in feats]  # cosine: scale does not matter
        assert backbone_kd_loss(scaled, feats, adapters).item() == pytest.approx(0, abs=1e-6)
        shifted = [f + 1.0 for f in feats]
        assert backbone_kd_loss(shifted, feats, adapters).item() > 1e-3


def test_normalisation_follows_the_backbone():
    img = torch.full((1, 3, 2, 2), 127.0)
    assert normalise(img, "lite0").abs().max() == 0
    assert normalise(img, "stdc1").abs().max() > 0


def test_two_step_run_resumes_and_writes_an_stdc_checkpoint(tmp_path, capsys):
    args = ["--out", str(tmp_path / "bb"), "--batch-size", "2", "--size", "64", "--workers", "0", "--threads", "1",
            "--save-every", "1", "--log-every", "1", "--warmup", "1"]
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "3"]) == 0
    log = [json.loads(l) for l in (tmp_path / "bb" / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in log] == [1, 2, 3]
    # the backbone loads into the student through train's --backbone-weights path
    from eris.backbones import load_imagenet_weights

    report = load_imagenet_weights(build_backbone("stdc1"), tmp_path / "bb" / "backbone.safetensors")
    assert report.missing == [] and report.unexpected == []
