"""Offline batch segmentation: files or a manifest in, masks, overlays and JSON lines out.

Guarantees, each tested:

- **Nothing is written outside ``--output``.** An item's id becomes one file name, ``<id>.png``:
  an id from a manifest must be a plain name (no ``/``, ``\\``, ``..``, NUL or control characters,
  no leading dot, at most 120 characters, encodable) or the item fails saying which rule it
  broke; the final path is checked to lie inside the output directory.
- **No silent overwrite.** Without an id, the id is the image's file stem; when two items would
  share a stem (one image with two phrases, ``a/img.jpg`` and ``b/img.jpg``), each of them gets
  ``<stem>-<8 hex digits of sha1(image path, phrase)>``. Two items with the same id are an error
  for the later one.
- **Resume keys on (id, image, phrase).** A rerun skips an item only if ``results.jsonl`` has a
  line with its id, image and phrase and the mask is on disk; a line whose id now names another
  image or phrase is dropped and the item runs again.
- **One bad item never stops the run.** Any failure to read the image, check the phrase or id,
  run the model or write the outputs is reported in one line (with the manifest's line number),
  counted, and the run goes on; the exit code says that some failed. A full disk stops the run
  with one line and a clean state (rerun when there is space: nothing done is lost).
- **Bounded memory.** Images over ``max_pixels`` are refused from their header, before decoding;
  large JPEGs are decoded at a reduced scale (the mask is written at the image's full size);
  phrases obey one length limit (:mod:`pi_runtime.phrases`); manifest lines over 64 KB are refused.
- **Atomic outputs, one writer.** Every file is written to a hidden temporary name and renamed,
  a mask before its line; temporary files a killed run left are removed at the next start; a
  lock on the output directory stops a second run on it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pi_runtime.files import atomic_write, remove_stale_temp_files
from pi_runtime.phrases import PhraseError, check_phrase, printable
from pi_runtime.preprocess import DEFAULT_MAX_PIXELS, ImageError, load_image
from pi_runtime.segmenter import Segmenter

__all__ = ["Item", "ItemError", "BatchLockedError", "DiskFullError", "expand_inputs", "assign_ids", "check_id",
           "read_manifest", "run_batch", "overlay", "IMAGE_SUFFIXES", "MAX_ID_CHARS"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MAX_ID_CHARS = 120
MAX_MANIFEST_LINE = 64 * 1024
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class ItemError(ValueError):
    """One item cannot be processed (the message says why)."""


class BatchLockedError(RuntimeError):
    """Another batch run holds the output directory."""


class DiskFullError(OSError):
    """The output device is full; the run stops (a rerun resumes)."""


@dataclass
class Item:
    id: str | None          # None: derived from the image's stem by assign_ids
    image: Path
    phrase: str
    where: str = ""         # "manifest.jsonl:12" or the image path, for messages
    kind: str | None = None  # the phrase kind, where a manifest records it (per-kind report)
    mask: Path | None = None  # ground-truth mask, where a manifest records it (accuracy report)

    def __post_init__(self):
        self.where = self.where or str(self.image)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, directories (their images, sorted; hidden files skipped) and glob patterns, in order."""
    paths: list[Path] = []
    for entry in inputs:
        p = Path(entry)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir()
                            if q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".") and q.is_file())
        elif any(ch in entry for ch in "*?["):
            paths += sorted(Path(q) for q in glob.glob(entry, recursive=True) if not Path(q).name.startswith("."))
        else:
            paths.append(p)  # a missing or odd file is reported when it is read
    return paths


def check_id(item_id) -> str:
    """An explicit id, unchanged if it is a safe single file-name component; :class:`ItemError` otherwise."""
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str):
        raise ItemError(f"id must be a string, got {type(item_id).__name__}")
    if not item_id:
        raise ItemError("id is empty")
    if len(item_id) > MAX_ID_CHARS:
        raise ItemError(f"id is {len(item_id)} characters; the limit is {MAX_ID_CHARS}")
    try:
        os.fsencode(item_id)
        item_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ItemError(f"id {printable(item_id)} is not encodable as a file name") from None
    for bad, why in (("/", "a '/'"), ("\\", "a '\\'"), ("\x00", "a NUL character")):
        if bad in item_id:
            raise ItemError(f"id {printable(item_id)} contains {why}; an id must be a plain file name")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in item_id):
        raise ItemError(f"id {printable(item_id)} contains control characters")
    if item_id.startswith("."):
        raise ItemError(f"id {printable(item_id)} starts with '.' (hidden or a '..' path)")
    return item_id


def _safe_stem(path: Path) -> str:
    """A file stem made safe as an id: odd characters become '_', cut to fit the limit."""
    stem = "".join(c if (c.isalnum() or c in "-_.+") and c.isprintable() else "_" for c in path.stem)
    stem = stem.lstrip(".") or "image"
    try:
        os.fsencode(stem)
    except UnicodeEncodeError:
        stem = stem.encode("ascii", "replace").decode().replace("?", "_")
    return stem[:MAX_ID_CHARS - 9]


def _key_hash(image: Path, phrase: str) -> str:
    return hashlib.sha1(f"{image}\0{phrase}".encode("utf-8", "surrogatepass")).hexdigest()[:8]


def assign_ids(items: list[Item]) -> tuple[list[Item], list[str]]:
    """Checks explicit ids and derives the missing ones (see the module docstring); returns the
    items that can run and one error line for each that cannot (bad or duplicate id)."""
    stems = {}
    for it in items:
        if it.id is None:
            stems.setdefault(_safe_stem(it.image), []).append(it)
    for stem, group in stems.items():
        for it in group:
            it.id = stem if len(group) == 1 else f"{stem}-{_key_hash(it.image, it.phrase)}"
    ok, errors, owner = [], [], {}
    for it in items:
        try:
            item_id = check_id(it.id)
        except ItemError as exc:
            errors.append(f"{it.where}: {exc}")
            continue
        key = item_id.casefold()  # one file on case-insensitive file systems too
        if key in owner:
            errors.append(f"{it.where}: id {printable(item_id)} already used by {owner[key]}; "
                          f"give each item its own id")
            continue
        owner[key] = it.where
        it.id = item_id
        ok.append(it)
    return ok, errors


def read_manifest(path: Path) -> tuple[list[Item], list[str]]:
    """Items from JSON lines ``{"image", "phrase", "id"?, "kind"?, "mask"?}`` (paths relative to the
    manifest) and one error per bad line, naming its line number."""
    items, errors = [], []
    data = path.read_bytes()
    for n, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{n}"
        if not raw.strip():
            continue
        if len(raw) > MAX_MANIFEST_LINE:
            errors.append(f"{where}: line is {len(raw)} bytes; the limit is {MAX_MANIFEST_LINE}")
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(f"{where}: not UTF-8 text (byte {exc.start})")
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise TypeError("a line must be a JSON object")
            image, phrase = entry["image"], entry["phrase"]
            if not isinstance(image, str) or not image:
                raise TypeError("image must be a non-empty string")
            if not isinstance(phrase, str):
                raise TypeError("phrase must be a string")
            kind, mask = entry.get("kind"), entry.get("mask")
            if kind is not None and not isinstance(kind, str):
                raise TypeError("kind must be a string")
            if mask is not None and not isinstance(mask, str):
                raise TypeError("mask must be a string")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            msg = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            errors.append(f"{where}: bad manifest line ({msg})")
            continue
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        mask_path = None if mask is None else (Path(mask) if Path(mask).is_absolute() else path.parent / mask)
        items.append(Item(entry.get("id"), image_path, phrase, where, kind, mask_path))
    return items, errors


def overlay(image: np.ndarray, mask: np.ndarray, colour=(255, 0, 80), alpha: float = 0.5) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask] = out[mask] * (1 - alpha) + np.array(colour, np.float32) * alpha
    return out.astype(np.uint8)


def _read_results(results: Path) -> dict[str, tuple[str, str, str]]:
    """``id -> (image, phrase, raw line)`` of ``results.jsonl``; a line cut by a kill is dropped."""
    done = {}
    if not results.is_file():
        return done
    for line in results.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            done[entry["id"]] = (entry["image"], entry["phrase"], line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def _rewrite_results(results: Path, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if not results.is_file():
        return  # nothing to repair
    if results.read_text(encoding="utf-8", errors="replace") != text:
        atomic_write(results, lambda p: Path(p).write_text(text, encoding="utf-8"))


class _DirLock:
    """An exclusive ``flock`` on the output directory itself (no lock file to leave behind);
    a no-op where ``fcntl`` does not exist."""

    def __init__(self, out: Path):
        self.fd = None
        try:
            import fcntl
        except ImportError:
            return
        self.fd = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise BatchLockedError(f"{out}: another batch run is writing to this directory; wait for it or "
                                   f"choose another --output") from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _inside(out: Path, name: str) -> Path:
    path = out / name
    if path.resolve().parent != out.resolve():
        raise ItemError(f"output {name} would land outside {out}")
    return path


def _iou(pred: np.ndarray, gt_path: Path) -> tuple[int, int]:
    with Image.open(gt_path) as im:
        gt = np.asarray(im.convert("L").resize((pred.shape[1], pred.shape[0]), Image.NEAREST)) > 127
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def _accuracy(scores: list[tuple[str | None, tuple[int, int], bool]]) -> dict | None:
    """mIoU overall and by kind where the manifest carried ground-truth masks."""
    if not scores:
        return None

    def summary(rows):
        iou = [i / u if u else 1.0 for _, (i, u), _ in rows]
        return {"n": len(rows), "mIoU": round(100 * float(np.mean(iou)), 2),
                "P@0.5": round(100 * float(np.mean([v >= 0.5 for v in iou])), 2)}

    out = summary(scores)
    kinds = sorted({k for k, _, _ in scores if k is not None})
    if kinds:
        out["by_kind"] = {k: summary([r for r in scores if r[0] == k]) for k in kinds}
    return out


def _where(item: Item, exc) -> str:
    """One failure line: the manifest line (if any), the image, what went wrong."""
    message = str(exc)
    if not message.startswith(str(item.image)):
        message = f"{item.image}: {message}"
    return message if item.where == str(item.image) else f"{item.where}: {message}"


def run_batch(seg: Segmenter, items: list[Item], out: Path, overlays: bool = False,
              errors: list[str] | None = None, stream=None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict:
    """Segments every item not already done in ``out/results.jsonl``; returns the summary (with
    ``errors``, one line per failure, and ``accuracy`` where the items carry ground-truth masks).
    Progress and failures go to ``stream`` (standard error by default). Raises
    :class:`BatchLockedError` and :class:`DiskFullError`; every other failure is per item."""
    stream = stream or sys.stderr
    out.mkdir(parents=True, exist_ok=True)
    lock = _DirLock(out)
    try:
        return _run(seg, items, out, overlays, list(errors or []), stream, max_pixels)
    finally:
        lock.close()


def _run(seg, items, out, overlays, failed, stream, max_pixels) -> dict:
    remove_stale_temp_files(out)
    results = out / "results.jsonl"
    items, id_errors = assign_ids(items)
    failed += id_errors
    done = _read_results(results)
    current = {it.id: (str(it.image), it.phrase) for it in items}
    stale = {i for i, (image, phrase, _) in done.items() if i in current and current[i] != (image, phrase)}
    try:
        _rewrite_results(results, [line for i, (_, _, line) in done.items() if i not in stale])
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise DiskFullError(exc.errno, f"{out}: no space left on device (repairing results.jsonl)") from None
        raise
    counts = {"done": 0, "skipped": 0}
    scores = []
    t0 = time.perf_counter()
    for i, item in enumerate(items, start=1):
        stream.write(f"\r[{i}/{len(items)}] {printable(item.id, 40):<40}")
        stream.flush()
        mask_path = out / f"{item.id}.png"
        if item.id in done and item.id not in stale and mask_path.is_file():
            counts["skipped"] += 1
            continue
        try:
            mask_path = _inside(out, f"{item.id}.png")
            phrase = check_phrase(item.phrase)
            image = load_image(item.image, max_pixels=max_pixels, draft_long_side=seg.long_side)
            result = seg.segment(image, phrase)
            with Image.open(item.image) as header:
                full_size = header.size
            mask = Image.fromarray(result.mask.astype(np.uint8) * 255)
            if mask.size != full_size:  # decoded at a reduced scale: the mask comes out at full size
                mask = mask.resize(full_size, Image.NEAREST)
            atomic_write(mask_path, lambda p: mask.save(p, format="PNG"))
            if overlays:
                over = Image.fromarray(overlay(image, result.mask))
                atomic_write(_inside(out, f"{item.id}.overlay.jpg"),
                             lambda p: over.save(p, format="JPEG", quality=90))
            line = {"id": item.id, "image": str(item.image), "mask": mask_path.name, **result.to_json(),
                    "phrase": item.phrase}
            if item.kind is not None:
                line["kind"] = item.kind
            with results.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            counts["done"] += 1
            if item.mask is not None:
                scores.append((item.kind, _iou(result.mask, item.mask), result.found))
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                stream.write("\n")
                remove_stale_temp_files(out)
                raise DiskFullError(exc.errno, f"{out}: no space left on device after {counts['done']} new "
                                               f"items; free space and rerun to continue") from None
            failed.append(_where(item, exc))
        except (ImageError, PhraseError, ItemError) as exc:
            failed.append(_where(item, exc))
        except Exception as exc:  # noqa: BLE001 - one bad item never stops the run
            failed.append(_where(item, f"{type(exc).__name__}: {exc}"))
    stream.write("\n")
    summary = {"items": len(items) + len(id_errors), **counts, "failed": len(failed),
               "seconds": round(time.perf_counter() - t0, 2), "output": str(out)}
    accuracy = _accuracy(scores)
    if accuracy:
        summary["accuracy"] = accuracy
    for message in failed:
        stream.write(f"failed: {printable(message, 300)}\n")
    return {**summary, "errors": failed}

