"""YOLO11n-seg's architecture with random weights, exported to ONNX: a timing peer for ``bench --peer``.

``python -m eris.peers.yolo11_seg --out build/yolo11n-seg.onnx [--size 640]``

Issue 12 compares our INT8 image graph with Ultralytics' YOLO11n-seg, the closed-vocabulary
segmenter a Pi user would otherwise pick. Its weights cannot be fetched here and Ultralytics is
no dependency of ours, but a network's speed depends on its layers and shapes, not on its weight
values. This module rebuilds the layers of ``yolo11n-seg.yaml`` at scale ``n`` (depth 0.50,
width 0.25, max channels 1024): Conv = Conv2d + BatchNorm + SiLU, C3k2 (C3k inside where the yaml
says so), SPPF, C2PSA (attention over the stride-32 map), the FPN/PAN neck, and the Segment head
(DFL box branch, depthwise class branch, 32 mask coefficients, a 64-channel prototype at stride
4) with the export-mode decoding (DFL softmax, anchors, sigmoid), so the ONNX file has the same
operators and tensor shapes as ``yolo export format=onnx``: ``output0`` ``[1, 116, 8400]`` and
``output1`` ``[1, 32, 160, 160]`` at 640. Check against Ultralytics: its fused-model summary
of YOLO11n-seg (80 classes) prints 2,868,664 parameters, and this model has exactly that many
once BatchNorm is folded (asserted in the tests); its 9.8 GFLOPs at 640 (PyTorch's FLOP counter)
sit between the 10.4 and 9.7 Ultralytics published before and after its THOP counter was fixed. Whatever Ultralytics'
exporter does beyond this (onnxslim graph simplification) is not reproduced; a real export
remains the reference (``--peer`` takes any ONNX file).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["YOLO11Seg", "build_yolo11n_seg", "fused_parameters", "export_onnx", "main"]

DEPTH, WIDTH, MAX_CHANNELS = 0.50, 0.25, 1024


def _ch(c: int) -> int:
    """Channels at scale n: ``make_divisible(min(c, max) * width, 8)``."""
    return int(math.ceil(min(c, MAX_CHANNELS) * WIDTH / 8) * 8)


def _n(n: int) -> int:
    return max(round(n * DEPTH), 1) if n > 1 else n


class Conv(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, k: int = 3, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1, self.cv2 = Conv(c1, c_, k), Conv(c_, c2, k)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3k(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 2, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1, self.cv2, self.cv3 = Conv(c1, c_), Conv(c1, c_), Conv(2 * c_, c2)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, True, 3, 1.0) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k2(nn.Module):
    """C2f with Bottlenecks, or C3k blocks where ``c3k``."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1, self.cv2 = Conv(c1, 2 * self.c), Conv((2 + n) * self.c, c2)
        self.m = nn.ModuleList(C3k(self.c, self.c, 2) if c3k else Bottleneck(self.c, self.c) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1, self.cv2 = Conv(c1, c_), Conv(c_ * 4, c2)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_ratio: float = 0.5):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, act=False)
        self.proj = Conv(dim, dim, act=False)
        self.pe = Conv(dim, dim, 3, g=dim, act=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).view(b, self.num_heads, 2 * self.key_dim + self.head_dim, h * w).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(x)


class PSABlock(nn.Module):
    def __init__(self, c: int, num_heads: int):
        super().__init__()
        self.attn = Attention(c, num_heads)
        self.ffn = nn.Sequential(Conv(c, c * 2), Conv(c * 2, c, act=False))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.ffn(x)


class C2PSA(nn.Module):
    def __init__(self, c1: int, n: int = 1, e: float = 0.5):
        super().__init__()
        self.c = int(c1 * e)
        self.cv1, self.cv2 = Conv(c1, 2 * self.c), Conv(2 * self.c, c1)
        self.m = nn.Sequential(*(PSABlock(self.c, self.c // 64) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class Proto(nn.Module):
    def __init__(self, c1: int, c_: int, c2: int = 32):
        super().__init__()
        self.cv1 = Conv(c1, c_, 3)
        self.upsample = nn.ConvTranspose2d(c_, c_, 2, 2, 0, bias=True)
        self.cv2, self.cv3 = Conv(c_, c_, 3), Conv(c_, c2)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))


class Segment(nn.Module):
    """YOLO11's Detect head (non-legacy: depthwise class branch) plus mask coefficients and the
    prototype, decoding as in export mode."""

    def __init__(self, ch: tuple[int, ...], nc: int = 80, nm: int = 32, npr: int = 64, reg_max: int = 16):
        super().__init__()
        self.nc, self.nm, self.reg_max, self.strides = nc, nm, reg_max, (8, 16, 32)
        c2, c3, c4 = max(16, ch[0] // 4, reg_max * 4), max(ch[0], min(nc, 100)), max(ch[0] // 4, nm)
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(nn.Sequential(Conv(x, x, 3, g=x), Conv(x, c3)),
                                               nn.Sequential(Conv(c3, c3, 3, g=c3), Conv(c3, c3)),
                                               nn.Conv2d(c3, nc, 1)) for x in ch)
        self.cv4 = nn.ModuleList(nn.Sequential(Conv(x, c4, 3), Conv(c4, c4, 3), nn.Conv2d(c4, nm, 1)) for x in ch)
        self.proto = Proto(ch[0], npr, nm)
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1)

    def forward(self, xs: list[Tensor]) -> tuple[Tensor, Tensor]:
        p = self.proto(xs[0])
        b = xs[0].shape[0]
        mc = torch.cat([self.cv4[i](xs[i]).view(b, self.nm, -1) for i in range(3)], 2)
        feats = [torch.cat((self.cv2[i](xs[i]), self.cv3[i](xs[i])), 1) for i in range(3)]
        anchors, strides = [], []
        for f, s in zip(feats, self.strides):
            h, w = f.shape[2:]
            sy, sx = torch.meshgrid(torch.arange(h, dtype=f.dtype) + 0.5, torch.arange(w, dtype=f.dtype) + 0.5,
                                    indexing="ij")
            anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), s, dtype=f.dtype))
        anchor = torch.cat(anchors).transpose(0, 1).unsqueeze(0)
        stride = torch.cat(strides).transpose(0, 1)
        x = torch.cat([f.view(b, 4 * self.reg_max + self.nc, -1) for f in feats], 2)
        box, cls = x.split((4 * self.reg_max, self.nc), 1)
        dist = self.dfl(box.view(b, 4, self.reg_max, -1).transpose(2, 1).softmax(1)).view(b, 4, -1)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = anchor - lt, anchor + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * stride
        return torch.cat((dbox, cls.sigmoid(), mc), 1), p


class YOLO11Seg(nn.Module):
    def __init__(self, nc: int = 80):
        super().__init__()
        c = _ch
        self.b0, self.b1 = Conv(3, c(64), 3, 2), Conv(c(64), c(128), 3, 2)
        self.b2 = C3k2(c(128), c(256), _n(2), False, 0.25)
        self.b3 = Conv(c(256), c(256), 3, 2)
        self.b4 = C3k2(c(256), c(512), _n(2), False, 0.25)
        self.b5 = Conv(c(512), c(512), 3, 2)
        self.b6 = C3k2(c(512), c(512), _n(2), True)
        self.b7 = Conv(c(512), c(1024), 3, 2)
        self.b8 = C3k2(c(1024), c(1024), _n(2), True)
        self.b9 = SPPF(c(1024), c(1024), 5)
        self.b10 = C2PSA(c(1024), _n(2))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h13 = C3k2(c(1024) + c(512), c(512), _n(2), False)
        self.h16 = C3k2(c(512) + c(512), c(256), _n(2), False)
        self.h17 = Conv(c(256), c(256), 3, 2)
        self.h19 = C3k2(c(256) + c(512), c(512), _n(2), False)
        self.h20 = Conv(c(512), c(512), 3, 2)
        self.h22 = C3k2(c(512) + c(1024), c(1024), _n(2), True)
        self.head = Segment((c(256), c(512), c(1024)), nc, 32, c(256))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b10(self.b9(self.b8(self.b7(p4))))
        n4 = self.h13(torch.cat((self.up(p5), p4), 1))
        n3 = self.h16(torch.cat((self.up(n4), p3), 1))
        m4 = self.h19(torch.cat((self.h17(n3), n4), 1))
        m5 = self.h22(torch.cat((self.h20(m4), p5), 1))
        return self.head([n3, m4, m5])


def build_yolo11n_seg(seed: int = 0) -> YOLO11Seg:
    torch.manual_seed(seed)
    return YOLO11Seg().eval()


def fused_parameters(model: nn.Module) -> int:
    """Parameters once each BatchNorm is folded into its conv (a bias per channel instead of a
    weight and a bias), the count Ultralytics' ``model.info()`` prints for a fused model."""
    bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    return sum(p.numel() for p in model.parameters()) - bn


def export_onnx(path: str | Path, size: int = 640, opset: int = 18) -> Path:
    """A static ``1x3xSIZExSIZE`` float input named ``images``, as Ultralytics exports it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_yolo11n_seg()
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=True, opset_version=opset,
                          input_names=["images"], output_names=["output0", "output1"], external_data=False,
                          verbose=False)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eris.peers.yolo11_seg", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    ap.add_argument("--size", type=int, default=640, help="square input side (a multiple of 32)")
    args = ap.parse_args(argv)
    if args.size % 32:
        ap.error(f"--size {args.size}: must be a multiple of 32")
    export_onnx(args.out, args.size)
    print(f"{args.out}: YOLO11n-seg layers, random weights, {fused_parameters(build_yolo11n_seg()):,} parameters "
          f"with BatchNorm fused (Ultralytics' summary: 2,868,664), input 1x3x{args.size}x{args.size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
