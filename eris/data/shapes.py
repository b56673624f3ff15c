"""ShapeRef: a procedural referring-expression segmentation dataset.

Each sample is a scene of 2-7 coloured shapes on a textured background, one phrase that picks
out exactly one of them, that object's exact visible mask, and the scene description. Samples
are a pure function of ``(split, index, seed)``: the scene is laid out in units of the canvas,
so the same sample renders at any ``long_side`` (training renders small, evaluation at 640).

``python -m eris.data.shapes --out DIR --split val --n 1000`` writes ``images/*.jpg``,
``masks/*.png`` (0/255) and ``manifest.jsonl`` (id, image, mask, phrase, target, objects).
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from eris.data.expressions import Expression, generate_expression, phrase_kind, realise
from pi_runtime.files import atomic_write_bytes

__all__ = ["SceneObject", "Scene", "ShapeRefSample", "SPLITS", "SHAPES", "COLOURS", "ASPECTS",
           "make_scene", "draw_scene", "render_scene", "get_sample", "main"]

SPLITS = {"train": 0, "val": 1, "test": 2}
SPLIT_SIZES = {"val": 1000, "test": 1000}  # train is unlimited
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring")
# Base colours in HSV; objects jitter around them.
COLOURS = {
    "red": (0.0, 0.85, 0.85), "orange": (0.075, 0.9, 0.95), "yellow": (0.15, 0.85, 0.95),
    "green": (0.33, 0.75, 0.7), "blue": (0.61, 0.8, 0.85), "purple": (0.78, 0.6, 0.65),
    "pink": (0.92, 0.4, 0.98), "white": (0.0, 0.0, 0.97), "black": (0.0, 0.0, 0.08),
}
ASPECTS = {"4:3": (4, 3), "1:1": (1, 1), "16:9": (16, 9)}
ANALYSIS_LONG_SIDE = 320    # raster used for occlusion checks: independent of the render size
MAX_OCCLUSION = 0.30
MIN_SIZE, MAX_SIZE = 0.04, 0.30  # of the short side


@dataclass
class SceneObject:
    shape: str
    colour: str
    rgb: tuple[int, int, int]
    cx: float           # centre, fraction of width
    cy: float           # centre, fraction of height
    size: float         # bounding diameter, fraction of the short side
    rotation: float     # degrees
    area: float = 0.0           # visible area, fraction of the image
    visible: float = 1.0        # visible fraction of the object's own area
    extent: float = 0.0         # sqrt of the unoccluded area, fraction of the short side: "how big"


@dataclass
class Scene:
    width_units: int
    height_units: int
    background: dict
    objects: list[SceneObject]
    degrade: dict = field(default_factory=dict)

    def size_at(self, long_side: int) -> tuple[int, int]:
        """(width, height) in pixels with the long side ``long_side``."""
        scale = long_side / max(self.width_units, self.height_units)
        return round(self.width_units * scale), round(self.height_units * scale)


@dataclass
class ShapeRefSample:
    image: np.ndarray          # H x W x 3 uint8 RGB (degraded: blur, noise, JPEG)
    mask: np.ndarray           # H x W bool, the target's visible pixels
    phrase: str
    target: int | None         # index into scene.objects; None for an absent target
    scene: Scene
    expression: Expression
    split: str
    index: int

    @property
    def id(self) -> str:
        return f"{self.split}-{self.index:06d}"

    @property
    def kind(self) -> str:
        """Phrase kind for per-kind reports (:func:`eris.data.expressions.phrase_kind`)."""
        return "absent" if self.target is None else phrase_kind(self.expression)

    def describe(self) -> dict:
        """JSON-ready scene description."""
        return {"id": self.id, "phrase": self.phrase, "kind": self.kind, "target": self.target,
                "expression": asdict(self.expression),
                "objects": [asdict(o) for o in self.scene.objects], "background": self.scene.background}


def _rng(split: str, index: int, seed: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
    return np.random.default_rng([seed, SPLITS[split], index])


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return round(r * 255), round(g * 255), round(b * 255)


def _object_colour(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    h, s, v = COLOURS[name]
    if name in ("white", "black"):
        return _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.08), v + rng.uniform(-0.04, 0.03))
    return _hsv_to_rgb(h + rng.uniform(-0.015, 0.015), s + rng.uniform(-0.1, 0.1), v + rng.uniform(-0.08, 0.05))


def _muted(rng: np.random.Generator) -> tuple[int, int, int]:
    """Background colours: low saturation, mid value, so every object colour stands out."""
    return _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.7))


def _polygon(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of circumradius ``r`` (pixels) centred at ``(cx, cy)``."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.deg2rad([45, 135, 225, 315])]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.deg2rad([-90, 30, 150])]
    elif shape == "hexagon":
        pts = [(math.cos(a), math.sin(a)) for a in np.deg2rad(np.arange(6) * 60)]
    elif shape == "diamond":
        pts = [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]
    elif shape == "star":
        pts = [((1.0 if i % 2 == 0 else 0.45) * math.cos(a), (1.0 if i % 2 == 0 else 0.45) * math.sin(a))
               for i, a in enumerate(np.deg2rad(np.arange(10) * 36 - 90))]
    elif shape == "cross":
        t = 0.34
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
               (-t, -t)]
    else:
        raise ValueError(f"not a polygon shape: {shape}")
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _draw_mask(draw: ImageDraw.ImageDraw, obj: SceneObject, width: int, height: int) -> None:
    """Draws the object's full shape as 255 on an ``L`` canvas (a ring leaves its hole at 0)."""
    cx, cy = obj.cx * width, obj.cy * height
    r = obj.size * min(width, height) / 2
    if obj.shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if obj.shape == "ring":
            inner = r * 0.55
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        draw.polygon(_polygon(obj.shape, cx, cy, r, obj.rotation), fill=255)


def object_masks(objects: list[SceneObject], width: int, height: int) -> list[np.ndarray]:
    """Each object's full (unoccluded) mask, ``H x W`` bool."""
    masks = []
    for obj in objects:
        canvas = Image.new("L", (width, height), 0)
        _draw_mask(ImageDraw.Draw(canvas), obj, width, height)
        masks.append(np.asarray(canvas) > 127)
    return masks


def _visible(full: list[np.ndarray]) -> list[np.ndarray]:
    covered = np.zeros(full[0].shape if full else (0, 0), bool)
    visible = [None] * len(full)
    for i in range(len(full) - 1, -1, -1):
        visible[i] = full[i] & ~covered
        covered |= full[i]
    return visible


def visible_masks(objects: list[SceneObject], width: int, height: int) -> list[np.ndarray]:
    """Painter's order: an object hides what it covers of the objects drawn before it."""
    return _visible(object_masks(objects, width, height))


def _measure(objects: list[SceneObject], width: int, height: int) -> None:
    full = object_masks(objects, width, height)
    vis = _visible(full)
    short = min(width, height)
    for obj, f, v in zip(objects, full, vis):
        obj.area = float(v.sum()) / (width * height)
        obj.visible = float(v.sum()) / max(float(f.sum()), 1.0)
        obj.extent = math.sqrt(float(f.sum())) / short


def make_scene(rng: np.random.Generator) -> Scene:
    """Lays out a scene in canvas units (no pixels yet)."""
    aspect = list(ASPECTS)[rng.integers(len(ASPECTS))]
    wu, hu = ASPECTS[aspect]
    aw, ah = round(ANALYSIS_LONG_SIDE * wu / max(wu, hu)), round(ANALYSIS_LONG_SIDE * hu / max(wu, hu))
    kind = ["solid", "gradient", "noise", "stripes", "checker"][rng.integers(5)]
    background = {"kind": kind, "colours": [_muted(rng), _muted(rng)], "angle": float(rng.uniform(0, 180)),
                  "period": float(rng.uniform(0.04, 0.15)), "noise_cells": int(rng.integers(4, 24)),
                  "noise_seed": int(rng.integers(2**31))}
    n_target = int(rng.integers(2, 8))
    objects: list[SceneObject] = []
    for _ in range(n_target * 12):
        if len(objects) == n_target:
            break
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        size = float(np.exp(rng.uniform(np.log(MIN_SIZE), np.log(MAX_SIZE))))
        short = min(wu, hu)
        mx, my = size * short / wu / 2, size * short / hu / 2  # keep the whole shape on the canvas
        obj = SceneObject(shape=shape, colour=colour, rgb=_object_colour(rng, colour),
                          cx=float(rng.uniform(mx, 1 - mx)), cy=float(rng.uniform(my, 1 - my)),
                          size=size, rotation=float(rng.uniform(0, 360)))
        trial = objects + [obj]
        _measure(trial, aw, ah)
        if all(o.visible >= 1 - MAX_OCCLUSION for o in trial) and obj.area > 0:
            objects = trial
    _measure(objects, aw, ah)
    degrade = {"blur": float(rng.uniform(0, 0.8)) if rng.random() < 0.5 else 0.0,
               "noise": float(rng.uniform(0, 5)) if rng.random() < 0.5 else 0.0,
               "jpeg": int(rng.integers(60, 96)) if rng.random() < 0.5 else 0,
               "noise_seed": int(rng.integers(2**31))}
    return Scene(width_units=wu, height_units=hu, background=background, objects=objects, degrade=degrade)


def _background(bg: dict, width: int, height: int) -> np.ndarray:
    c0, c1 = (np.array(c, np.float32) for c in bg["colours"])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
    a = math.radians(bg["angle"])
    along = xx * math.cos(a) + yy * math.sin(a)
    if bg["kind"] == "solid":
        t = np.zeros_like(xx)
    elif bg["kind"] == "gradient":
        t = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif bg["kind"] == "stripes":
        t = (np.floor(along / bg["period"]) % 2) * 0.6
    elif bg["kind"] == "checker":
        t = ((np.floor(xx / bg["period"]) + np.floor(yy / bg["period"])) % 2) * 0.6
    else:  # noise: a coarse random field, bilinearly upsampled
        cells = bg["noise_cells"]
        field_ = np.random.default_rng(bg["noise_seed"]).random((cells, cells)).astype(np.float32)
        t = np.asarray(Image.fromarray((field_ * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR),
                       np.float32) / 255
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def render_scene(scene: Scene, long_side: int = 640, degrade: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(image H x W x 3 uint8, visible masks)``; with ``degrade=False`` the image is the exact
    composite, so each visible mask covers precisely the pixels of its object's colour."""
    width, height = scene.size_at(long_side)
    pixels = np.clip(_background(scene.background, width, height), 0, 255).astype(np.uint8)
    masks = visible_masks(scene.objects, width, height)
    for obj, mask in zip(scene.objects, masks):
        pixels[mask] = obj.rgb
    image = Image.fromarray(pixels)
    if degrade:
        d = scene.degrade
        scale = long_side / 640
        if d["blur"] > 0:
            image = image.filter(ImageFilter.GaussianBlur(d["blur"] * scale))
        if d["noise"] > 0:
            noise = np.random.default_rng(d["noise_seed"]).normal(0, d["noise"], (height, width, 3))
            image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))
        if d["jpeg"]:
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=d["jpeg"])
            image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(image), masks


def absent_expression(objects: list[SceneObject], rng: np.random.Generator) -> tuple[Expression, str]:
    """An attribute phrase naming a (colour, shape) that no object in the scene has."""
    present = {(o.colour, o.shape) for o in objects}
    shapes_present = {o.shape for o in objects}
    while True:
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = None if rng.random() < 0.3 and shape not in shapes_present else list(COLOURS)[rng.integers(len(COLOURS))]
        if colour is None or (colour, shape) not in present:
            expr = Expression("attribute", colour, shape)
            return expr, realise(expr, rng)


def draw_scene(rng: np.random.Generator):
    """``(scene, (target, expression, phrase))`` drawn from ``rng``; a scene where no expression is
    unique is redrawn, up to 20 times (then None)."""
    for _ in range(20):
        scene = make_scene(rng)
        found = generate_expression(scene.objects, rng)
        if found is not None:
            return scene, found
    return None


def get_sample(split: str, index: int, seed: int = 0, long_side: int = 640, degrade: bool = True,
               absent: bool = False) -> ShapeRefSample:
    """The sample ``index`` of ``split``; identical for identical arguments on any machine.

    With ``absent``, the same scene comes with a phrase naming something it does not contain
    and an empty mask (``kind == "absent"``): "not there" is an answer the model must learn."""
    size = SPLIT_SIZES.get(split)
    if size is not None and not 0 <= index < size:
        raise IndexError(f"{split} has {size} samples; index {index} is out of range")
    drawn = draw_scene(_rng(split, index, seed))
    if drawn is None:
        raise RuntimeError(f"{split}/{index}: no referable object in 20 scenes")
    scene, (target, expression, phrase) = drawn
    image, masks = render_scene(scene, long_side, degrade)
    if absent:  # its own stream, so the scene and image stay those of the present sample
        expression, phrase = absent_expression(scene.objects, np.random.default_rng([seed, 999, SPLITS[split], index]))
        return ShapeRefSample(image=image, mask=np.zeros(image.shape[:2], bool), phrase=phrase, target=None,
                              scene=scene, expression=expression, split=split, index=index)
    return ShapeRefSample(image=image, mask=masks[target], phrase=phrase, target=target, scene=scene,
                          expression=expression, split=split, index=index)


def export_split(out: Path, split: str, n: int, seed: int = 0, long_side: int = 640) -> Path:
    """Writes ``n`` samples as files; samples already written are kept (the run resumes)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    lines = []
    for index in tqdm(range(n), desc=f"ShapeRef {split}", unit="img"):
        sid = f"{split}-{index:06d}"
        img_path, mask_path = out / "images" / f"{sid}.jpg", out / "masks" / f"{sid}.png"
        sample = get_sample(split, index, seed, long_side, degrade=True)
        if not (img_path.exists() and mask_path.exists()):
            for path, pil, fmt in ((img_path, Image.fromarray(sample.image), "JPEG"),
                                   (mask_path, Image.fromarray(sample.mask.astype(np.uint8) * 255), "PNG")):
                buf = io.BytesIO()
                pil.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
                atomic_write_bytes(path, buf.getvalue())
        lines.append(json.dumps({"image": f"images/{sid}.jpg", "mask": f"masks/{sid}.png", **sample.describe()}))
    atomic_write_bytes(out / "manifest.jsonl", ("\n".join(lines) + "\n").encode())
    return out / "manifest.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eris.data.shapes", description="Write ShapeRef samples to disk.")
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--split", default="val", choices=sorted(SPLITS), help="which split")
    ap.add_argument("--n", type=int, default=None, help="number of samples (default: the whole val/test split)")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (val/test are defined with seed 0)")
    ap.add_argument("--long-side", type=int, default=640, help="image long side in pixels")
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else SPLIT_SIZES.get(args.split)
    if n is None:
        ap.error("--n is required for the train split")
    print(export_split(args.out, args.split, n, args.seed, args.long_side))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
