"""eris.train / eris.distill / eris.evaluate end to end on tiny inputs."""

import copy
import json

import pytest
import torch

from eris import build_model, load_checkpoint
from eris.data.datasets import Collate, ShapeRefTrain, StepBatchSampler
from eris.distill import Distiller
from eris.distill import main as distill_main
from eris.evaluate import main as evaluate_main
from eris.losses import binary_kd, feature_kd, mask_loss
from eris.train import main as train_main
from eris.train import poly_lr
from tests.conftest import tiny_config

SIZE = 64


@pytest.fixture
def tiny_config_file(tmp_path):
    path = tmp_path / "tiny.json"
    tiny_config().save(path)
    return str(path)


def _args(config, out, steps, *extra):
    return ["--config", config, "--out", str(out), "--steps", str(steps), "--batch-size", "2", "--size", str(SIZE),
            "--warmup", "1", "--lr", "2e-3", "--val-every", "0", "--val-n", "2", "--save-every", "1",
            "--log-every", "1", "--workers", "0", "--threads", "1", *extra]


def _first_batch_loss(model, tokenizer):
    batch = Collate(tokenizer)([ShapeRefTrain(SIZE)[i] for i in range(2)])
    model.train()  # the loss as training sees it (batch statistics)
    with torch.no_grad():
        out = model(batch["image"], batch["input_ids"], batch["attention_mask"])
        return mask_loss(out.logits, out.aux_logits, batch["mask"]).item()


def test_two_steps_lower_the_loss_and_write_a_loadable_checkpoint(tiny_config_file, tmp_path, tokenizer):
    torch.manual_seed(0)
    before = _first_batch_loss(build_model(tiny_config()), tokenizer)  # the same init train() makes (seed 0)
    assert train_main(_args(tiny_config_file, tmp_path / "run", 2)) == 0
    model, tok, meta = load_checkpoint(tmp_path / "run")
    assert meta["step"] == 2 and meta["args"]["steps"] == 2 and "mIoU" in meta["metrics"]
    assert _first_batch_loss(model, tok) < before
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in log if "loss" in l] == [1, 2]
    assert log[-1]["val"]["n"] == 2


def test_resume_continues_the_step_counter(tiny_config_file, tmp_path):
    out = tmp_path / "run"
    train_main(_args(tiny_config_file, out, 2))
    weights = (out / "model.safetensors").read_bytes()
    assert train_main(_args(tiny_config_file, out, 3)) == 0
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert [l["step"] for l in log] == [1, 2, 3]
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 3
    assert (out / "model.safetensors").read_bytes() != weights


def test_step_sampler_is_resumable():
    full = list(StepBatchSampler(2, 0, 4, world=2, rank=1))
    assert full == [[2, 3], [6, 7], [10, 11], [14, 15]]
    assert list(StepBatchSampler(2, 2, 4, world=2, rank=1)) == full[2:]


def test_poly_lr_warms_up_then_decays_to_zero():
    assert poly_lr(0, 100, 10, 0.9) == pytest.approx(0.1)
    assert poly_lr(9, 100, 10, 0.9) == pytest.approx(1.0)
    assert poly_lr(10, 100, 10, 0.9) == pytest.approx(1.0)
    assert poly_lr(100, 100, 10, 0.9) == 0.0


def test_kd_loss_is_zero_when_student_equals_teacher(tokenizer):
    torch.manual_seed(0)
    student = build_model(tiny_config()).eval()
    distiller = Distiller(copy.deepcopy(student), student.config.dim)
    ids, mask = tokenizer(["the red ring", "leftmost star"])
    image = torch.rand(2, 3, SIZE, SIZE) * 255
    batch = {"image": image, "input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        loss, parts = distiller(batch, student(image, ids, mask))
    # zero up to float rounding (two forward passes may pick different kernels)
    assert loss.item() <= 1e-7 and set(parts) == {"kd", "feat", "query"} and max(parts.values()) <= 1e-7
    # and is positive once they differ
    with torch.no_grad():
        for p in student.fusions.parameters():
            p.add_(0.05)
        loss, _ = distiller(batch, student(image, ids, mask))
    assert loss.item() > 1e-3


def test_kd_terms_by_hand():
    t = torch.tensor([[0.0, 2.0]])
    assert binary_kd(t, t).item() == 0.0
    s = torch.tensor([[0.0, 0.0]])
    # T = 1: KL(Bern(sigmoid(2)) || Bern(0.5)) on one of two pixels
    p = torch.sigmoid(torch.tensor(2.0))
    want = (p * torch.log(p / 0.5) + (1 - p) * torch.log((1 - p) / 0.5)) / 2
    assert binary_kd(s, t, temperature=1.0).item() == pytest.approx(want.item(), rel=1e-5)
    a = torch.tensor([[1.0, 0.0]]).view(1, 2, 1, 1)
    b = torch.tensor([[0.0, 3.0]]).view(1, 2, 1, 1)
    assert feature_kd(a, b).item() == pytest.approx(2.0)  # orthogonal: 2 (1 - cos 90°)


def test_distill_cli_with_different_widths(tiny_config_file, tmp_path):
    teacher_cfg = tmp_path / "teacher.json"
    tiny_config(dim=48, fusion_dim=32).save(teacher_cfg)
    torch.manual_seed(1)
    train_main(_args(str(teacher_cfg), tmp_path / "teacher", 1))
    assert distill_main(_args(tiny_config_file, tmp_path / "kd", 2, "--teacher", str(tmp_path / "teacher"))) == 0
    log = [json.loads(l) for l in (tmp_path / "kd" / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert {"loss_gt", "loss_kd", "loss_feat", "loss_query"} <= set(log[-1])
    model, _, _ = load_checkpoint(tmp_path / "kd")
    assert model.config.dim == 32  # the student, without the adapters
    state = torch.load(tmp_path / "kd" / "train_state.pt", weights_only=True)
    assert state["extra_loss"]["feature_adapter.weight"].shape == (48, 32, 1, 1)


def test_evaluate_cli_prints_metrics_json(tiny_config_file, tmp_path, capsys):
    train_main(_args(tiny_config_file, tmp_path / "run", 1))
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(tmp_path / "run"), "--data", "shapes", "--split", "val",
                          "--n", "3", "--size", "64"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 3 and 0 <= result["mIoU"] <= 100
    assert set(result) >= {"mIoU", "oIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9"}


def test_roboref_mixture_trains_and_evaluates_by_kind(tiny_config_file, tmp_path, capsys):
    pytest.importorskip("pybullet", reason="RoboRef needs pybullet (the [train] extra)")
    assert train_main(_args(tiny_config_file, tmp_path / "run", 2, "--data", "shapes:1+roboref:1",
                            "--val-data", "roboref")) == 0
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "by_kind" in log[-1]["val"]
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(tmp_path / "run"), "--data", "shapes", "--split", "val",
                          "--n", "6", "--size", "64"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sum(m["n"] for m in result["by_kind"].values()) == result["n"] == 6


def test_mixture_spec_is_checked():
    from eris.data.datasets import MixtureTrain, parse_mixture

    assert parse_mixture("shapes") == [("shapes", 1.0)]
    assert parse_mixture("shapes:1+roboref:3") == [("shapes", 1.0), ("roboref", 3.0)]
    for bad in ("coco", "shapes:x", "shapes:-1"):
        with pytest.raises(ValueError, match="--data"):
            parse_mixture(bad)
    class Named:  # an unlimited source that answers its own name
        def __init__(self, name):
            self.name = name

        def __getitem__(self, index):
            return self.name

    mix = MixtureTrain([Named("a"), Named("b")], [1, 3], seed=0)
    picks = [mix[i] for i in range(400)]
    assert 0.65 < picks.count("b") / 400 < 0.85 and picks == [mix[i] for i in range(400)]


def test_pre_rendered_manifest_trains_like_the_live_stream(tiny_config_file, tmp_path):
    """A pre-rendered split (what a GPU session renders ahead on many cores) is a --data source."""
    from eris.data.datasets import ManifestTrain, parse_mixture
    from eris.data.shapes import main as shapes_main

    shapes_main(["--out", str(tmp_path / "cache"), "--split", "train", "--n", "4", "--long-side", "96"])
    assert parse_mixture(f"shapes:1+{tmp_path / 'cache'}:2") == [("shapes", 1.0), (str(tmp_path / "cache"), 2.0)]
    ds = ManifestTrain(tmp_path / "cache" / "manifest.jsonl", SIZE)
    item = ds[5]  # wraps around the 4 lines
    assert item["image"].shape == (3, SIZE, SIZE) and item["mask"].shape == (SIZE, SIZE) and item["phrase"]
    assert train_main(_args(tiny_config_file, tmp_path / "run", 1, "--data", str(tmp_path / "cache"),
                            "--val-data", "shapes")) == 0


def test_validation_during_training_uses_the_fixed_val_split_whatever_the_seed(monkeypatch):
    """Runs with different --seed are validated on the same samples: eris.evaluate's fixed split."""
    import argparse

    import eris.train as train_module
    from eris.data.datasets import eval_samples

    seen = []
    monkeypatch.setattr(train_module, "evaluate", lambda model, tok, samples, size, device: seen.append(
        [(s.image.tobytes(), s.phrase) for s in samples]) or {})
    args = argparse.Namespace(val_data=None, data="shapes", val_n=3, data_root=None, dataset="refcoco",
                              split_by=None, seed=5, val_size=None, size=64)
    train_module._validate(None, None, args, "cpu")
    fixed = [(s.image.tobytes(), s.phrase) for s in eval_samples("shapes", "val", 3)]
    other = [(s.image.tobytes(), s.phrase) for s in eval_samples("shapes", "val", 3, seed=5)]
    assert seen == [fixed] and fixed != other
