"""eris.backbone_distill: adapters per backbone pair, a loss that is zero exactly when features agree, a run."""

import json

import pytest
import torch

from eris.backbone_distill import FeatureAdapters, ImageNetFeatureKD, backbone_kd_loss, main, normalise
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


def test_stage_features_are_the_backbone_stages_before_fusion(tiny_model):
    ids, mask = torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        out = tiny_model.eval()(torch.rand(1, 3, 64, 96) * 255, ids, mask)
    info = tiny_model.backbone.feature_info
    assert [tuple(f.shape[1:]) for f in out.stage_features] == [(i.channels, 64 // i.reduction, 96 // i.reduction)
                                                                 for i in info]
    # stage 0 sees no text: it is the plain backbone's first stage on the normalised image
    with torch.no_grad():
        x = (torch.rand(1, 3, 64, 96) * 255)
        a = tiny_model(x, ids, mask).stage_features[0]
        b = tiny_model.backbone.forward_stage(0, tiny_model.backbone.forward_stem(
            (x - tiny_model.pixel_mean) / tiny_model.pixel_std))
    torch.testing.assert_close(a, b)


def _fake_output(feats):
    from types import SimpleNamespace

    return SimpleNamespace(stage_features=feats)


def test_imagenet_kd_trains_only_its_adapters_during_warm_up():
    torch.manual_seed(0)
    student = build_backbone("stdc1")
    kd = ImageNetFeatureKD([f.channels for f in student.feature_info], "lite0", weight=0.5, adapter_warmup=1,
                           pretrained=False).train()
    image = torch.rand(2, 3, 64, 64) * 255
    for step, backbone_learns in ((0, False), (1, True)):
        student.zero_grad(set_to_none=True)
        kd.zero_grad(set_to_none=True)
        loss, parts = kd({"image": image}, _fake_output(student(normalise(image, "stdc1"))))
        assert loss.item() == pytest.approx(0.5 * parts["imagenet_kd"], rel=1e-6) and parts["imagenet_kd"] > 0
        loss.backward()
        assert all(p.grad is not None for p in kd.adapters.parameters())
        assert (student.features[0].conv.weight.grad is not None) == backbone_learns, step
    assert int(kd.steps_seen) == 2
    # the teacher is frozen and not part of the loss module's weights
    assert not any(k.startswith("_teacher") for k in kd.state_dict())
    assert all(not p.requires_grad for p in kd.teacher.parameters())


def test_train_with_imagenet_kd_logs_the_term_and_resumes_its_warm_up_counter(tmp_path):
    from tests.conftest import tiny_config
    from eris.train import main as train_main

    config = tmp_path / "tiny.json"
    tiny_config().save(config)
    out = tmp_path / "run"
    args = ["--config", str(config), "--out", str(out), "--batch-size", "2", "--size", "64", "--warmup", "1",
            "--val-every", "0", "--val-n", "1", "--save-every", "1", "--log-every", "1", "--workers", "0",
            "--threads", "1", "--imagenet-kd", "lite0", "--imagenet-kd-warmup", "1", "--freeze-text"]
    assert train_main(args + ["--steps", "2"]) == 0
    assert train_main(args + ["--steps", "3"]) == 0
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert [l["step"] for l in log] == [1, 2, 3]
    for l in log:
        assert l["loss"] == pytest.approx(l["loss_gt"] + 0.5 * l["loss_imagenet_kd"], rel=1e-5)
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert int(state["extra_loss"]["steps_seen"]) == 3
    # the model, then the adapters at their own rate (3 levels, weight + bias each)
    assert [len(g["params"]) for g in state["optimizer"]["param_groups"]][1:] == [6]
