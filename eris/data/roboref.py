"""RoboRef: robot-camera tabletop scenes rendered by PyBullet, with referring expressions.

A Pi camera 0.15-0.8 m above a table or floor looks down at 15-70 degrees on 3-8 objects
(cube/block, ball, cylinder/can, mug/cup, duck, teddy bear, lego brick, domino, ring/donut,
triangle/prism; meshes from ``pybullet_data``), dropped and settled by a short physics run, some
stacked. PyBullet's CPU renderer (TinyRenderer: shading, shadows, perspective) draws the frame
and an exact per-object segmentation buffer; the camera's defects (blur, noise, white balance,
exposure, JPEG) are added after. One phrase per sample picks out exactly one visible object (it
keeps >= 40 % of its own pixels) among every object in view, small and far ones included, or,
for about 10 % of samples, names something the scene does not contain (``kind == "absent"``,
empty mask: "not there" is an answer the model must learn).

Samples are a pure function of ``(split, index, seed)``: the scene and the expression are decided
at a fixed analysis resolution, then rendered at any size. ``train`` is unlimited; ``val`` and
``test`` have 1000 samples each.

``python -m eris.data.roboref --out DIR --split val --n 1000`` writes images, masks and a
manifest (with each phrase's kind); ``--sequence DIR`` renders a camera sweep over one scene
for ``python -m pi_runtime --source DIR``. Needs ``pybullet`` (the ``train`` extra).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from eris.data.roboref_expressions import generate_expression

__all__ = ["CATEGORIES", "COLOURS", "RoboObject", "RoboScene", "RoboRefSample", "draw_scene", "get_sample",
           "make_scene", "render", "generate_expression", "RoboRefTrain", "eval_samples", "render_sequence", "main"]

SPLITS = {"train": 0, "val": 1, "test": 2}
SPLIT_SIZES = {"val": 1000, "test": 1000}
ANALYSIS_LONG_SIDE = 192          # expressions are decided on a segmentation of this size
MIN_VISIBLE = 0.40                # the target keeps this share of its own pixels
MIN_PIXELS = 40                   # at analysis size: a target (or a reference) shows this many pixels
# ... and any object showing this many may be seen: a phrase must not fit it too, and an ordinal is
# made only where counting it or not gives the same answer (eris.data.roboref_expressions). 8
# pixels at 192 are about 90 at 640 x 480. Until session 25 MIN_PIXELS (about 440 pixels at 640)
# was the only line, so a small or far object in plain view was left out of the uniqueness checks:
# "the domino next to the blue ball" had a second domino as near, "that teddy bear" a second,
# smaller teddy (README, "Session 25").
MIN_SEEN_PIXELS = 8
ABSENT_P = 0.10

# name -> nouns (first is canonical), how it is built, (min, max) longest dimension in metres.
CATEGORIES = {
    "cube": (("cube", "block"), "box", (0.03, 0.07)),
    "ball": (("ball",), "sphere", (0.03, 0.07)),
    "cylinder": (("cylinder", "can"), "cylinder", (0.04, 0.10)),
    "mug": (("mug", "cup"), "objects/mug.urdf", (0.08, 0.12)),
    "duck": (("duck",), "duck_vhacd.urdf", (0.05, 0.10)),
    "teddy": (("teddy bear", "teddy"), "teddy_vhacd.urdf", (0.08, 0.15)),
    "lego": (("lego brick", "lego"), "lego/lego.urdf", (0.03, 0.06)),
    "domino": (("domino",), "domino/domino.urdf", (0.04, 0.06)),
    "ring": (("ring", "donut"), "torus/torus_textured.obj", (0.04, 0.08)),
    "prism": (("triangle", "prism"), "toys/prism.obj", (0.04, 0.08)),
}
# Native longest dimension of each mesh/URDF at scale 1 (measured with getAABB).
_NATIVE = {"objects/mug.urdf": 0.1276, "duck_vhacd.urdf": 0.0907, "teddy_vhacd.urdf": 0.1012,
           "lego/lego.urdf": 0.034, "domino/domino.urdf": 0.0508, "torus/torus_textured.obj": 1.504,
           "toys/prism.obj": 0.122}
COLOURS = {
    "red": (0.85, 0.1, 0.1), "orange": (0.95, 0.5, 0.05), "yellow": (0.95, 0.85, 0.1), "green": (0.15, 0.65, 0.2),
    "blue": (0.1, 0.3, 0.9), "purple": (0.5, 0.2, 0.7), "pink": (0.98, 0.5, 0.7), "white": (0.93, 0.93, 0.93),
    "black": (0.06, 0.06, 0.06), "brown": (0.45, 0.27, 0.1),
}
STACK_BASES = ("cube", "lego", "domino", "cylinder")
STACK_TOPS = ("cube", "ball", "lego", "duck", "ring", "prism")
GENERIC = ("object", "thing", "one")


@dataclass
class RoboObject:
    category: str
    colour: str
    size: float                       # longest dimension, metres
    textured: bool = False            # kept its own texture (the duck); colour then names it
    position: tuple = (0.0, 0.0, 0.0)  # after settling, world metres
    orientation: tuple = (0.0, 0.0, 0.0, 1.0)
    on: int | None = None             # index of the object it rests on (stacked)
    # measured from the analysis render:
    pixels: int = 0                   # visible pixels at analysis size
    visible: float = 0.0              # visible / unoccluded pixels
    cx: float = 0.0                   # visible centroid, fraction of width
    cy: float = 0.0
    depth: float = 0.0                # distance from the camera, metres


@dataclass
class RoboScene:
    aspect: tuple[int, int]
    surface: dict
    camera: dict
    light: dict
    objects: list[RoboObject]
    degrade: dict = field(default_factory=dict)

    def size_at(self, long_side: int) -> tuple[int, int]:
        w, h = self.aspect
        scale = long_side / max(w, h)
        return round(w * scale), round(h * scale)


@dataclass
class RoboRefSample:
    image: np.ndarray
    mask: np.ndarray
    phrase: str
    target: int | None               # None for an absent target
    kind: str
    scene: RoboScene
    split: str
    index: int

    @property
    def id(self) -> str:
        return f"roboref-{self.split}-{self.index:06d}"

    def describe(self) -> dict:
        return {"id": self.id, "phrase": self.phrase, "kind": self.kind, "target": self.target,
                "objects": [asdict(o) for o in self.scene.objects], "camera": self.scene.camera}


# ---------------------------------------------------------------------------------------------
# The simulator: one DIRECT connection per process (DataLoader workers each get their own).

_SIM: dict = {}


def _sim():
    import pybullet as p
    import pybullet_data

    if _SIM.get("pid") != os.getpid():
        cid = p.connect(p.DIRECT)
        folder = _texture_dir()
        white = folder / "white.png"
        _write_once(white, Image.new("RGB", (4, 4), (255, 255, 255)))
        textures = []
        for i, kind in enumerate(("wood", "checker", "noise", "plain", "wood", "stripes", "checker", "noise")):
            path = folder / f"surface{i}.png"
            _write_once(path, Image.fromarray(_surface_texture(kind, np.random.default_rng(1000 + i))))
            textures.append((kind, str(path)))
        _SIM.clear()
        _SIM.update(pid=os.getpid(), p=p, cid=cid, data=pybullet_data.getDataPath(), white=str(white),
                    textures=textures)
    return _SIM


TEXTURE_VERSION = 1   # bump when _surface_texture changes, so no process reads the old files


def _texture_dir() -> Path:
    """Where the surface textures lie (PyBullet loads textures from files). They are the same in
    every process (fixed seeds), so one folder per user serves all of them; a fresh folder per
    process would leave one behind in the temp dir for every DataLoader worker ever started."""
    folder = Path(tempfile.gettempdir()) / f"eris-roboref-textures-v{TEXTURE_VERSION}-{os.getuid() if hasattr(os, 'getuid') else 0}"
    folder.mkdir(exist_ok=True)
    return folder


def _write_once(path: Path, image: Image.Image) -> None:
    """Save ``image`` at ``path`` unless it is there; atomic, so concurrent workers never read half a file."""
    if path.exists():
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _surface_texture(kind: str, rng: np.random.Generator, n: int = 256) -> np.ndarray:
    """Grey-level surface patterns (tinted per scene by the body colour)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    if kind == "wood":
        t = 0.75 + 0.25 * np.sin((yy * rng.uniform(20, 40) + 0.3 * np.sin(xx * rng.uniform(3, 8))) * math.pi)
    elif kind == "checker":
        k = int(rng.integers(4, 12))
        t = 0.65 + 0.35 * ((np.floor(xx * k) + np.floor(yy * k)) % 2)
    elif kind == "stripes":
        t = 0.7 + 0.3 * (np.floor(xx * rng.integers(6, 20)) % 2)
    elif kind == "noise":
        cells = rng.random((16, 16)).astype(np.float32)
        t = 0.7 + 0.3 * np.asarray(Image.fromarray((cells * 255).astype(np.uint8)).resize((n, n), Image.BILINEAR),
                                   np.float32) / 255
    else:
        t = np.ones_like(xx)
    g = (np.clip(t, 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _rng(split: str, index: int, seed: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
    return np.random.default_rng([seed, 77, SPLITS[split], index])


def _add_object(sim, obj: RoboObject, position, orientation) -> int:
    p, cid = sim["p"], sim["cid"]
    _, how, _ = CATEGORIES[obj.category]
    rgba = [*COLOURS[obj.colour], 1.0]
    if how == "box":
        half = [obj.size / 2 / math.sqrt(1.2)] * 2 + [obj.size / 2 / math.sqrt(1.2) * 0.9]
        body = p.createMultiBody(0.05, p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=cid),
                                 p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=rgba,
                                                     physicsClientId=cid),
                                 basePosition=position, baseOrientation=orientation, physicsClientId=cid)
    elif how == "sphere":
        r = obj.size / 2
        body = p.createMultiBody(0.05, p.createCollisionShape(p.GEOM_SPHERE, radius=r, physicsClientId=cid),
                                 p.createVisualShape(p.GEOM_SPHERE, radius=r, rgbaColor=rgba, physicsClientId=cid),
                                 basePosition=position, baseOrientation=orientation, physicsClientId=cid)
    elif how == "cylinder":
        h = obj.size
        r = h * 0.35
        body = p.createMultiBody(0.05, p.createCollisionShape(p.GEOM_CYLINDER, radius=r, height=h,
                                                              physicsClientId=cid),
                                 p.createVisualShape(p.GEOM_CYLINDER, radius=r, length=h, rgbaColor=rgba,
                                                     physicsClientId=cid),
                                 basePosition=position, baseOrientation=orientation, physicsClientId=cid)
    elif how.endswith(".urdf"):
        body = p.loadURDF(os.path.join(sim["data"], how), position, orientation,
                          globalScaling=obj.size / _NATIVE[how], physicsClientId=cid)
    else:  # a bare mesh
        s = [obj.size / _NATIVE[how]] * 3
        path = os.path.join(sim["data"], how)
        if obj.category == "ring":  # the torus mesh's axis is y: lay it flat
            q = p.getQuaternionFromEuler([math.pi / 2, 0, 0])
            orientation = p.multiplyTransforms([0, 0, 0], orientation, [0, 0, 0], q)[1]
        body = p.createMultiBody(0.05, p.createCollisionShape(p.GEOM_MESH, fileName=path, meshScale=s,
                                                              physicsClientId=cid),
                                 p.createVisualShape(p.GEOM_MESH, fileName=path, meshScale=s, physicsClientId=cid),
                                 basePosition=position, baseOrientation=orientation, physicsClientId=cid)
    if obj.textured:
        p.changeVisualShape(body, -1, rgbaColor=[1, 1, 1, 1], physicsClientId=cid)
    else:
        if "white_id" not in sim:  # once per world (resetSimulation drops textures), not per object
            sim["white_id"] = p.loadTexture(sim["white"], physicsClientId=cid)
        tex = sim["white_id"]
        p.changeVisualShape(body, -1, rgbaColor=rgba, textureUniqueId=tex, physicsClientId=cid)
        for j in range(p.getNumJoints(body, physicsClientId=cid)):
            p.changeVisualShape(body, j, rgbaColor=rgba, textureUniqueId=tex, physicsClientId=cid)
    return body


def _build(sim, scene: RoboScene, place: bool, rng: np.random.Generator | None = None) -> list[int]:
    """Resets the world and adds the surface and the objects. With ``place``, objects are dropped at
    random spots and settled (their resting poses written into ``scene``); otherwise they are put
    back at the recorded poses."""
    p, cid = sim["p"], sim["cid"]
    p.resetSimulation(physicsClientId=cid)
    sim.pop("white_id", None)
    p.setGravity(0, 0, -9.81, physicsClientId=cid)
    surface = p.loadURDF(os.path.join(sim["data"], "plane.urdf"), physicsClientId=cid)
    _, tex_path = sim["textures"][scene.surface["texture"]]
    tex = p.loadTexture(tex_path, physicsClientId=cid)
    p.changeVisualShape(surface, -1, rgbaColor=[*scene.surface["rgb"], 1], textureUniqueId=tex, physicsClientId=cid)
    if scene.surface.get("wall") is not None:
        w = scene.surface["wall"]
        p.createMultiBody(0, -1, p.createVisualShape(p.GEOM_BOX, halfExtents=[3, 0.01, 1.5], rgbaColor=[*w["rgb"], 1],
                                                     physicsClientId=cid),
                          basePosition=w["position"], baseOrientation=p.getQuaternionFromEuler([0, 0, w["yaw"]]),
                          physicsClientId=cid)
    bodies = []
    if not place:
        # Poses were read back with getBasePositionAndOrientation (the inertial frame), which is
        # what resetBasePositionAndOrientation sets; loadURDF's own pose is the link frame.
        for obj in scene.objects:
            body = _add_object(sim, obj, (0, 0, -5), (0, 0, 0, 1))
            p.resetBasePositionAndOrientation(body, obj.position, obj.orientation, physicsClientId=cid)
            bodies.append(body)
        return bodies
    spread = 0.06 + 0.02 * len(scene.objects)
    placed: list[tuple[float, float, float]] = []
    for i, obj in enumerate(scene.objects):
        yaw = rng.uniform(0, 2 * math.pi)
        q = p.getQuaternionFromEuler([0, 0, yaw])
        if obj.on is not None:
            x, y, _ = placed[obj.on]
            floor = p.getAABB(bodies[obj.on], physicsClientId=cid)[1][2] + 0.003
        else:
            for _ in range(50):
                x, y = (float(v) for v in rng.uniform(-spread, spread, 2))
                if all(math.hypot(x - px, y - py) > (obj.size + ps) * 0.6 for px, py, ps in placed):
                    break
            floor = 0.003
        placed.append((x, y, obj.size))
        body = _add_object(sim, obj, (x, y, 1.0 + 0.3 * i), q)
        # drop from just above its support: the mesh origin is not the bottom of every object
        lo, _ = p.getAABB(body, physicsClientId=cid)
        pos, orn = p.getBasePositionAndOrientation(body, physicsClientId=cid)
        p.resetBasePositionAndOrientation(body, (pos[0], pos[1], pos[2] - lo[2] + floor), orn, physicsClientId=cid)
        bodies.append(body)
    for _ in range(300):  # 1.25 s at 240 Hz
        p.stepSimulation(physicsClientId=cid)
    for obj, body in zip(scene.objects, bodies):
        pos, orn = p.getBasePositionAndOrientation(body, physicsClientId=cid)
        obj.position, obj.orientation = tuple(map(float, pos)), tuple(map(float, orn))
    return bodies


def _camera_matrices(sim, cam: dict, width: int, height: int):
    p = sim["p"]
    eye, target = cam["eye"], cam["target"]
    fwd = np.subtract(target, eye)
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, [0, 0, 1])
    right = right / np.linalg.norm(right)
    up = np.cross(right, fwd)
    roll = math.radians(cam["roll"])
    up = up * math.cos(roll) + right * math.sin(roll)
    view = p.computeViewMatrix(eye, target, up.tolist())
    # fov is the vertical field of view of a 4:3 frame; a 16:9 frame keeps the horizontal one.
    hfov = 2 * math.degrees(math.atan(math.tan(math.radians(cam["fov"] / 2)) * 4 / 3))
    vfov = 2 * math.degrees(math.atan(math.tan(math.radians(hfov / 2)) * height / width))
    proj = p.computeProjectionMatrixFOV(vfov, width / height, 0.02, 6.0)
    return view, proj


def _render(sim, scene: RoboScene, width: int, height: int, shadows: bool = True) -> tuple[np.ndarray, np.ndarray]:
    p = sim["p"]
    view, proj = _camera_matrices(sim, scene.camera, width, height)
    light = scene.light
    _, _, rgba, _, seg = p.getCameraImage(
        width, height, view, proj, renderer=p.ER_TINY_RENDERER, shadow=int(shadows and light["shadow"]),
        lightDirection=light["direction"], lightColor=light["colour"], lightAmbientCoeff=light["ambient"],
        lightDiffuseCoeff=light["diffuse"], lightSpecularCoeff=light["specular"], physicsClientId=sim["cid"])
    rgb = np.reshape(np.asarray(rgba, np.uint8), (height, width, 4))[:, :, :3]
    seg = np.reshape(np.asarray(seg), (height, width))
    return rgb, seg


def _object_mask(seg: np.ndarray, body: int) -> np.ndarray:
    return (seg & ((1 << 24) - 1)) == body if seg.min() >= 0 else seg == body


def make_scene(rng: np.random.Generator, n_objects: int | None = None) -> RoboScene:
    """Draws a scene description (objects not yet placed)."""
    aspect = (16, 9) if rng.random() < 0.25 else (4, 3)
    n = int(n_objects or rng.integers(3, 9))
    # Categories come from a small per-scene subset, so scenes hold several blocks or balls and
    # need positions, sizes, ordinals and relations to tell them apart.
    names = list(rng.choice(list(CATEGORIES), size=int(rng.integers(2, 6)), replace=False))
    objects: list[RoboObject] = []
    for _ in range(n):
        cat = names[rng.integers(len(names))]
        lo, hi = CATEGORIES[cat][2]
        textured = cat == "duck" and rng.random() < 0.4
        colour = "yellow" if textured else list(COLOURS)[rng.integers(len(COLOURS))]
        objects.append(RoboObject(cat, colour, float(rng.uniform(lo, hi)), textured))
    if rng.random() < 0.3:  # stack one object on another
        bases = [i for i, o in enumerate(objects) if o.category in STACK_BASES]
        tops = [i for i, o in enumerate(objects) if o.category in STACK_TOPS]
        if bases and tops:
            b = bases[rng.integers(len(bases))]
            t = [i for i in tops if i != b]
            if t:
                top = t[rng.integers(len(t))]
                # the top must come after its base so that the base is placed first
                if top < b:
                    objects[top], objects[b] = objects[b], objects[top]
                    top, b = b, top
                objects[top].on = b
                objects[top].size = min(objects[top].size, objects[b].size * 1.1)
    rgb = np.clip(np.array(COLOURS[list(COLOURS)[rng.integers(len(COLOURS))]]) * 0.4 + rng.uniform(0.25, 0.6, 3),
                  0.1, 1.0)
    surface = {"texture": int(rng.integers(8)), "rgb": rgb.round(3).tolist()}
    # A robot's camera a few tens of centimetres from the objects: the ray to the table is at most
    # 0.9 m, so a low pitch comes with a low camera.
    pitch = float(rng.uniform(15, 70))
    height = float(rng.uniform(0.15, max(0.16, min(0.8, 0.9 * math.sin(math.radians(pitch))))))
    yaw = float(rng.uniform(0, 360))
    dist = height / math.tan(math.radians(pitch))
    look = rng.normal(0, 0.04, 2)
    eye = [float(look[0] - dist * math.cos(math.radians(yaw))), float(look[1] - dist * math.sin(math.radians(yaw))),
           height]
    camera = {"eye": eye, "target": [float(look[0]), float(look[1]), 0.0], "roll": float(rng.normal(0, 3)),
              "fov": float(rng.uniform(50, 75)), "height": height, "pitch": pitch}
    if rng.random() < 0.5:
        wall_d = float(rng.uniform(0.5, 1.5))
        wall_rgb = rng.uniform(0.3, 0.9, 3).round(3).tolist()
        surface["wall"] = {"rgb": wall_rgb, "yaw": math.radians(yaw) + math.pi / 2,
                           "position": [float(look[0] + wall_d * math.cos(math.radians(yaw))),
                                        float(look[1] + wall_d * math.sin(math.radians(yaw))), 0.0]}
    d = rng.normal(size=3)
    direction = [float(d[0]), float(d[1]), float(abs(d[2]) + 0.8)]
    light = {"direction": direction, "colour": rng.uniform(0.85, 1.0, 3).round(3).tolist(),
             "ambient": float(rng.uniform(0.35, 0.7)), "diffuse": float(rng.uniform(0.4, 0.8)),
             "specular": float(rng.uniform(0.0, 0.3)), "shadow": bool(rng.random() < 0.8)}
    degrade = {"blur": float(rng.uniform(0, 1.0)) if rng.random() < 0.5 else 0.0,
               "noise": float(rng.uniform(1, 6)) if rng.random() < 0.6 else 0.0,
               "wb": rng.uniform(0.88, 1.12, 3).round(3).tolist(), "exposure": float(rng.uniform(0.75, 1.25)),
               "jpeg": int(rng.integers(60, 96)) if rng.random() < 0.6 else 0, "noise_seed": int(rng.integers(2**31))}
    return RoboScene(aspect=aspect, surface=surface, camera=camera, light=light, objects=objects, degrade=degrade)


def _analyse(sim, scene: RoboScene, bodies: list[int]) -> None:
    """Visible pixels, visible share, centroid and camera distance of every object."""
    p = sim["p"]
    w, h = scene.size_at(ANALYSIS_LONG_SIDE)
    _, seg = _render(sim, scene, w, h, shadows=False)
    eye = np.array(scene.camera["eye"])
    for obj, body in zip(scene.objects, bodies):
        m = _object_mask(seg, body)
        obj.pixels = int(m.sum())
        if obj.pixels:
            ys, xs = np.nonzero(m)
            obj.cx, obj.cy = float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h
        lo, hi = p.getAABB(body, physicsClientId=sim["cid"])
        obj.depth = float(np.linalg.norm((np.array(lo) + np.array(hi)) / 2 - eye))
    # unoccluded pixels: every other object moved out of sight, one object at a time for the seen ones
    for i, (obj, body) in enumerate(zip(scene.objects, bodies)):
        if obj.pixels < MIN_PIXELS:
            obj.visible = 0.0
            continue
        for j, other in enumerate(bodies):
            if j != i:
                p.resetBasePositionAndOrientation(other, [50 + j, 50, 0], [0, 0, 0, 1], physicsClientId=sim["cid"])
        _, alone = _render(sim, scene, w, h, shadows=False)
        obj.visible = obj.pixels / max(int(_object_mask(alone, body).sum()), 1)
        for j, other in enumerate(bodies):
            if j != i:
                o = scene.objects[j]
                p.resetBasePositionAndOrientation(other, o.position, o.orientation, physicsClientId=sim["cid"])


def _degrade(rgb: np.ndarray, d: dict, long_side: int) -> np.ndarray:
    img = rgb.astype(np.float32) * np.array(d["wb"], np.float32) * d["exposure"]
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    scale = long_side / 640
    if d["blur"] > 0:
        image = image.filter(ImageFilter.GaussianBlur(d["blur"] * scale))
    if d["noise"] > 0:
        noise = np.random.default_rng(d["noise_seed"]).normal(0, d["noise"], (image.height, image.width, 3))
        image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))
    if d["jpeg"]:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=d["jpeg"])
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(image)


def render(scene: RoboScene, long_side: int = 640, degrade: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(image H x W x 3 uint8, visible mask of every object)`` of a placed scene."""
    sim = _sim()
    bodies = _build(sim, scene, place=False)
    w, h = scene.size_at(long_side)
    rgb, seg = _render(sim, scene, w, h)
    masks = [_object_mask(seg, b) for b in bodies]
    return (_degrade(rgb, scene.degrade, long_side) if degrade else rgb.copy()), masks


def place_scene(rng: np.random.Generator) -> tuple[RoboScene, list[int]]:
    """A scene drawn, settled and measured (the simulator holds it afterwards)."""
    sim = _sim()
    scene = make_scene(rng)
    bodies = _build(sim, scene, place=True, rng=rng)
    _analyse(sim, scene, bodies)
    return scene, bodies


def draw_scene(rng: np.random.Generator, kind_weights: dict[str, float] | None = None,
               colour_weights: dict[str, float] | None = None):
    """``(scene, (target, kind, phrase))`` drawn from ``rng``, absent-target phrases at
    :data:`ABSENT_P`; a scene where no expression is unique is redrawn, up to 20 times (then None)."""
    absent = rng.random() < ABSENT_P
    for _ in range(20):
        scene, _ = place_scene(rng)
        found = generate_expression(scene.objects, rng, absent=absent, weights=kind_weights,
                                    colour_weights=colour_weights)
        if found is not None:
            return scene, found
    return None


def get_sample(split: str, index: int, seed: int = 0, long_side: int = 640, degrade: bool = True,
               kind_weights: dict[str, float] | None = None,
               colour_weights: dict[str, float] | None = None) -> RoboRefSample:
    """Sample ``index`` of ``split``; the same on any machine for the same arguments.
    ``kind_weights``: the phrase-kind mix; ``colour_weights``: the target colours' odds (training
    only; see ``roboref_expressions.kind_weights`` and ``colour_weights``)."""
    size = SPLIT_SIZES.get(split)
    if size is not None and not 0 <= index < size:
        raise IndexError(f"{split} has {size} samples; index {index} is out of range")
    drawn = draw_scene(_rng(split, index, seed), kind_weights, colour_weights)
    if drawn is None:
        raise RuntimeError(f"roboref {split}/{index}: no referable object in 20 scenes")
    scene, (target, kind, phrase) = drawn
    image, masks = render(scene, long_side, degrade)
    mask = masks[target] if target is not None else np.zeros(image.shape[:2], bool)
    return RoboRefSample(image=image, mask=mask, phrase=phrase, target=target, kind=kind, scene=scene,
                         split=split, index=index)


class RoboRefTrain:
    """Unlimited training samples rendered at the training size, augmented like ShapeRef
    (scale, placement, flip with the left/right rewrite; no crop, which would change "leftmost")."""

    def __init__(self, size: int, seed: int = 0, scale_range=(0.75, 1.0), flip_p: float = 0.5,
                 kind_weights: dict[str, float] | None = None, colour_weights: dict[str, float] | None = None):
        from eris.data.roboref_expressions import kind_weights as full_weights

        self.size, self.seed, self.scale_range, self.flip_p = size, seed, scale_range, flip_p
        self.kind_weights = full_weights(kind_weights) if kind_weights else None
        self.colour_weights = dict(colour_weights) if colour_weights else None

    def __len__(self) -> int:
        return 10 ** 9

    def __getitem__(self, index: int) -> dict:
        from eris.data.datasets import _to_item
        from eris.data.transforms import random_scale_pad_flip

        s = get_sample("train", index, self.seed, long_side=self.size, kind_weights=self.kind_weights,
                       colour_weights=self.colour_weights)
        rng = np.random.default_rng([self.seed, 7919, 77, index])
        image, mask, phrase = random_scale_pad_flip(s.image, s.mask, s.phrase, self.size, rng,
                                                    self.scale_range, self.flip_p)
        return _to_item(image, mask, phrase)


def eval_samples(split: str, n: int | None = None, seed: int = 0):
    from eris.data.datasets import EvalSample

    total = SPLIT_SIZES.get(split)
    if total is None:
        raise ValueError(f"RoboRef has no fixed {split!r} split; use val or test")
    for i in range(min(n or total, total)):
        s = get_sample(split, i, seed, long_side=640)
        yield EvalSample(s.id, s.image, s.mask, s.phrase, s.kind)


def render_sequence(out: Path, frames: int = 60, index: int = 0, seed: int = 0, long_side: int = 640) -> list[Path]:
    """A camera sweep over one scene (a robot driving past the table): ``frames`` JPEGs in ``out``."""
    from pi_runtime.files import atomic_write_bytes

    rng = _rng("test", index, seed)
    scene, _ = place_scene(rng)
    eye, target = np.array(scene.camera["eye"]), np.array(scene.camera["target"])
    offset = eye - target
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(frames):
        a = math.radians(-35 + 70 * k / max(frames - 1, 1))
        rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        scene.camera["eye"] = (target + rot @ offset).tolist()
        image, _ = render(scene, long_side)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=92)
        path = out / f"frame_{k:04d}.jpg"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    colours = sorted({f"{o.colour} {CATEGORIES[o.category][0][0]}" for o in scene.objects})
    atomic_write_bytes(out / "scene.json", (json.dumps({"objects": colours}, indent=1) + "\n").encode())
    return paths


def _export_one(job: tuple) -> str:
    """Renders and writes one sample (a worker's unit); returns its manifest line."""
    from pi_runtime.files import atomic_write_bytes

    out, split, index, seed, long_side = job
    s = get_sample(split, index, seed, long_side)
    img_path, mask_path = out / "images" / f"{s.id}.jpg", out / "masks" / f"{s.id}.png"
    if not (img_path.exists() and mask_path.exists()):
        for path, pil, fmt in ((img_path, Image.fromarray(s.image), "JPEG"),
                               (mask_path, Image.fromarray(s.mask.astype(np.uint8) * 255), "PNG")):
            buf = io.BytesIO()
            pil.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            atomic_write_bytes(path, buf.getvalue())
    return json.dumps({"image": f"images/{s.id}.jpg", "mask": f"masks/{s.id}.png", **s.describe()})


def export_split(out: Path, split: str, n: int, seed: int = 0, long_side: int = 640, workers: int = 1) -> Path:
    """Writes ``n`` samples with ``workers`` processes (render ahead on a many-core box, then train
    from the manifest: ``--data DIR``); files already there are kept (the run resumes)."""
    from multiprocessing import get_context

    from tqdm import tqdm

    from pi_runtime.files import atomic_write_bytes

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(out, split, index, seed, long_side) for index in range(n)]
    bar = dict(total=n, desc=f"RoboRef {split}", unit="img")
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            lines = list(tqdm(pool.imap(_export_one, jobs, chunksize=8), **bar))
    else:
        lines = [_export_one(job) for job in tqdm(jobs, **bar)]
    atomic_write_bytes(out / "manifest.jsonl", ("\n".join(lines) + "\n").encode())
    return out / "manifest.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eris.data.roboref", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="output directory for --split samples")
    ap.add_argument("--split", default="val", choices=sorted(SPLITS), help="which split")
    ap.add_argument("--n", type=int, default=None, help="number of samples (default: the whole val/test split)")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (val/test are defined with seed 0)")
    ap.add_argument("--long-side", type=int, default=640, help="image long side in pixels")
    ap.add_argument("--sequence", type=Path, help="instead: render a camera sweep over one scene into this directory")
    ap.add_argument("--frames", type=int, default=60, help="frames of --sequence")
    ap.add_argument("--scene", type=int, default=0, help="which test scene --sequence sweeps over")
    ap.add_argument("--workers", type=int, default=1, help="rendering processes (e.g. 14 on a 16-core box)")
    args = ap.parse_args(argv)
    if args.sequence:
        paths = render_sequence(args.sequence, args.frames, args.scene, args.seed, args.long_side)
        print(f"{len(paths)} frames in {args.sequence}; objects: {json.loads((args.sequence / 'scene.json').read_text())}")
        return 0
    if not args.out:
        ap.error("--out (or --sequence) is required")
    n = args.n if args.n is not None else SPLIT_SIZES.get(args.split)
    if n is None:
        ap.error("--n is required for the train split")
    print(export_split(args.out, args.split, n, args.seed, args.long_side, args.workers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
