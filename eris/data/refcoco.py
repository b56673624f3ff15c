"""RefCOCO, RefCOCO+ and RefCOCOg in the standard ``refer`` layout.

::

    DATA_ROOT/refcoco/refs(unc).p        refcoco+/refs(unc).p     refcocog/refs(umd).p
    DATA_ROOT/refcoco/instances.json     (one per dataset: COCO images + annotations)
    DATA_ROOT/images/mscoco/images/train2014/COCO_train2014_*.jpg   (or images/train2014/)

A ref (pickle list entry) names an annotation and a split and holds several sentences; each
sentence is one sample. Masks come from the annotation's COCO polygons or RLE, decoded with
pycocotools when it is installed and otherwise with the rasteriser and RLE decoder here
(polygons of one object are unioned: overlaps give 1, not 2).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["RefCoco", "RefSample", "decode_segmentation", "SPLITS_BY_DATASET"]

SPLITS_BY_DATASET = {"refcoco": ("train", "val", "testA", "testB"), "refcoco+": ("train", "val", "testA", "testB"),
                     "refcocog": ("train", "val", "test")}
IMAGE_DIRS = ("images/mscoco/images/train2014", "images/train2014", "train2014")


@dataclass
class RefSample:
    id: str
    image: np.ndarray    # H x W x 3 uint8 RGB
    mask: np.ndarray     # H x W bool
    phrase: str
    ref_id: int
    sent_id: int
    image_id: int


def _rle_counts_from_string(s: str) -> list[int]:
    """COCO's compressed RLE string to run lengths (maskApi.c ``rleFrString``)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _decode_rle(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        counts = _rle_counts_from_string(counts.decode() if isinstance(counts, bytes) else counts)
    flat = np.zeros(h * w, bool)
    pos, value = 0, False
    for run in counts:
        if value:
            flat[pos:pos + run] = True
        pos += run
        value = not value
    return flat.reshape(w, h).T  # COCO RLE runs down columns


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygon list, RLE dict or list of RLEs) as an ``H x W`` bool mask."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        mask_utils = None
    if mask_utils is not None:
        if isinstance(segmentation, list):
            rles = mask_utils.frPyObjects(segmentation, height, width)
            rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        return mask_utils.decode(rle).astype(bool)
    if isinstance(segmentation, dict):
        return _decode_rle(segmentation)
    if segmentation and isinstance(segmentation[0], dict):
        return np.logical_or.reduce([_decode_rle(r) for r in segmentation])
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in segmentation:
        if len(poly) >= 6:
            draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)], fill=1)
    return np.asarray(canvas, bool)


class RefCoco:
    """One split of one RefCOCO-family dataset; ``sample(i)`` loads sentence ``i``."""

    def __init__(self, data_root: str | Path, dataset: str = "refcoco", split_by: str = "unc", split: str = "val",
                 image_dir: str | Path | None = None):
        if data_root is None:
            raise ValueError("RefCOCO needs --data-root (the directory holding refcoco/, refcoco+/, refcocog/)")
        root = Path(data_root)
        if dataset not in SPLITS_BY_DATASET:
            raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(SPLITS_BY_DATASET)}")
        if split not in SPLITS_BY_DATASET[dataset]:
            raise ValueError(f"{dataset} has no split {split!r}; it has {', '.join(SPLITS_BY_DATASET[dataset])}")
        refs_path = root / dataset / f"refs({split_by}).p"
        instances_path = root / dataset / "instances.json"
        refs = self._load_refs(refs_path)
        instances = self._load_instances(instances_path)
        self.images = {im["id"]: im for im in instances["images"]}
        self.annotations = {a["id"]: a for a in instances["annotations"]}
        self.image_dir = Path(image_dir) if image_dir else next(
            (root / d for d in IMAGE_DIRS if (root / d).is_dir()), root / IMAGE_DIRS[0])
        self.entries: list[tuple[dict, dict]] = []
        for ref in refs:
            if ref.get("split") != split:
                continue
            if ref["ann_id"] not in self.annotations or ref["image_id"] not in self.images:
                raise ValueError(f"{refs_path}: ref {ref.get('ref_id')} names annotation {ref['ann_id']} or image "
                                 f"{ref['image_id']} missing from {instances_path}")
            for sent in ref["sentences"]:
                self.entries.append((ref, sent))

    @staticmethod
    def _load_refs(path: Path) -> list[dict]:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: refs pickle not found")
        try:
            with path.open("rb") as f:
                refs = pickle.load(f, encoding="latin1")
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
            raise ValueError(f"{path}: not a readable refs pickle ({exc})") from exc
        if not isinstance(refs, list) or (refs and not {"ref_id", "ann_id", "image_id", "split", "sentences"}
                                          <= set(refs[0])):
            raise ValueError(f"{path}: expected a list of refs with ref_id, ann_id, image_id, split, sentences")
        return refs

    @staticmethod
    def _load_instances(path: Path) -> dict:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: instances.json not found")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ValueError(f"{path}: expected COCO instances with 'images' and 'annotations'")
        return data

    def __len__(self) -> int:
        return len(self.entries)

    def sample(self, index: int) -> RefSample:
        ref, sent = self.entries[index]
        info = self.images[ref["image_id"]]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))  # COCO annotations use the stored orientation
        except (OSError, FileNotFoundError) as exc:
            raise ValueError(f"{path}: cannot read image ({exc})") from exc
        ann = self.annotations[ref["ann_id"]]
        mask = decode_segmentation(ann["segmentation"], info["height"], info["width"])
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{path}: image is {image.shape[1]}x{image.shape[0]} but instances.json says "
                             f"{info['width']}x{info['height']}")
        phrase = sent.get("sent") or sent.get("raw", "")
        return RefSample(id=f"{ref['ref_id']}-{sent['sent_id']}", image=image, mask=mask, phrase=phrase,
                         ref_id=ref["ref_id"], sent_id=sent["sent_id"], image_id=ref["image_id"])
