"""eris.narrow: deformable convs that sample fewer channels, factored from trained weights."""

import json

import pytest
import torch

from eris import build_model, load_checkpoint, save_checkpoint
from eris.config import ErisConfig
from eris.data.datasets import Collate, ShapeRefTrain
from eris.narrow import factor_taps, with_narrow_sampling
from eris.ops import DeformConv2d
from eris.train import main as train_main
from tests.conftest import tiny_config


def _trained_looking(layer: DeformConv2d) -> DeformConv2d:
    with torch.no_grad():  # nonzero offsets and modulation, as a trained layer has them
        layer.offset_mask.weight.normal_(0, 0.05)
        layer.offset_mask.bias.normal_(0, 0.5)
    return layer


def test_full_rank_factorisation_rebuilds_the_weight():
    torch.manual_seed(0)
    weight = torch.randn(12, 10, 3, 3, dtype=torch.float64)
    x = torch.randn(10, 500, dtype=torch.float64)
    reduce, narrowed, kept = factor_taps(weight, x @ x.T / 500, rank=10)
    rebuilt = torch.einsum("orhw,ri->oihw", narrowed, reduce[:, :, 0, 0])
    assert kept == pytest.approx(1.0)
    assert torch.allclose(rebuilt, weight, atol=1e-8)


def test_narrowed_layer_equals_the_layer_on_inputs_of_that_rank():
    """Inputs in a 4-dim subspace of 16 channels: a 4-channel sampling loses nothing, because
    sampling and modulation commute with the 1x1 reduction; 3 channels cannot."""
    torch.manual_seed(0)
    wide = _trained_looking(DeformConv2d(16, 8, 3, padding=1, bias=False)).double().eval()
    basis = torch.randn(16, 4, dtype=torch.float64)
    x = torch.einsum("ck,bkhw->bchw", basis, torch.randn(2, 4, 9, 11, dtype=torch.float64))
    flat = x.transpose(0, 1).reshape(16, -1)
    cov = flat @ flat.T / flat.shape[1]
    for rank, exact in ((4, True), (3, False)):
        narrow = _trained_looking(DeformConv2d(16, 8, 3, padding=1, bias=False, sample_channels=rank)).double().eval()
        narrow.offset_mask.load_state_dict(wide.offset_mask.state_dict())
        reduce, weight, kept = factor_taps(wide.weight, cov, rank)
        with torch.no_grad():
            narrow.reduce.weight.copy_(reduce)
            narrow.weight.copy_(weight)
            err = (narrow(x) - wide(x)).abs().max().item()
        scale = wide(x).abs().max().item()
        if exact:
            assert kept == pytest.approx(1.0) and err < 1e-6 * scale
        else:
            assert kept < 0.999 and err > 1e-3 * scale


def test_sample_channels_must_fit_the_input():
    with pytest.raises(ValueError, match="sample_channels 20 must be in 1..16"):
        DeformConv2d(16, 8, sample_channels=20)
    assert DeformConv2d(16, 8, sample_channels=16).reduce is None  # full width: the plain layer


def test_model_narrowing_keeps_other_weights_and_the_config_records_it(tokenizer):
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    batch = Collate(tokenizer)([ShapeRefTrain(64)[i] for i in range(2)])
    narrowed, kept = with_narrow_sampling(model, (8, 0, 32), [batch])  # level 2 at full width: unchanged
    assert narrowed.config.deform_sample_channels == (8, 0, 0) and set(kept) == {0}
    assert narrowed.fpn.blocks[0][0].weight.shape == (32, 8, 3, 3)
    assert narrowed.fpn.blocks[0][0].reduce.weight.shape == (8, 32, 1, 1)
    assert narrowed.fpn.blocks[1][0].reduce is None and narrowed.fpn.blocks[2][0].reduce is None
    before, after = model.state_dict(), narrowed.state_dict()
    for key, value in before.items():
        if not key.startswith("fpn.blocks.0.0.weight"):
            assert torch.equal(after[key], value), key
    with pytest.raises(ValueError, match="already samples narrowed channels"):
        with_narrow_sampling(narrowed, (4,), [batch])
    # the config survives the JSON round trip as a tuple, so a checkpoint rebuilds the narrow model
    assert ErisConfig.from_dict(json.loads(json.dumps(narrowed.config.to_dict()))) == narrowed.config


def test_narrowed_checkpoint_reloads_identically(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    batch = Collate(tokenizer)([ShapeRefTrain(64)[i] for i in range(2)])
    narrowed, _ = with_narrow_sampling(model, (8, 8), [batch])
    save_checkpoint(narrowed, tmp_path / "ck", tokenizer)
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    with torch.no_grad():
        a = narrowed(batch["image"], batch["input_ids"], batch["attention_mask"]).logits
        b = loaded.eval()(batch["image"], batch["input_ids"], batch["attention_mask"]).logits
    assert torch.equal(a, b)


def test_train_init_narrow_deform_runs_two_steps(tmp_path, tokenizer):
    torch.manual_seed(0)
    save_checkpoint(build_model(tiny_config()).eval(), tmp_path / "init", tokenizer)
    out = tmp_path / "run"
    args = ["--init", str(tmp_path / "init"), "--narrow-deform", "8", "16", "--narrow-batches", "1",
            "--out", str(out), "--steps", "2", "--batch-size", "2", "--size", "64", "--warmup", "1",
            "--val-every", "0", "--val-n", "2", "--save-every", "1", "--workers", "0", "--threads", "1"]
    assert train_main(args) == 0
    model, _, meta = load_checkpoint(out)
    assert model.config.deform_sample_channels == (8, 16)
    assert meta["step"] == 2 and meta["args"]["narrow_deform"] == [8, 16]
    assert train_main(args[:-4] + ["--steps", "3", "--workers", "0", "--threads", "1"]) == 0  # resumes as narrow
    assert load_checkpoint(out)[2]["step"] == 3
