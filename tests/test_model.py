"""eris.model: shapes, padding mask, batching, gradients, linear memory."""

import json
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from eris import build_model
from tests.conftest import tiny_config

PHRASES = ["cup", "the red mug on the left next to the tiny blue star", "segment the second circle from the top"]


def image(b, h, w, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.mark.parametrize("h,w", [(640, 640), (640, 480), (320, 320)])
def test_output_shapes(student, tokenizer, h, w):
    ids, mask = tokenizer(PHRASES)
    with torch.no_grad():
        out = student(image(3, h, w), ids, mask)
    c = student.config.dim
    assert out.logits.shape == (3, 1, h // 4, w // 4)
    assert len(out.aux_logits) == 3 and all(a.shape == (3, 1, h // 4, w // 4) for a in out.aux_logits)
    assert out.features.shape == (3, c, h // 4, w // 4)
    assert out.query.shape == (3, c)
    assert torch.isfinite(out.logits).all()


def test_head_upsamples_logits_exactly_as_it_would_upsample_features(student, tokenizer):
    """The head reads F^O before the FPN's last 2x upsampling and upsamples its logits instead:
    the same numbers as the head applied to the upsampled F^O (the paper's order)."""
    from eris.modules import dot_product_head

    ids, mask = tokenizer(PHRASES)
    with torch.no_grad():
        out = student(image(3, 320, 256, seed=5), ids, mask)
    paper_order = dot_product_head(out.query, out.features)
    assert out.coarse_features.shape[-2:] == (40, 32)
    assert (out.logits - paper_order).abs().max() <= 1e-4 * paper_order.abs().max()
    assert out.logits.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("phrase", PHRASES)
def test_phrase_lengths_give_same_shapes(student, tokenizer, phrase):
    ids, mask = tokenizer(phrase)
    with torch.no_grad():
        out = student(image(1, 320, 256), ids, mask)
    assert ids.shape[1] == len(tokenizer._tok.encode(phrase).ids)
    assert out.logits.shape == (1, 1, 80, 64)


def test_right_padding_does_not_change_output(student, tokenizer):
    ids, mask = tokenizer("the big green star")
    pad = 9
    ids_p = torch.cat([ids, torch.zeros(1, pad, dtype=ids.dtype)], 1)
    mask_p = torch.cat([mask, torch.zeros(1, pad, dtype=mask.dtype)], 1)
    x = image(1, 320, 320)
    with torch.no_grad():
        a, b = student(x, ids, mask), student(x, ids_p, mask_p)
    assert (a.logits - b.logits).abs().max() <= 1e-4
    assert (a.query - b.query).abs().max() <= 1e-4
    # and the mask is what makes it so: attending to the pads changes the result
    with torch.no_grad():
        c = student(x, ids_p, torch.ones_like(mask_p))
    assert (a.logits - c.logits).abs().max() > 1e-3


def test_batch_of_three_equals_three_single_runs(student, tokenizer):
    ids, mask = tokenizer(PHRASES)
    x = image(3, 320, 256, seed=3)
    with torch.no_grad():
        batched = student(x, ids, mask).logits
        for i, phrase in enumerate(PHRASES):
            i_ids, i_mask = tokenizer(phrase)
            single = student(x[i:i + 1], i_ids, i_mask).logits
            assert (batched[i:i + 1] - single).abs().max() <= 1e-3


def test_split_text_and_image_passes_equal_forward(tiny_model, tokenizer):
    tiny_model.eval()
    ids, mask = tokenizer(PHRASES[:2])
    x = image(2, 128, 96)
    with torch.no_grad():
        whole = tiny_model(x, ids, mask).logits
        text = tiny_model.encode_text(ids, mask)
        split = tiny_model.segment(x, text).logits
    assert torch.equal(whole, split)
    assert text.fusion_keys[0].shape[:3] == (2, 2, ids.shape[1])


def test_gradients_reach_every_trainable_parameter(tiny_model, tokenizer):
    tiny_model.train()
    ids, mask = tokenizer(PHRASES[:2])
    out = tiny_model(image(2, 128, 128), ids, mask)
    loss = out.logits.sigmoid().mean() + sum(a.sigmoid().mean() for a in out.aux_logits)
    loss.backward()
    dead = [n for n, p in tiny_model.named_parameters()
            if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert dead == []


def test_frozen_text_encoder_gets_no_gradient(tokenizer):
    model = build_model(tiny_config(freeze_text=True)).train()
    ids, mask = tokenizer(PHRASES[:1])
    model(image(1, 64, 64), ids, mask).logits.mean().backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.iams[0].gate.weight.grad is not None


def test_rejects_sizes_not_multiple_of_32(tiny_model, tokenizer):
    ids, mask = tokenizer("cup")
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny_model(image(1, 100, 96), ids, mask)


class _ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def _record(model, tokenizer, h, w):
    ids, mask = tokenizer(PHRASES[1])
    rec = _ShapeRecorder()
    with torch.no_grad(), rec:
        model(image(1, h, w), ids, mask)
    return rec.shapes


def test_no_tensor_is_quadratic_in_pixels(tiny_model, tokenizer):
    tiny_model.eval()
    h, w = 256, 192
    pixels = {(h // s) * (w // s) for s in (2, 4, 8, 16, 32)}
    shapes = _record(tiny_model, tokenizer, h, w)
    assert len(shapes) > 200  # the recorder sees the whole pass
    quadratic = [s for s in shapes if sum(d in pixels for d in s) >= 2]
    assert quadratic == []
    # an N x N attention map would make the largest tensor grow 16x when pixels grow 4x
    small = max(torch.Size(s).numel() for s in _record(tiny_model, tokenizer, h // 2, w // 2))
    large = max(torch.Size(s).numel() for s in shapes)
    assert large / small <= 4.5


def test_joint_attention_baseline_is_quadratic_and_same_sized(tokenizer):
    """The eris.scaling baseline really holds [heads, N, N + L] scores, with ERIS's widths."""
    from eris import build_model

    torch.manual_seed(0)
    joint = build_model(tiny_config(fusion="joint")).eval()
    h, w = 128, 96
    pixels = {(h // s) * (w // s) for s in (8, 16, 32)}
    shapes = _record(joint, tokenizer, h, w)
    assert any(sum(d in pixels for d in s) >= 2 for s in shapes)
    cross = build_model(tiny_config()).eval()
    extra = sum(p.numel() for p in joint.parameters()) - sum(p.numel() for p in cross.parameters())
    assert extra == sum(p.numel() for f in joint.fusions for p in [*f.pixel_key.parameters(), *f.pixel_value.parameters()])


def test_scaling_script_records_points_and_failures(tmp_path, capsys):
    from eris.scaling import main as scaling_main

    assert scaling_main(["--out", str(tmp_path), "--sizes", "64", "--runs", "1", "--threads", "1",
                         "--ratio-pairs", "0"]) == 0
    report = json.loads((tmp_path / "scaling.json").read_text())
    for rows in report["results"].values():
        assert rows["64"]["ms"] > 0 and rows["64"]["peak_rss_mb"] > 0
    assert (tmp_path / "scaling.md").read_text().count("| 64x64 |") == 1 and (tmp_path / "scaling.png").is_file()
    from eris.scaling import run

    starved = run([64, 96], 1, 1, mem_limit_gb=0.05, timeout=120)  # cannot even import torch
    for rows in starved["results"].values():
        assert "error" in rows[64] and "skipped" in rows[96]["error"]


def test_scaling_onnxruntime_engine_times_exported_graphs_without_torch(tmp_path):
    """--engine onnxruntime exports both models once and times them in onnxruntime; its worker
    process must not load torch, or the peak memory it reports would be torch's."""
    import subprocess
    import sys

    from eris.scaling import export_graphs, run

    graphs = export_graphs(tmp_path)
    assert {p.name for p in graphs.values()} == {"image_cross.onnx", "image_joint.onnx"}
    report = run([64], 1, 1, mem_limit_gb=8, timeout=300, engine="onnxruntime", graphs=graphs)
    assert report["engine"] == "onnxruntime"
    for rows in report["results"].values():
        assert rows[64]["ms"] > 0 and rows[64]["peak_rss_mb"] > 0
    probe = "import sys, eris.scaling; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_scaling_ratio_is_the_median_of_alternating_pairs():
    import time

    from eris.scaling import measure_ratio

    calls = []

    def image_pass(size):  # a pass that costs 1 ms per 100 pixels of side
        calls.append(size)
        time.sleep(size / 1e5)

    report = measure_ratio(image_pass, small=200, large=800, pairs=3)
    assert calls == [200, 800] * 4  # warm-up of each, then alternating pairs
    assert 3.0 < report["ratio"] < 4.5 and report["ms_small"] >= 2.0 and report["ms_large"] >= 8.0



def test_scaling_ratio_of_a_bundle_graph(bundle, capsys):
    from eris.scaling import main as scaling_main

    assert scaling_main(["--ratio-of", str(bundle / "bundle" / "image_fp32.onnx"), "--ratio-pairs", "1",
                         "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["sizes"] == [640, 1280] and report["pairs"] == 1
    assert report["ms_large"] > report["ms_small"] > 0 and report["ratio"] > 1


def test_frame_coordinates_are_pixel_centres_in_minus_one_to_one():
    from eris.modules.fusion import frame_coordinates

    grid = frame_coordinates(torch.zeros(3, 5, 2, 4))
    assert grid.shape == (1, 2, 2, 4)
    assert torch.allclose(grid[0, 0, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(grid[0, 1, :, 2], torch.tensor([-0.5, 0.5]))


def test_adding_fusion_position_keeps_the_function_until_trained(tiny_model, tokenizer):
    from eris.train import with_position

    tiny_model.eval()
    grown = with_position(tiny_model, fusion=True).eval()
    assert grown.config.fusion_position and all(torch.count_nonzero(f.position.weight) == 0 for f in grown.fusions)
    image = torch.rand(1, 3, 64, 96) * 255
    ids, mask = tokenizer("the leftmost red cube")
    with torch.no_grad():
        assert torch.equal(grown(image, ids, mask).logits, tiny_model(image, ids, mask).logits)
        for f in grown.fusions:
            f.position.weight.normal_()
        moved = grown(image, ids, mask).logits
        before = tiny_model(image, ids, mask).logits
    assert (moved - before).abs().max() > 1e-3


def test_adding_tvr_position_keeps_the_function_and_then_adds_a_ramp_the_query_steers(tokenizer):
    from eris.train import with_position

    torch.manual_seed(0)
    model = build_model(tiny_config(fusion_position=True)).eval()
    grown = with_position(model, tvr=True).eval()
    assert grown.config.tvr_position and torch.count_nonzero(grown.tvr.position.weight) == 0
    image = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(3)) * 255
    ids, mask = tokenizer(["the mug on the left", "the mug on the right"])
    with torch.no_grad():
        assert torch.equal(grown(image, ids, mask).logits, model(image, ids, mask).logits)
        # W_pos = e_0 [1, 0]: the head's features gain x in channel 0, so Q_0 alone (no
        # refinement step yet) adds Q_0[0] * x to its logits: a ramp across the frame
        grown.tvr.position.weight.zero_()
        grown.tvr.position.weight[0, 0] = 1.0
        text = grown.encode_text(ids, mask)
        out = grown.segment(image, text)
        base = model.segment(image, model.encode_text(ids, mask))
    first = out.aux_logits[0] - base.aux_logits[0]          # Q_0's prediction, [B, 1, H, W]
    w = first.shape[-1]
    xs = (torch.arange(w) + 0.5) * (2.0 / w) - 1.0
    expected = text.query0[:, 0].view(2, 1, 1, 1) * xs.view(1, 1, 1, w)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # bilinear upsampling's edge rows differ
    assert torch.allclose(first[inner], expected.expand_as(first)[inner], atol=1e-4)
    assert (out.logits - base.logits).abs().max() > 1e-3
