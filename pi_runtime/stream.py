"""The live loop: frames in, one segmentation per frame, JSON lines / preview / saved masks out.

Capture runs on a :class:`~pi_runtime.sources.FrameGrabber` thread for live sources (latest frame
wins); inference runs here, on the caller's thread. The phrase lives in a :class:`PhraseBox` that
the preview page and a terminal's stdin can change while the loop runs.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pi_runtime.batch import overlay
from pi_runtime.files import atomic_write
from pi_runtime.preprocess import ImageError
from pi_runtime.phrases import MAX_PHRASE_CHARS, PhraseError, check_phrase, printable
from pi_runtime.regions import RegionTrack
from pi_runtime.segmenter import Segmenter
from pi_runtime.sources import FrameGrabber

__all__ = ["PhraseBox", "FrameReport", "run_stream", "annotate", "MAX_PHRASE_CHARS", "watch_stdin"]

class PhraseBox:
    """The current phrase, shared between the loop, the preview server and stdin."""

    def __init__(self, phrase: str):
        self._lock = threading.Lock()
        self._phrase = self.check(phrase)

    check = staticmethod(check_phrase)

    def get(self) -> str:
        with self._lock:
            return self._phrase

    def set(self, phrase: str) -> str:
        phrase = self.check(phrase)
        with self._lock:
            self._phrase = phrase
        return phrase


@dataclass
class FrameReport:
    frame: int
    time: float
    phrase: str
    found: bool
    score: float
    bbox: list | None
    centroid: list | None
    area: float
    latency_ms: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def annotate(image: np.ndarray, mask: np.ndarray, lines: list[str]) -> Image.Image:
    """The frame with the mask overlaid and ``lines`` (phrase, FPS, latency) written top-left."""
    picture = Image.fromarray(overlay(image, mask))
    draw = ImageDraw.Draw(picture)
    y = 4
    for line in lines:
        box = draw.textbbox((6, y), line)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((6, y), line, fill=(255, 255, 255))
        y = box[3] + 6
    return picture


def watch_stdin(box: PhraseBox, stream=None, log=sys.stderr) -> threading.Thread | None:
    """Each line typed on a terminal's stdin becomes the phrase; nothing when stdin is not a tty."""
    stream = stream or sys.stdin
    if not stream.isatty():
        return None

    raw = getattr(stream, "buffer", None)  # bytes, so a line of invalid UTF-8 is one bad line, not the end

    def run():
        for line in (raw if raw is not None else stream):
            if isinstance(line, bytes):
                try:
                    line = line.decode("utf-8")
                except UnicodeDecodeError:
                    print("error: typed line is not UTF-8 text; phrase unchanged", file=log, flush=True)
                    continue
            if line.strip():
                try:
                    print(f"phrase: {printable(box.set(line))}", file=log, flush=True)
                except PhraseError as exc:
                    print(f"error: {exc}", file=log, flush=True)

    thread = threading.Thread(target=run, name="stdin-phrase", daemon=True)
    thread.start()
    return thread


def _rate(times) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def run_stream(seg: Segmenter, source, box: PhraseBox, *, json_out=None, preview=None, save_dir: Path | None = None,
               max_frames: int | None = None, stop: threading.Event | None = None, sticky: bool = True,
               log=sys.stderr) -> dict:
    """Segments frames from ``source`` until it ends, ``max_frames`` were done or ``stop`` is set.
    ``json_out``: a text stream for one JSON line per frame; ``preview``: an object with
    ``publish(jpeg_bytes, status)`` (the preview server); ``save_dir``: masks as ``<frame>.png``;
    ``sticky``: frame to frame, stay on the object kept last unless another is clearly surer
    (:class:`pi_runtime.regions.RegionTrack`)."""
    grabber = FrameGrabber(source) if getattr(source, "live", False) else None
    read = grabber.read if grabber else source.read
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)
    times: deque[float] = deque(maxlen=30)      # the last 30 frames give FPS and median latency
    latencies: deque[float] = deque(maxlen=30)
    frame_no = 0
    track = RegionTrack() if sticky else None
    try:
        while not (stop and stop.is_set()) and (max_frames is None or frame_no < max_frames):
            frame = read()
            if frame is None:
                break
            phrase = box.get()
            t0 = time.perf_counter()
            try:
                result = seg.segment(frame, phrase, track=track)
            except (ImageError, PhraseError, ValueError) as exc:  # a bad frame is skipped, the loop goes on
                print(f"skipped frame {frame_no}: {printable(str(exc), 200)}", file=log, flush=True)
                continue
            latency = (time.perf_counter() - t0) * 1e3
            now = time.time()
            times.append(time.perf_counter())
            latencies.append(latency)
            report = FrameReport(frame_no, round(now, 3), phrase, result.found, round(result.score, 4),
                                 list(result.bbox) if result.bbox else None,
                                 [round(c, 1) for c in result.centroid] if result.centroid else None,
                                 round(result.area, 6), round(latency, 2))
            if json_out is not None:
                json_out.write(report.to_json() + "\n")
                json_out.flush()
            if preview is not None:
                fps = _rate(times)
                picture = annotate(frame, result.mask, [phrase, f"{fps:.1f} FPS  {latency:.0f} ms  frame {frame_no}"])
                buf = io.BytesIO()
                picture.save(buf, format="JPEG", quality=80)
                preview.publish(buf.getvalue(), {"frame": frame_no, "phrase": phrase, "fps": round(fps, 2),
                                                 "latency_ms": round(latency, 1), "found": result.found})
            if save_dir:
                mask = Image.fromarray(result.mask.astype(np.uint8) * 255)
                atomic_write(save_dir / f"{frame_no:06d}.png", lambda p, m=mask: m.save(p, format="PNG"))
            frame_no += 1
    finally:
        if grabber:
            grabber.close()
        else:
            source.close()
    summary = {"frames": frame_no, "fps": round(_rate(times), 2),
               "latency_p50_ms": round(float(np.median(latencies)), 2) if latencies else None,
               "dropped": grabber.dropped if grabber else 0, "skipped": getattr(source, "skipped", [])}
    for s in summary["skipped"]:
        print(f"skipped: {s}", file=log)
    return summary
