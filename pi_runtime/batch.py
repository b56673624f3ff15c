"""Offline batch segmentation: files or a manifest in, masks, overlays and JSON lines out.

Every output is written to a temporary name and renamed, a mask before its ``results.jsonl``
line, so an interrupted run leaves no half-written file and a rerun skips exactly the items
whose line is there. A bad item is reported and the run goes on; the exit code is 0 only if
every item succeeded.
"""

from __future__ import annotations

import glob
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pi_runtime.files import atomic_write
from pi_runtime.preprocess import ImageError, load_image
from pi_runtime.segmenter import PhraseError, Segmenter

__all__ = ["Item", "expand_inputs", "unique_ids", "read_manifest", "run_batch", "overlay"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


@dataclass
class Item:
    id: str
    image: Path
    phrase: str


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, directories (their images, sorted) and glob patterns, in the order given."""
    paths: list[Path] = []
    for entry in inputs:
        p = Path(entry)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in entry for ch in "*?["):
            paths += sorted(Path(q) for q in glob.glob(entry, recursive=True))
        else:
            paths.append(p)  # a missing file is reported when it is read
    return paths


def unique_ids(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    seen = {s: stems.count(s) for s in stems}
    return [p.stem if seen[p.stem] == 1 else f"{p.stem}-{hashlib.sha1(str(p).encode()).hexdigest()[:6]}"
            for p in paths]


def read_manifest(path: Path) -> tuple[list[Item], list[str]]:
    """Items from JSON lines ``{"image", "phrase", "id"?}`` (image relative to the manifest) and
    the errors of bad lines, each naming its line number."""
    items, errors = [], []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            image = Path(entry["image"])
            phrase = entry["phrase"]
            if not isinstance(phrase, str):
                raise TypeError("phrase must be a string")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            errors.append(f"{path}:{n}: bad manifest line ({exc})")
            continue
        image = image if image.is_absolute() else path.parent / image
        items.append(Item(str(entry.get("id") or image.stem), image, phrase))
    return items, errors


def overlay(image: np.ndarray, mask: np.ndarray, colour=(255, 0, 80), alpha: float = 0.5) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask] = out[mask] * (1 - alpha) + np.array(colour, np.float32) * alpha
    return out.astype(np.uint8)


def _done_ids(results: Path) -> set[str]:
    """Ids already in ``results.jsonl``; a line cut by a kill is dropped (its item runs again)."""
    if not results.is_file():
        return set()
    done, kept = set(), []
    text = results.read_text()
    for line in text.splitlines():
        try:
            done.add(json.loads(line)["id"])
            kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    repaired = "".join(l + "\n" for l in kept)
    if repaired != text:
        atomic_write(results, lambda p: Path(p).write_text(repaired))
    return done


def run_batch(seg: Segmenter, items: list[Item], out: Path, overlays: bool = False,
              errors: list[str] | None = None, stream=None) -> dict:
    """Segments every item not already in ``out/results.jsonl``; returns the summary. Progress
    and the list of failures go to ``stream`` (standard error by default)."""
    stream = stream or sys.stderr
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = _done_ids(results)
    failed = list(errors or [])
    counts = {"done": 0, "skipped": 0}
    t0 = time.perf_counter()
    for i, item in enumerate(items, start=1):
        stream.write(f"\r[{i}/{len(items)}] {item.id[:40]:<40}")
        stream.flush()
        if item.id in done and (out / f"{item.id}.png").is_file():
            counts["skipped"] += 1
            continue
        try:
            image = load_image(item.image)
            result = seg.segment(image, item.phrase)
        except (ImageError, PhraseError) as exc:
            failed.append(f"{item.image}: {exc}" if isinstance(exc, PhraseError) else str(exc))
            continue
        mask_png = Image.fromarray(result.mask.astype(np.uint8) * 255)
        atomic_write(out / f"{item.id}.png", lambda p: mask_png.save(p, format="PNG"))
        if overlays:
            over = Image.fromarray(overlay(image, result.mask))
            atomic_write(out / f"{item.id}.overlay.jpg", lambda p: over.save(p, format="JPEG", quality=90))
        line = {"id": item.id, "image": str(item.image), "mask": f"{item.id}.png", **result.to_json()}
        with results.open("a") as f:
            f.write(json.dumps(line) + "\n")
        counts["done"] += 1
    stream.write("\n")
    summary = {"items": len(items), **counts, "failed": len(failed), "seconds": round(time.perf_counter() - t0, 2),
               "output": str(out)}
    for message in failed:
        stream.write(f"failed: {message}\n")
    return {**summary, "errors": failed}
