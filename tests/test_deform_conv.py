"""eris.ops.deform_conv against an independent loop-based DCN reference and plain conv."""

import math

import pytest
import torch
import torch.nn.functional as F

from eris.ops import DeformConv2d, deform_conv2d, deform_conv2d_gather
from eris.ops.deform_conv import deform_conv2d_conv


def _bilinear_reference(img, y, x):
    """torchvision's bilinear_interpolate, one channel plane, Python scalars."""
    h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    val = 0.0
    for yy, xx, wt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                       (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        if 0 <= yy < h and 0 <= xx < w:
            val += wt * float(img[yy, xx])
    return val


def deform_conv2d_loops(inp, offset, weight, bias, stride, padding, dilation, mask):
    """Slow reference written from the definition, one output element at a time."""
    b, c, h, w = inp.shape
    c_out, cpg, kh, kw = weight.shape
    wg = c // cpg
    og = offset.shape[1] // (2 * kh * kw)
    h_out = (h + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    w_out = (w + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    out = torch.zeros(b, c_out, h_out, w_out, dtype=inp.dtype)
    for n in range(b):
        for oy in range(h_out):
            for ox in range(w_out):
                # sample every input channel at every tap once
                samples = torch.zeros(c, kh * kw, dtype=inp.dtype)
                for ci in range(c):
                    g = ci // (c // og)
                    for ki in range(kh):
                        for kj in range(kw):
                            k = ki * kw + kj
                            dy = float(offset[n, 2 * (g * kh * kw + k), oy, ox])
                            dx = float(offset[n, 2 * (g * kh * kw + k) + 1, oy, ox])
                            y = oy * stride[0] - padding[0] + ki * dilation[0] + dy
                            x = ox * stride[1] - padding[1] + kj * dilation[1] + dx
                            v = _bilinear_reference(inp[n, ci], y, x)
                            if mask is not None:
                                v *= float(mask[n, g * kh * kw + k, oy, ox])
                            samples[ci, k] = v
                for co in range(c_out):
                    gi = co // (c_out // wg)
                    chans = samples[gi * cpg:(gi + 1) * cpg]
                    acc = (chans * weight[co].reshape(cpg, kh * kw)).sum()
                    out[n, co, oy, ox] = acc + (bias[co] if bias is not None else 0.0)
    return out


BOTH = pytest.mark.parametrize("impl", [deform_conv2d_gather, deform_conv2d, deform_conv2d_conv],
                               ids=["gather", "grid_sample", "conv"])

CASES = [
    # b, c_in, c_out, h, w, k, stride, padding, dilation, offset_groups, weight_groups
    (1, 3, 4, 6, 7, 3, 1, 1, 1, 1, 1),
    (2, 4, 3, 7, 5, 3, 2, 1, 1, 1, 1),
    (2, 4, 4, 8, 6, 3, 1, 2, 2, 2, 1),
    (3, 6, 4, 5, 9, 2, (1, 2), (0, 1), (2, 1), 3, 2),
]


@BOTH
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_mask", [True, False])
def test_matches_loop_reference(impl, case, with_mask):
    b, ci, co, h, w, k, stride, padding, dilation, og, wg = case
    g = torch.Generator().manual_seed(hash((case, with_mask)) % 2**31)
    s, p, d = [(v, v) if isinstance(v, int) else v for v in (stride, padding, dilation)]
    h_out = (h + 2 * p[0] - (d[0] * (k - 1) + 1)) // s[0] + 1
    w_out = (w + 2 * p[1] - (d[1] * (k - 1) + 1)) // s[1] + 1
    x = torch.randn(b, ci, h, w, generator=g, dtype=torch.float64)
    # offsets up to +-4 pixels push many taps partly or wholly outside the image
    offset = (torch.rand(b, 2 * og * k * k, h_out, w_out, generator=g, dtype=torch.float64) - 0.5) * 8
    weight = torch.randn(co, ci // wg, k, k, generator=g, dtype=torch.float64)
    bias = torch.randn(co, generator=g, dtype=torch.float64)
    mask = torch.rand(b, og * k * k, h_out, w_out, generator=g, dtype=torch.float64) if with_mask else None
    got = impl(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)
    want = deform_conv2d_loops(x, offset, weight, bias, s, p, d, mask)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-5


@BOTH
def test_samples_outside_image_read_zero(impl):
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    offset = torch.full((1, 2, 4, 4), 10.0, dtype=torch.float64)  # every tap far outside
    assert impl(x, offset, weight).abs().max() == 0
    offset = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    offset[:, 1] = -0.5  # half a pixel left: the left column sees half zero padding
    out = impl(x, offset, weight)
    assert torch.allclose(out[0, 0, :, 0], torch.full((4,), 0.5, dtype=torch.float64))
    assert torch.allclose(out[0, 0, :, 1:], torch.ones(4, 3, dtype=torch.float64))


@BOTH
@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_zero_offset_unit_mask_equals_conv2d(impl, stride, padding, dilation):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 11, 9, generator=g)
    weight = torch.randn(6, 5, 3, 3, generator=g)
    bias = torch.randn(6, generator=g)
    want = F.conv2d(x, weight, bias, stride, padding, dilation)
    offset = torch.zeros(2, 18, *want.shape[2:])
    mask = torch.ones(2, 9, *want.shape[2:])
    got = impl(x, offset, weight, bias, stride, padding, dilation, mask)
    assert (got - want).abs().max().item() <= 1e-4


@BOTH
def test_bad_offset_shape_is_a_clear_error(impl):
    with pytest.raises(ValueError, match="offset"):
        impl(torch.zeros(1, 2, 5, 5), torch.zeros(1, 17, 5, 5), torch.zeros(2, 2, 3, 3), padding=1)


def test_module_starts_as_half_modulated_conv_and_learns_offsets():
    torch.manual_seed(0)
    layer = DeformConv2d(4, 3, kernel_size=3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    want = 0.5 * F.conv2d(x, layer.weight, None, 1, 1) + layer.bias.view(1, -1, 1, 1)
    assert torch.allclose(layer(x), want, atol=1e-5)
    layer(x).square().sum().backward()
    # zero-initialised offset conv still receives gradient (bilinear slopes are non-zero)
    assert layer.offset_mask.weight.grad.abs().sum() > 0


def test_samplers_agree_on_a_trained_looking_layer():
    torch.manual_seed(2)
    layer = DeformConv2d(6, 5, padding=1, sampling="gather")
    torch.nn.init.normal_(layer.offset_mask.weight, std=0.3)  # non-trivial offsets and modulation
    x = torch.randn(2, 6, 12, 10)
    a = layer(x)
    layer.sampling = "grid_sample"
    assert (layer(x) - a).abs().max() <= 1e-4
    layer.sampling = "conv"
    assert (layer(x) - a).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="gather"):
        DeformConv2d(2, 2, sampling="bicubic")


@pytest.mark.parametrize("sampling", ["grid_sample", "gather", "conv"])
def test_exports_to_onnx_without_custom_ops(sampling, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(3)
    layer = DeformConv2d(8, 4, padding=1, sampling=sampling).eval()
    torch.nn.init.normal_(layer.offset_mask.weight, std=0.3)
    h, w = torch.export.Dim("h", min=4, max=512), torch.export.Dim("w", min=4, max=512)
    path = tmp_path / "dcn.onnx"
    torch.onnx.export(layer, (torch.randn(1, 8, 16, 12),), str(path), dynamo=True, opset_version=18,
                      input_names=["x"], dynamic_shapes={"x": {2: h, 3: w}}, external_data=False, verbose=False)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    ops = {n.op_type for n in graph.graph.node}
    assert "DeformConv" not in ops and all(n.domain in ("", "ai.onnx") for n in graph.graph.node)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 8, 16, 12), (1, 8, 9, 21)]:  # another size than the traced one
        x = torch.randn(*shape)
        got = session.run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            assert abs(got - layer(x).numpy()).max() <= 1e-4


def test_conv_form_exports_the_weights_as_a_conv_without_transposes(tmp_path):
    """The point of the conv form: the 3x3 deformable weights become one 1x1 Conv (quantizable to
    QLinearConv), and no Transpose surrounds the sampled tensor."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ops = {}
    for sampling in ("grid_sample", "conv"):
        layer = DeformConv2d(8, 4, padding=1, sampling=sampling, bias=False).eval()
        path = tmp_path / f"{sampling}.onnx"
        torch.onnx.export(layer, (torch.randn(1, 8, 16, 12),), str(path), dynamo=True, opset_version=18,
                          external_data=False, verbose=False)
        ops[sampling] = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops["conv"].count("Conv") == 2 and "MatMul" not in ops["conv"] and "Transpose" not in ops["conv"]
    assert "MatMul" in ops["grid_sample"]


@pytest.mark.parametrize("impl", [deform_conv2d, deform_conv2d_conv], ids=["grid_sample", "conv"])
def test_modulation_gradients_and_inference_agree(impl):
    """Inference modulates the samples in place; training must keep autograd's copy, so the
    gradients through input, offset and mask are checked numerically, and both modes agree."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    offset = ((torch.rand(1, 18, 5, 5, generator=g, dtype=torch.float64) - 0.5) * 3).requires_grad_()
    weight = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 9, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: impl(a[0], a[1], a[2], None, 1, 1, 1, a[3]), (x, offset, weight, mask))
    before = [t.detach().clone() for t in (x, offset, weight, mask)]
    with torch.inference_mode():
        fast = impl(x, offset, weight, None, 1, 1, 1, mask)
    assert all(torch.equal(a, b) for a, b in zip(before, (x, offset, weight, mask)))  # inputs untouched
    assert torch.allclose(fast, impl(x, offset, weight, None, 1, 1, 1, mask), atol=1e-12)
