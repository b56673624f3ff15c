"""Train the category check: a small CNN that names the object in a crop (pi_runtime/categories.py).

``python -m eris.category_check --out runs/catcheck --roboref 1200 --shapes 600``
renders training scenes (RoboRef and ShapeRef train splits, never val or test), cuts each
visible object out as the runtime will (:func:`pi_runtime.categories.crop_input`, with the crop
box jittered and the object's cells thresholded at a random share, since at run time the box
comes from the model's region, not the true mask), plus crops of bare background (class
``none``), trains :class:`CropNet` and exports ``category_check.onnx`` with
``category_check.json`` (classes, nouns). A rerun with the same ``--out`` reuses what is there
(the crops, then the trained graph). ``--bundle DIR`` adds the graph to a bundle, with the rule's
numbers (``--share``, ``--power``, ``--found-min``; chosen on val, README "Session 16: the
category check") in its manifest.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from pi_runtime.categories import CROP, crop_input

__all__ = ["CLASSES", "NOUNS", "CropNet", "object_cells", "collect", "collect_regions", "export", "add_to_bundle", "main"]
# The rule the runtime applies (pi_runtime.categories.CategoryCheck), chosen on the first 400 of
# RoboRef val and ShapeRef val and confirmed on the other 600 (README, "Session 16"); kept for the
# classifier trained with region crops too: power 4 and pick power 1 scored +0.2-0.3 mIoU more but
# made the live mask switch objects 75 % more often (README, "Session 17"). FOUND_MIN 0.1 -> 0.15
# once the phrase parser stopped reading "can you see ..." as a can and picking dropped the
# candidates under FOUND_MIN: searched again on all 1000 of both val sets (README, "Session 18").
# POWER 2 -> 1 with session 21's model and refine: RoboRef val 83.38 -> 83.58, test 84.89 -> 85.19,
# ShapeRef val unchanged (README, "Session 22").
SHARE, POWER, PICK_POWER, FOUND_MIN = 0.0, 1.0, 0.25, 0.15

CELL = 4  # the runtime's output stride: crops are cut around stride-4 cell masks, as there


def _classes_and_nouns():
    from eris.data import roboref, shapes
    classes = list(roboref.CATEGORIES) + [f"shape:{s}" for s in shapes.SHAPES] + ["none"]
    nouns: dict[str, list[str]] = {}
    for cat, (words, _, _) in roboref.CATEGORIES.items():
        for w in words:
            nouns.setdefault(w, []).append(cat)
    for s in shapes.SHAPES:  # "ring" and "triangle" name a RoboRef and a ShapeRef class both
        nouns.setdefault(s, []).append(f"shape:{s}")
    return classes, nouns


CLASSES, NOUNS = _classes_and_nouns()


class CropNet(nn.Module):
    """Six 3x3 convs (three of stride 2) and a linear layer: 39 M multiply-adds a 64x64 crop. Takes the
    runtime's 0..255 input and normalises inside, so the graph needs no preprocessing."""

    def __init__(self, n_classes: int = len(CLASSES), width: int = 32):
        super().__init__()
        layers, c_in = [], 4
        for c_out, stride in ((width, 2), (width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2), (4 * width, 1)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops / 127.5 - 1.0
        return self.head(self.features(x).mean(dim=(2, 3)))


def object_cells(mask: np.ndarray, share: float) -> np.ndarray:
    """A pixel mask as stride-4 cells: the cells it covers by at least ``share``."""
    h, w = mask.shape
    frac = Image.fromarray(mask.astype(np.float32), mode="F").resize((-(-w // CELL), -(-h // CELL)), Image.BOX)
    return np.asarray(frac) >= share


def _crops_of_scene(image, masks, labels, rng, per_object: int):
    """Jittered crops of each visible object and one of background (label ``none``)."""
    out = []
    for mask, label in zip(masks, labels):
        for _ in range(per_object):
            cells = object_cells(mask, float(rng.uniform(0.25, 0.75)))
            if cells.sum() < 2:
                break
            jitter = (rng.normal(0, 0.06), rng.normal(0, 0.06), float(np.exp(rng.uniform(-0.2, 0.25))))
            out.append((crop_input(image, cells, (CELL, CELL), jitter).astype(np.uint8), CLASSES.index(label)))
    # background: a few cells of bare surface (no object within the crop's mask)
    anything = object_cells(np.any(masks, axis=0), 0.01) if len(masks) else None
    gh, gw = -(-image.shape[0] // CELL), -(-image.shape[1] // CELL)
    for _ in range(10):
        bh, bw = int(rng.integers(2, 9)), int(rng.integers(2, 9))
        y, x = int(rng.integers(0, gh - bh)), int(rng.integers(0, gw - bw))
        cells = np.zeros((gh, gw), bool)
        cells[y:y + bh, x:x + bw] = True
        if anything is None or not (cells & anything).any():
            out.append((crop_input(image, cells, (CELL, CELL)).astype(np.uint8), CLASSES.index("none")))
            break
    return out


def collect(n_roboref: int, n_shapes: int, seed: int = 0, per_object: int = 2, start: int = 0):
    """``(crops N x 4 x 64 x 64 uint8, labels N)`` from training scenes ``start..start+n``
    (a scene stream of its own: ``seed`` 1000 + ``seed`` of the train split)."""
    from eris.data import roboref, shapes
    rng = np.random.default_rng([seed, 7])
    items = []
    for i in tqdm(range(start, start + n_roboref), desc="roboref scenes", mininterval=10):
        scene, _ = roboref.place_scene(roboref._rng("train", i, 1000 + seed))
        image, masks = roboref.render(scene, 640, True)
        items += _crops_of_scene(image, masks, [o.category for o in scene.objects], rng, per_object)
    for i in tqdm(range(start, start + n_shapes), desc="shapes scenes", mininterval=10):
        scene = shapes.make_scene(shapes._rng("train", i, 1000 + seed))
        image, masks = shapes.render_scene(scene, 640, True)
        items += _crops_of_scene(image, masks, [f"shape:{o.shape}" for o in scene.objects], rng, per_object)
    x = np.stack([c for c, _ in items]) if items else np.zeros((0, 4, CROP, CROP), np.uint8)
    return x, np.array([y for _, y in items], np.int64)


def _region_label(region: np.ndarray, fractions: np.ndarray, labels: list[str], min_cover: float) -> str:
    """The class of a candidate region: the object covering most of it (``fractions``: each
    object's share of each stride-4 cell), if it covers at least ``min_cover`` of it; else ``none``
    (the model lit up the table or a shadow)."""
    if not len(labels):
        return "none"
    cover = fractions[:, region].mean(axis=1)
    k = int(np.argmax(cover))
    return labels[k] if cover[k] >= min_cover else "none"


def _region_crops(seg, image, cells, box, masks, labels, min_cover: float):
    """Crops of the candidate regions of ``cells`` the check is asked about, cut as the runtime
    cuts them, each labelled by the object covering most of it (:func:`_region_label`)."""
    from pi_runtime.categories import asked_regions, region_cells
    from pi_runtime.regions import region_scores

    regions, n, scores, origin = region_scores(cells, seg._threshold_logit)
    if n == 0:
        return []
    cell_hw = seg.cell_hw(box)
    gh, gw = cells.shape
    fractions = np.stack([np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize(
        (gw, gh), Image.BOX, box=(0, 0, gw * cell_hw[1], gh * cell_hw[0]))) for m in masks]) if len(masks) else None
    out = []
    for i in asked_regions(scores, SHARE):
        region = region_cells(regions, i, origin)
        label = (_region_label(region, fractions[:, :region.shape[0], :region.shape[1]], labels, min_cover)
                 if fractions is not None else "none")
        out.append((crop_input(image, region, cell_hw).astype(np.uint8), CLASSES.index(label)))
    return out


def _region_crops_of_scene(seg, image, phrase, masks, labels, min_cover: float = 0.4):
    """Crops of the regions the shipped model proposes for ``phrase``, exactly the candidates the
    runtime asks the check about (:meth:`pi_runtime.segmenter.Segmenter._frame_logits`): the
    phrase's logits with its second description's (the generic "thing" pass where ``seg`` has a
    category check, else the plain one), less a relation's reference region
    (:func:`pi_runtime.relations.without_reference`), and the reference's own candidates; wrong
    ones included."""
    from pi_runtime.relations import without_reference

    cells, box, _, ref_cells, reference = seg._frame_logits(image, phrase)
    out = _region_crops(seg, image, without_reference(cells, reference), box, masks, labels, min_cover)
    if ref_cells is not None:
        out += _region_crops(seg, image, ref_cells, box, masks, labels, min_cover)
    return out


def collect_regions(n_roboref: int, n_shapes: int, seed: int = 0, start: int = 0, threads: int = 1):
    """``(crops, labels)`` of the shipped model's candidate regions on training scenes (a stream of
    their own: seed 2000 + ``seed``), each scene with a phrase of its own as training draws it. The
    object crops of :func:`collect` teach what each category looks like; these teach the
    candidates the runtime really asks about: partial, merged and background regions."""
    from eris.data import roboref, shapes
    from pi_runtime.segmenter import Segmenter, default_bundle_dir

    # With the bundle's category check, as the runtime runs: it decides which descriptions run
    # (the generic pass) and which region is a relation's reference.
    seg = Segmenter(default_bundle_dir(), precision="int8", threads=threads)
    items = []
    for data, n, desc, label_of in ((roboref, n_roboref, "roboref regions", lambda o: o.category),
                                    (shapes, n_shapes, "shapes regions", lambda o: f"shape:{o.shape}")):
        render = roboref.render if data is roboref else shapes.render_scene
        for i in tqdm(range(start, start + n), desc=desc, mininterval=10):
            drawn = data.draw_scene(data._rng("train", i, 2000 + seed))
            if drawn is None:
                continue
            scene, (_, _, phrase) = drawn
            image, masks = render(scene, 640, True)
            items += _region_crops_of_scene(seg, image, phrase, masks, [label_of(o) for o in scene.objects])
    x = np.stack([c for c, _ in items]) if items else np.zeros((0, 4, CROP, CROP), np.uint8)
    return x, np.array([y for _, y in items], np.int64)


def train(x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
          val=None, log=None) -> CropNet:
    torch.manual_seed(seed)
    net = CropNet()
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        total, t0 = 0.0, time.time()
        for b in range(0, len(x), batch_size):
            idx = order[b:b + batch_size]
            xb = xt[idx].float()
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb[flip] = xb[flip].flip(-1)  # categories do not depend on left and right
            loss = nn.functional.cross_entropy(net(xb), yt[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        row = {"epoch": epoch + 1, "loss": total / len(x), "s": round(time.time() - t0, 1)}
        if val is not None:
            row["val_acc"] = accuracy(net, *val)
        print(json.dumps(row), flush=True)
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()
    return net.eval()


@torch.no_grad()
def accuracy(net: CropNet, x: np.ndarray, y: np.ndarray) -> float:
    net.eval()
    pred = torch.cat([net(torch.from_numpy(x[b:b + 256]).float()).argmax(1) for b in range(0, len(x), 256)])
    return float((pred.numpy() == y).mean())


def export(net: CropNet, out: Path, training: dict | None = None) -> None:
    """``category_check.onnx`` (input ``crops`` N x 4 x 64 x 64 float32 0..255, output ``logits``)
    and ``category_check.json`` (classes, nouns, and how it was trained)."""
    out.mkdir(parents=True, exist_ok=True)
    # As convert exports the model's graphs: torch.export, weights inside the file, no source
    # paths in the metadata, standard ops only; any number of crops.
    from convert.onnx_export import OPSET, check_standard_ops, strip_export_metadata

    path = out / "category_check.onnx"
    with torch.no_grad():
        torch.onnx.export(net.eval(), (torch.zeros(2, 4, CROP, CROP),), str(path), input_names=["crops"],
                          output_names=["logits"], opset_version=OPSET, dynamo=True, external_data=False,
                          verbose=False, dynamic_shapes={"crops": {0: torch.export.Dim("n", min=1, max=256)}})
    strip_export_metadata(path)
    check_standard_ops(path)
    meta = {"classes": CLASSES, "nouns": NOUNS, "training": training or {}}
    (out / "category_check.json").write_text(json.dumps(meta, indent=1) + "\n")


def add_to_bundle(bundle: Path, source: Path, share: float = SHARE, power: float = POWER,
                  found_min: float = FOUND_MIN, pick_power: float = PICK_POWER) -> None:
    """Copies ``source``'s ``category_check.onnx`` into ``bundle`` and records it, its classes and
    nouns, and the rule in the manifest (the files' hashes are recomputed)."""
    from pi_runtime.bundle import load_manifest, write_manifest

    manifest = load_manifest(bundle)
    meta = json.loads((source / "category_check.json").read_text())
    shutil.copyfile(source / "category_check.onnx", bundle / "category_check.onnx")
    manifest["category_check"] = {"file": "category_check.onnx", "input": "crops", "crop": CROP,
                                  "classes": meta["classes"], "nouns": meta["nouns"],
                                  "share": share, "power": power, "pick_power": pick_power, "found_min": found_min,
                                  "training": meta.get("training", {})}
    manifest["files"] = {**manifest["files"], "category_check.onnx": {}}
    write_manifest(bundle, manifest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eris.category_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output directory (crops cache, weights, graph)")
    ap.add_argument("--roboref", type=int, default=1200, help="RoboRef training scenes to cut objects from")
    ap.add_argument("--shapes", type=int, default=600, help="ShapeRef training scenes to cut objects from")
    ap.add_argument("--region-roboref", type=int, default=0,
                    help="RoboRef training scenes whose model-proposed regions are cut too (collect_regions)")
    ap.add_argument("--region-shapes", type=int, default=0,
                    help="ShapeRef training scenes whose model-proposed regions are cut too")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--bundle", type=Path, default=None, help="then add the graph to this bundle directory")
    ap.add_argument("--share", type=float, default=SHARE, help="candidates asked: score >= this x the best")
    ap.add_argument("--power", type=float, default=POWER, help="a candidate's score is multiplied by p ** this")
    ap.add_argument("--pick-power", type=float, default=PICK_POWER,
                    help="... or by p ** this when a where-word or relation then chooses among the candidates")
    ap.add_argument("--found-min", type=float, default=FOUND_MIN,
                    help="found only if the kept candidate's p reaches this")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "category_check.onnx").exists():
        _train_and_export(args)
    if args.bundle is not None:
        add_to_bundle(args.bundle, args.out, args.share, args.power, args.found_min, args.pick_power)
        print(f"added the category check to {args.bundle}")
    return 0


def _train_and_export(args) -> None:
    cache = args.out / f"crops_r{args.roboref}_s{args.shapes}_seed{args.seed}.npz"
    if cache.exists():
        data = np.load(cache)
        x, y = data["x"], data["y"]
    else:
        x, y = collect(args.roboref, args.shapes, args.seed)
        np.savez(cache, x=x, y=y)
    if args.region_roboref or args.region_shapes:
        # "candidates": cut from the runtime's candidates (generic pass, reference taken out) since Session 20
        cache = args.out / f"candidates_r{args.region_roboref}_s{args.region_shapes}_seed{args.seed}.npz"
        if cache.exists():
            data = np.load(cache)
            rx, ry = data["x"], data["y"]
        else:
            rx, ry = collect_regions(args.region_roboref, args.region_shapes, args.seed, threads=args.threads or 1)
            np.savez(cache, x=rx, y=ry)
        print(f"{len(rx)} region crops, {int((ry == CLASSES.index('none')).sum())} of them none")
        x, y = np.concatenate([x, rx]), np.concatenate([y, ry])
    print(f"{len(x)} crops: " + ", ".join(f"{c}={n}" for c, n in zip(CLASSES, np.bincount(y, minlength=len(CLASSES)))))
    # a tenth of the crops, drawn at random, shows how training goes (the real check is the val
    # sets through the runtime: README, "Category check")
    order = np.random.default_rng(args.seed).permutation(len(x))
    held, kept = order[: len(x) // 10], order[len(x) // 10:]
    with open(args.out / "log.jsonl", "a") as log:
        net = train(x[kept], y[kept], args.epochs, args.batch_size, args.lr, args.seed, val=(x[held], y[held]), log=log)
    torch.save(net.state_dict(), args.out / "category_check.pt")
    last = json.loads((args.out / "log.jsonl").read_text().splitlines()[-1])
    export(net, args.out, {"command": "python -m eris.category_check " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k in ("out", "roboref", "shapes", "region_roboref", "region_shapes", "epochs", "batch_size", "lr", "seed")),
        "crops": int(len(x)), "held_out_crop_accuracy": round(last["val_acc"], 4)})
    print(f"wrote {args.out / 'category_check.onnx'}")


if __name__ == "__main__":
    raise SystemExit(main())
