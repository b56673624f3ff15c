"""Torch datasets over ShapeRef and RefCOCO for training, and sample iterators for evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from eris.data.shapes import SPLIT_SIZES, get_sample
from eris.data.transforms import random_scale_pad_flip
from eris.text.tokenizer import PhraseTokenizer

__all__ = ["EvalSample", "ShapeRefTrain", "RefCocoTrain", "MixtureTrain", "ManifestTrain", "train_dataset", "parse_mixture",
           "eval_samples", "Collate", "StepBatchSampler"]


@dataclass
class EvalSample:
    id: str
    image: np.ndarray   # H x W x 3 uint8 RGB, original resolution
    mask: np.ndarray    # H x W bool (all False for an absent target)
    phrase: str
    kind: str | None = None   # phrase kind, where the dataset records it (per-kind reports)


def _to_item(image: np.ndarray, mask: np.ndarray, phrase: str) -> dict:
    return {"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float(),
            "mask": torch.from_numpy(mask).float(), "phrase": phrase}


class ShapeRefTrain(Dataset):
    """Unlimited training samples: index ``i`` is ShapeRef train sample ``i``, augmented with
    its own seeded generator (so a resumed run sees exactly the samples it would have)."""

    def __init__(self, size: int, seed: int = 0, scale_range=(0.6, 1.0), flip_p: float = 0.5,
                 length: int = 10 ** 9, absent_p: float = 0.1):
        self.size, self.seed, self.scale_range, self.flip_p, self.length = size, seed, scale_range, flip_p, length
        self.absent_p = absent_p

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        absent = np.random.default_rng([self.seed, 31337, index]).random() < self.absent_p
        s = get_sample("train", index, self.seed, long_side=self.size, absent=absent)
        rng = np.random.default_rng([self.seed, 7919, index])
        image, mask, phrase = random_scale_pad_flip(s.image, s.mask, s.phrase, self.size, rng,
                                                    self.scale_range, self.flip_p)
        return _to_item(image, mask, phrase)


class RefCocoTrain(Dataset):
    """RefCOCO-family training samples (one per sentence), augmented like ShapeRef but with
    scale up to 1.25 and target-keeping crops (photos have no "whole scene" to preserve)."""

    def __init__(self, refer, size: int, seed: int = 0, scale_range=(0.75, 1.25), flip_p: float = 0.5):
        self.refer, self.size, self.seed, self.scale_range, self.flip_p = refer, size, seed, scale_range, flip_p

    def __len__(self) -> int:
        return 10 ** 9

    def __getitem__(self, index: int) -> dict:
        s = self.refer.sample(index % len(self.refer))
        rng = np.random.default_rng([self.seed, 7919, index])
        image, mask, phrase = random_scale_pad_flip(s.image, s.mask, s.phrase, self.size, rng,
                                                    self.scale_range, self.flip_p, crop=True)
        return _to_item(image, mask, phrase)


class MixtureTrain(Dataset):
    """Index ``i`` draws its source from ``weights`` with a generator seeded by ``(seed, i)`` and
    reads that source's sample ``i`` (sources are unlimited), so a resumed run sees the same stream."""

    def __init__(self, sources: list[Dataset], weights: list[float], seed: int = 0):
        if len(sources) != len(weights) or not sources or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"a mixture needs one non-negative weight per source, got {weights}")
        self.sources, self.seed = sources, seed
        self.cdf = np.cumsum(np.asarray(weights, float) / sum(weights))

    def __len__(self) -> int:
        return 10 ** 9

    def __getitem__(self, index: int) -> dict:
        u = np.random.default_rng([self.seed, 104729, index]).random()
        k = min(int(np.searchsorted(self.cdf, u, side="right")), len(self.sources) - 1)
        return self.sources[k][index]


class ManifestTrain(Dataset):
    """Training samples from files: a ``manifest.jsonl`` of ``{"image", "mask", "phrase"}`` lines
    (paths relative to it), as ``python -m eris.data.roboref --split train --n N`` or
    ``eris.data.shapes`` write them. Pre-rendering this way keeps a GPU fed when rendering on the
    fly would starve it; it also trains on a user's own labelled photos. Index ``i`` reads line
    ``i mod n``, augmented like ShapeRef (scale, placement, flip with the left/right rewrite)."""

    def __init__(self, manifest: str | Path, size: int, seed: int = 0, scale_range=(0.75, 1.0), flip_p: float = 0.5):
        import json

        self.path = Path(manifest)
        self.lines = []
        for n, line in enumerate(self.path.read_text().splitlines(), start=1):
            if line.strip():
                entry = json.loads(line)
                if "mask" not in entry:
                    raise ValueError(f"{self.path}:{n}: a training manifest line needs a mask")
                self.lines.append((entry["image"], entry["mask"], entry["phrase"]))
        if not self.lines:
            raise ValueError(f"{self.path}: no samples")
        self.size, self.seed, self.scale_range, self.flip_p = size, seed, scale_range, flip_p

    def __len__(self) -> int:
        return 10 ** 9

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        image_rel, mask_rel, phrase = self.lines[index % len(self.lines)]
        with Image.open(self.path.parent / image_rel) as im:
            image = np.asarray(im.convert("RGB"))
        with Image.open(self.path.parent / mask_rel) as im:
            mask = np.asarray(im.convert("L")) > 127
        rng = np.random.default_rng([self.seed, 7919, 5, index])
        image, mask, phrase = random_scale_pad_flip(image, mask, phrase, self.size, rng, self.scale_range, self.flip_p)
        return _to_item(image, mask, phrase)


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """``"shapes"`` -> [("shapes", 1)]; ``"shapes+roboref"`` equal weights; ``"shapes:1+roboref:3"``
    weighted; a part may also be a pre-rendered ``manifest.jsonl`` (or its directory)."""
    parts = []
    for item in spec.split("+"):
        name, sep, weight = item.rpartition(":")
        if not sep or not weight.replace(".", "", 1).lstrip("-").isdigit():
            name, weight = item, ""
        if name not in SYNTHETIC_DATA and not _manifest_path(name).is_file():
            raise ValueError(f"--data {spec!r}: unknown dataset {name!r}; choose from {', '.join(SYNTHETIC_DATA)} "
                             f"or a manifest.jsonl")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--data {spec!r}: weight {weight!r} of {name} is not a number") from None
        if w < 0:
            raise ValueError(f"--data {spec!r}: weight of {name} is negative")
        parts.append((name, w))
    return parts


SYNTHETIC_DATA = ("shapes", "roboref")


def _manifest_path(name: str) -> Path:
    p = Path(name)
    return p / "manifest.jsonl" if p.is_dir() else p


def _synthetic(name: str, size: int, seed: int, scale_range=None, kind_weights=None, colour_weights=None) -> Dataset:
    if name not in SYNTHETIC_DATA:
        return ManifestTrain(_manifest_path(name), size, seed, scale_range=scale_range or (0.75, 1.0))
    if name == "shapes":
        return ShapeRefTrain(size, seed, scale_range=scale_range or (0.6, 1.0))
    from eris.data.roboref import RoboRefTrain

    return RoboRefTrain(size, seed, scale_range=scale_range or (0.75, 1.0), kind_weights=kind_weights,
                        colour_weights=colour_weights)


def train_dataset(spec: str, size: int, seed: int = 0, scale_range=None, kind_weights=None,
                  colour_weights=None) -> Dataset:
    """The training stream for ``--data`` (``shapes``, ``roboref`` or a mixture, see :func:`parse_mixture`).
    ``kind_weights`` overrides RoboRef's phrase-kind mix (``{"location": 0.3}``) and ``colour_weights``
    its target colours' odds (``{"white": 3}``); other sources ignore them."""
    parts = parse_mixture(spec)
    for what, given in (("kind weights", kind_weights), ("colour weights", colour_weights)):
        if given and not any(n == "roboref" for n, _ in parts):
            raise ValueError(f"{what} apply to rendered RoboRef only, and --data {spec!r} has none")
    if len(parts) == 1:
        return _synthetic(parts[0][0], size, seed, scale_range, kind_weights, colour_weights)
    return MixtureTrain([_synthetic(n, size, seed, scale_range, kind_weights, colour_weights) for n, _ in parts],
                        [w for _, w in parts], seed)


def eval_samples(data: str, split: str, n: int | None = None, data_root=None, dataset: str = "refcoco",
                 split_by: str = "unc", seed: int = 0) -> Iterator[EvalSample]:
    """Evaluation samples at their original resolution (ShapeRef: long side 640)."""
    if data == "shapes":
        total = SPLIT_SIZES.get(split)
        if total is None:
            raise ValueError(f"ShapeRef has no fixed {split!r} split; use val or test")
        for i in range(min(n or total, total)):
            s = get_sample(split, i, seed, long_side=640)
            yield EvalSample(s.id, s.image, s.mask, s.phrase, s.kind)
    elif data == "shapes-absent":  # the val/test scenes with phrases naming what is not there
        total = SPLIT_SIZES[split]
        for i in range(min(n or total, total)):
            s = get_sample(split, i, seed, long_side=640, absent=True)
            yield EvalSample(s.id + "-absent", s.image, s.mask, s.phrase, s.kind)
    elif data == "roboref":
        from eris.data.roboref import eval_samples as roboref_samples

        yield from roboref_samples(split, n, seed)
    elif data == "refcoco":
        from eris.data.refcoco import RefCoco

        refer = RefCoco(data_root, dataset, split_by, split)
        for i in range(min(n or len(refer), len(refer))):
            s = refer.sample(i)
            yield EvalSample(s.id, s.image, s.mask, s.phrase)
    else:
        raise ValueError(f"unknown data {data!r}; choose shapes, roboref or refcoco")


class Collate:
    """Stacks images and masks and tokenizes the phrases (right-padded)."""

    def __init__(self, tokenizer: PhraseTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items: list[dict]) -> dict:
        ids, mask = self.tokenizer([it["phrase"] for it in items])
        return {"image": torch.stack([it["image"] for it in items]), "mask": torch.stack([it["mask"] for it in items]),
                "input_ids": ids, "attention_mask": mask, "phrases": [it["phrase"] for it in items]}


class StepBatchSampler:
    """Batches by global step: step ``k`` of rank ``r`` reads indices ``(k * world + r) * B + j``.

    Deterministic and resumable: starting at ``start_step`` continues the same sample stream.
    """

    def __init__(self, batch_size: int, start_step: int, total_steps: int, world: int = 1, rank: int = 0):
        self.b, self.start, self.total, self.world, self.rank = batch_size, start_step, total_steps, world, rank

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        for k in range(self.start, self.total):
            base = (k * self.world + self.rank) * self.b
            yield list(range(base, base + self.b))
