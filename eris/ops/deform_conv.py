"""Modulated deformable convolution (DCNv2) written with standard ops only.

Semantics are exactly those of ``torchvision.ops.deform_conv2d``:

* ``offset`` is ``[B, 2 * G * K, Ho, Wo]`` with, for each offset group ``g`` and each tap
  ``k`` (taps row-major over the kernel), the pair ``(dy, dx)`` interleaved:
  channel ``2 * (g * K + k)`` is dy and ``2 * (g * K + k) + 1`` is dx;
* each tap samples the input bilinearly at ``(oy * stride - pad + ki * dil + dy,
  ox * stride - pad + kj * dil + dx)``, corners outside the image read as zero;
* ``mask`` (``[B, G * K, Ho, Wo]``) multiplies each sample as given (no sigmoid here);
* ``weight`` is ``[C_out, C_in / weight_groups, kh, kw]``.

Why not torchvision: its op is a custom kernel, so ONNX export needs ``DeformConv`` (opset 19,
which onnxruntime's quantizer and TFLite do not handle). Here the sampling is standard ops, and
the weighted sum over the ``C*K`` sampled channels is one matmul. Two samplers, same result:

* ``grid_sample`` (:func:`deform_conv2d`): one ``grid_sample`` call over all taps
  (ONNX ``GridSample``, opset 16+). Faster: one fused pass over the samples. The default.
* ``conv`` (:func:`deform_conv2d_conv`): the same ``grid_sample``, then the weights as a 1x1
  ``Conv`` on the ``[B, C*K, Ho, Wo]`` samples (a reshape away from grid_sample's output): INT8
  ``QLinearConv`` once quantized, and no transposes. What the exported graphs use.
* ``gather`` (:func:`deform_conv2d_gather`): coordinate arithmetic plus four row gathers from a
  ``[B*G*H*W, C/G]`` table (ONNX ``Gather`` on axis 0 with a ``K*Ho*Wo`` index). Only
  Gather/MatMul/elementwise ops, for converters without a grid-sample kernel.

Measured with ``python -m eris.ops.bench --threads 2 --onnx`` (README, "Deformable conv"): on
a 2-core x86 CPU grid_sample was 1.3x faster in onnxruntime and 3x faster in PyTorch. Weights
are the same for both, so a model trained with one exports with the other
(``DeformConv2d.sampling``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["deform_conv2d", "deform_conv2d_gather", "deform_conv2d_conv", "DeformConv2d", "SAMPLERS"]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _check_and_geometry(input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None,
                        stride, padding, dilation):
    """Validates shapes like torchvision does and returns the geometry of the op."""
    if input.dim() != 4 or offset.dim() != 4 or weight.dim() != 4:
        raise ValueError("deform_conv2d: input, offset and weight must be 4-D tensors")
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    c_out, c_per_wgroup, kh, kw = weight.shape
    c_in = input.shape[1]
    k = kh * kw
    if c_in % c_per_wgroup != 0:
        raise ValueError(f"deform_conv2d: input channels {c_in} not divisible by weight's {c_per_wgroup}")
    weight_groups = c_in // c_per_wgroup
    if offset.shape[1] % (2 * k) != 0:
        raise ValueError(f"deform_conv2d: offset channels {offset.shape[1]} not a multiple of 2*kh*kw={2 * k}")
    offset_groups = offset.shape[1] // (2 * k)
    if c_in % offset_groups != 0:
        raise ValueError(f"deform_conv2d: input channels {c_in} not divisible by {offset_groups} offset groups")
    h_out = (input.shape[2] + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    w_out = (input.shape[3] + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    if not torch.compiler.is_compiling() and not torch.jit.is_tracing():
        if tuple(offset.shape[2:]) != (h_out, w_out):
            raise ValueError(f"deform_conv2d: offset spatial size {tuple(offset.shape[2:])} != output size {(h_out, w_out)}")
        if mask is not None and mask.shape[1] != offset_groups * k:
            raise ValueError(f"deform_conv2d: mask has {mask.shape[1]} channels, expected {offset_groups * k}")
    return (sh, sw), (ph, pw), (dh, dw), (kh, kw), weight_groups, offset_groups, (h_out, w_out)


def _sample_positions(offset: Tensor, stride, padding, dilation, kernel, offset_groups, out_hw,
                      taps_last: bool = False):
    """Absolute sampling coordinates ``(py, px)``, each ``[B, G, K, Ho, Wo]``
    (``[B, G, Ho, Wo, K]`` with ``taps_last``)."""
    (sh, sw), (ph, pw), (dh, dw), (kh, kw) = stride, padding, dilation, kernel
    h_out, w_out = out_hw
    dtype, device = offset.dtype, offset.device
    b = offset.shape[0]
    k = kh * kw
    ky = (torch.arange(kh, dtype=dtype, device=device) * dh).repeat_interleave(kw)  # [K] row-major taps
    kx = (torch.arange(kw, dtype=dtype, device=device) * dw).repeat(kh)
    oy = torch.arange(h_out, dtype=dtype, device=device) * sh - ph
    ox = torch.arange(w_out, dtype=dtype, device=device) * sw - pw
    off = offset.reshape(b, offset_groups, k, 2, h_out, w_out)
    if taps_last:
        off = off.permute(0, 1, 3, 4, 5, 2)  # [B, G, 2, Ho, Wo, K]
        base_y = oy.view(h_out, 1, 1) + ky.view(1, 1, k)  # [Ho, 1, K]
        base_x = ox.view(1, w_out, 1) + kx.view(1, 1, k)  # [1, Wo, K]
        return base_y + off[:, :, 0], base_x + off[:, :, 1]
    base_y = ky.view(k, 1, 1) + oy.view(1, h_out, 1)  # [K, Ho, 1]
    base_x = kx.view(k, 1, 1) + ox.view(1, 1, w_out)  # [K, 1, Wo]
    return base_y + off[:, :, :, 0], base_x + off[:, :, :, 1]


def _matmul_taps(columns: Tensor, weight: Tensor, bias: Tensor | None, weight_groups: int, out_hw) -> Tensor:
    """``columns`` is ``[B, Ho*Wo, C_in*K]`` ordered like ``weight.reshape(C_out, C_in*K)``
    (per weight group); returns ``[B, C_out, Ho, Wo]``."""
    b, n, ck = columns.shape
    c_out = weight.shape[0]
    w = weight.reshape(weight_groups, c_out // weight_groups, ck // weight_groups)
    if weight_groups == 1:
        out = torch.matmul(columns, w[0].t())  # [B, N, C_out]
        out = out.transpose(1, 2).reshape(b, c_out, out_hw[0], out_hw[1])
    else:
        cols = columns.reshape(b, n, weight_groups, ck // weight_groups).transpose(1, 2)  # [B, wg, N, CK/wg]
        out = torch.matmul(cols, w.transpose(1, 2))  # [B, wg, N, C_out/wg]
        out = out.permute(0, 1, 3, 2).reshape(b, c_out, out_hw[0], out_hw[1])
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def deform_conv2d_gather(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                  stride=1, padding=0, dilation=1, mask: Tensor | None = None) -> Tensor:
    """:func:`deform_conv2d` with the sampling done by row gathers: Gather/MatMul/elementwise only.

    Samples are gathered pixel-major, tap-minor (``[B, Ho*Wo, K, C]``), so the columns feed the
    matmul without a transpose of the large sampled tensor; the small weight is permuted instead.
    The modulation is folded into the four bilinear corner weights, which are ``C`` times smaller
    than the samples.
    """
    stride, padding, dilation, kernel, wg, og, out_hw = _check_and_geometry(
        input, offset, weight, mask, stride, padding, dilation)
    b, c, h, w = input.shape
    c_out = weight.shape[0]
    k = kernel[0] * kernel[1]
    cg = c // og
    n = out_hw[0] * out_hw[1]
    py, px = _sample_positions(offset, stride, padding, dilation, kernel, og, out_hw, taps_last=True)
    if mask is not None:
        modulation = mask.reshape(b, og, k, out_hw[0], out_hw[1]).permute(0, 1, 3, 4, 2)  # [B, G, Ho, Wo, K]

    # One row per (batch, offset group, pixel) holding that group's channels.
    table = input.reshape(b, og, cg, h * w).transpose(2, 3).reshape(b * og * h * w, cg)
    row_base = (torch.arange(b * og, device=input.device) * (h * w)).view(b, og, 1, 1, 1)

    y0 = torch.floor(py)
    x0 = torch.floor(px)
    ly = py - y0
    lx = px - x0
    y0 = y0.long()
    x0 = x0.long()
    sampled = None
    for dy, dx, wy, wx in ((0, 0, 1 - ly, 1 - lx), (0, 1, 1 - ly, lx), (1, 0, ly, 1 - lx), (1, 1, ly, lx)):
        yy = y0 + dy
        xx = x0 + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        corner_w = wy * wx * inside.to(input.dtype)  # zero for corners outside the image
        if mask is not None:
            corner_w = corner_w * modulation
        idx = row_base + yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)  # [B, G, Ho, Wo, K]
        rows = torch.index_select(table, 0, idx.reshape(-1)).reshape(b, og, n, k, cg)
        term = rows * corner_w.reshape(b, og, n, k, 1)
        sampled = term if sampled is None else sampled + term

    # [B, G, N, K, Cg] -> [B, N, K, C] (free for one offset group), channels last per tap.
    columns = sampled.permute(0, 2, 3, 1, 4).reshape(b, n, k, c)
    if wg > 1:
        columns = columns.reshape(b, n, k, wg, c // wg).permute(0, 1, 3, 2, 4)  # [B, N, wg, K, C/wg]
    w_taps = weight.reshape(c_out, c // wg, k).transpose(1, 2)  # [C_out, K, C/wg], matches the columns
    return _matmul_taps(columns.reshape(b, n, c * k), w_taps, bias, wg, out_hw)


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                              stride=1, padding=0, dilation=1, mask: Tensor | None = None) -> Tensor:
    """Deformable convolution v1/v2 (with ``mask``): one ``grid_sample`` call, then one matmul.

    Arguments and result follow ``torchvision.ops.deform_conv2d``; see the module docstring.

    ``grid_sample(align_corners=False, padding_mode="zeros")`` maps pixel coordinate ``p`` to the
    normalised ``(2p + 1) / size - 1`` and reads outside corners as zero, which is exactly DCN's
    bilinear rule. Exports to ONNX ``GridSample``.
    """
    sampled, wg, out_hw = _grid_samples(input, offset, weight, mask, stride, padding, dilation)
    b, c = input.shape[:2]
    columns = sampled.permute(0, 4, 5, 1, 2, 3).reshape(b, out_hw[0] * out_hw[1], c * sampled.shape[3])
    return _matmul_taps(columns, weight, bias, wg, out_hw)


def _grid_samples(input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None, stride, padding, dilation):
    """The modulated samples ``[B, G, C/G, K, Ho, Wo]`` from one ``grid_sample`` call, the weight
    groups and the output size (shared by the matmul and the 1x1-conv formulations)."""
    stride, padding, dilation, kernel, wg, og, out_hw = _check_and_geometry(
        input, offset, weight, mask, stride, padding, dilation)
    b, c, h, w = input.shape
    k = kernel[0] * kernel[1]
    cg = c // og
    py, px = _sample_positions(offset, stride, padding, dilation, kernel, og, out_hw)
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1)  # [B, G, K, Ho, Wo, 2]
    grid = grid.reshape(b * og, k * out_hw[0], out_hw[1], 2)
    sampled = F.grid_sample(input.reshape(b * og, cg, h, w), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # [B*G, Cg, K*Ho, Wo]
    sampled = sampled.reshape(b, og, cg, k, out_hw[0], out_hw[1])
    if mask is not None:
        modulation = mask.reshape(b, og, 1, k, out_hw[0], out_hw[1])
        if torch.is_grad_enabled() and (sampled.requires_grad or modulation.requires_grad):
            sampled = sampled * modulation
        else:  # inference: modulate in place; a second [B, C*K, Ho, Wo] buffer costs page faults and cache
            sampled.mul_(modulation)
    return sampled, wg, out_hw


def deform_conv2d_conv(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                       stride=1, padding=0, dilation=1, mask: Tensor | None = None) -> Tensor:
    """:func:`deform_conv2d` with the weights applied as a 1x1 convolution instead of a matmul.

    ``grid_sample`` returns the samples as ``[B*G, C/G, K*Ho, Wo]``, which is already laid out as
    ``[B, C*K, Ho, Wo]`` with channel ``c*K + k`` -- the order of ``weight.reshape(C_out, C_in*K)``
    -- so a reshape (no transpose) feeds a grouped 1x1 ``Conv``. Exported and quantized, that is
    an INT8 ``QLinearConv`` over NCHW data, with no NHWC<->NCHW transposes around the sampling
    (the matmul form needs the samples pixel-major). Same weights, same result.
    """
    sampled, wg, out_hw = _grid_samples(input, offset, weight, mask, stride, padding, dilation)
    b, c = input.shape[:2]
    columns = sampled.reshape(b, c * sampled.shape[3], out_hw[0], out_hw[1])  # a view: no transpose
    return F.conv2d(columns, weight.reshape(weight.shape[0], -1, 1, 1), bias, groups=wg)


SAMPLERS = {"grid_sample": deform_conv2d, "gather": deform_conv2d_gather, "conv": deform_conv2d_conv}


class DeformConv2d(nn.Module):
    """DCNv2 layer: a plain conv predicts offsets and modulation, then the deformable conv.

    The offset/modulation conv starts at zero, so a fresh layer samples the regular grid with
    modulation sigmoid(0) = 0.5 everywhere (DCNv2's initialisation). ``sampling`` picks the
    formulation (``"grid_sample"`` or ``"gather"``); it changes no weight and may be switched
    on a trained layer before export.

    ``sample_channels`` (< ``in_channels``) samples a 1x1-projected input instead of the input
    itself: ``reduce`` maps C_in to that many channels, the taps read those, and ``weight`` is
    ``[C_out, sample_channels, k, k]``. Bilinear sampling and modulation act on each channel
    alike, so sampling ``reduce(x)`` equals applying ``reduce`` to the samples of ``x``: the layer
    is a deformable conv whose per-tap weights share a rank-``sample_channels`` input subspace,
    and the sampling (float GridSample and its modulation, memory-bound on a CPU) moves
    ``sample_channels / C_in`` of the data. The offsets are still predicted from the full input.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, offset_groups: int = 1, bias: bool = True,
                 sampling: str = "grid_sample", sample_channels: int | None = None):
        super().__init__()
        if sampling not in SAMPLERS:
            raise ValueError(f"unknown deformable sampling {sampling!r}; choose from {sorted(SAMPLERS)}")
        if sample_channels is not None and not 0 < sample_channels <= in_channels:
            raise ValueError(f"sample_channels {sample_channels} must be in 1..{in_channels}")
        if sample_channels == in_channels:
            sample_channels = None
        self.sampling = sampling
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.offset_groups = offset_groups
        k = kernel_size * kernel_size
        sampled = sample_channels or in_channels
        self.reduce = nn.Conv2d(in_channels, sampled, 1, bias=False) if sample_channels else None
        self.weight = nn.Parameter(torch.empty(out_channels, sampled, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.offset_mask = nn.Conv2d(in_channels, 3 * offset_groups * k, kernel_size, stride, padding, dilation)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)

    def forward(self, x: Tensor) -> Tensor:
        om = self.offset_mask(x)
        n_off = 2 * self.offset_groups * self.weight.shape[2] * self.weight.shape[3]
        offset, modulation = om[:, :n_off], torch.sigmoid(om[:, n_off:])
        sampled = x if self.reduce is None else self.reduce(x)
        return SAMPLERS[self.sampling](sampled, offset, self.weight, self.bias, self.stride, self.padding,
                                       self.dilation, modulation)
