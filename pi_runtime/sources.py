"""Frame sources for the live loop: the Pi camera, a webcam or video file, a folder of images.

Each source's ``read()`` returns an ``H x W x 3`` uint8 **RGB** array, or ``None`` when a finite
source has no more frames. Live sources (camera, ``/dev/videoN``) are read by a
:class:`FrameGrabber` thread where the latest frame wins; replayed files are read in order, every
frame, so a replay gives the same frames on every run.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from pi_runtime.batch import IMAGE_SUFFIXES
from pi_runtime.preprocess import ImageError, load_image

__all__ = ["CameraError", "PicameraSource", "OpenCVSource", "ImageFolderSource", "FrameGrabber", "open_source",
           "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".h264", ".mjpg", ".mjpeg", ".webm"}


class CameraError(RuntimeError):
    """No camera, or it went away and did not come back (the message says what to do)."""


class PicameraSource:
    """Raspberry Pi camera through picamera2, delivering frames at ``size`` (the model's input
    size, so nothing is resized on the CPU). picamera2's ``RGB888`` is B, G, R in memory (libcamera
    names formats by the 32-bit word's order); we reverse the channels here, once.

    A capture that fails (ribbon cable pulled, camera reset) is retried by closing and reopening the
    camera ``reconnect_attempts`` times, ``reconnect_delay`` seconds apart; then :class:`CameraError`."""

    live = True

    def __init__(self, size: tuple[int, int] = (640, 480), camera_num: int = 0, reconnect_attempts: int = 3,
                 reconnect_delay: float = 1.0, picamera2_class=None):
        if picamera2_class is None:
            try:
                from picamera2 import Picamera2 as picamera2_class
            except ImportError as exc:
                raise CameraError("--camera: picamera2 is not importable. On Raspberry Pi OS: sudo apt install "
                                  "python3-picamera2 and create the venv with --system-site-packages; or replay "
                                  "frames with --source FILE|DIR|/dev/videoN") from exc
        self._cls, self.size, self.camera_num = picamera2_class, tuple(size), camera_num
        self.reconnect_attempts, self.reconnect_delay = reconnect_attempts, reconnect_delay
        self.reconnects = 0
        self._cam = None
        self._open()

    def _open(self) -> None:
        try:
            cam = self._cls(self.camera_num)
            config = cam.create_video_configuration(main={"size": self.size, "format": "RGB888"},
                                                    buffer_count=2)
            cam.configure(config)
            cam.start()
        except Exception as exc:  # noqa: BLE001 - picamera2 raises RuntimeError, IndexError, OSError...
            raise CameraError(f"--camera: cannot open camera {self.camera_num} ({exc}); check the ribbon cable "
                              f"and 'rpicam-hello --list-cameras'") from exc
        self._cam = cam

    def read(self) -> np.ndarray:
        for attempt in range(self.reconnect_attempts + 1):
            try:
                bgr = self._cam.capture_array("main")
                return np.ascontiguousarray(bgr[:, :, 2::-1])  # BGR(X) -> RGB, the only conversion
            except Exception as exc:  # noqa: BLE001
                if attempt == self.reconnect_attempts:
                    raise CameraError(f"--camera: camera {self.camera_num} stopped delivering frames ({exc}) and "
                                      f"did not come back after {self.reconnect_attempts} reconnect attempts") from exc
                self.close()
                time.sleep(self.reconnect_delay)
                self.reconnects += 1
                try:
                    self._open()
                except CameraError:
                    continue
        raise AssertionError("unreachable")

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            for step in (cam.stop, cam.close):
                try:
                    step()
                except Exception:  # noqa: BLE001 - closing a vanished camera may fail; nothing to save
                    pass


class OpenCVSource:
    """A video file or a V4L2 webcam (``/dev/videoN``) through OpenCV (optional dependency)."""

    def __init__(self, spec: str, size: tuple[int, int] | None = None):
        try:
            import cv2
        except ImportError as exc:
            raise CameraError(f"--source {spec}: videos and webcams need OpenCV (pip install opencv-python-headless);"
                              f" a folder of images needs nothing more") from exc
        self.live = spec.startswith("/dev/video")
        self._cap = cv2.VideoCapture(int(spec.removeprefix("/dev/video")) if self.live else spec)
        if not self._cap.isOpened():
            raise CameraError(f"--source {spec}: cannot open it")
        if self.live and size:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        self.spec = spec

    def read(self) -> np.ndarray | None:
        ok, frame = self._cap.read()
        if not ok:
            if self.live:
                raise CameraError(f"--source {self.spec}: the webcam stopped delivering frames")
            return None
        return np.ascontiguousarray(frame[:, :, ::-1])  # OpenCV is BGR

    def close(self) -> None:
        self._cap.release()


class ImageFolderSource:
    """Images of a directory (sorted by name), or one image file, each read once; unreadable
    files are skipped and remembered in ``skipped``."""

    live = False

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            self.paths = sorted(p for p in path.iterdir()
                                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        else:
            self.paths = [path]
        if not self.paths:
            raise CameraError(f"--source {path}: no images in this directory")
        self._next = 0
        self.skipped: list[str] = []

    def read(self) -> np.ndarray | None:
        while self._next < len(self.paths):
            path = self.paths[self._next]
            self._next += 1
            try:
                return load_image(path)
            except ImageError as exc:
                self.skipped.append(str(exc))
        return None

    def close(self) -> None:
        pass


def open_source(spec: str | None, camera: bool, size: tuple[int, int]):
    """The source for ``--camera`` or ``--source SPEC``."""
    if camera:
        return PicameraSource(size)
    path = Path(spec)
    if spec.startswith("/dev/video") or path.suffix.lower() in VIDEO_SUFFIXES:
        if not spec.startswith("/dev/video") and not path.is_file():
            raise CameraError(f"--source {spec}: no such file")
        return OpenCVSource(spec, size)
    if not path.exists():
        raise CameraError(f"--source {spec}: no such file or directory")
    return ImageFolderSource(path)


class FrameGrabber:
    """Reads a live source on its own thread and keeps only the newest frame, so inference always
    works on the present and never on a queue of stale frames. ``dropped`` counts frames that were
    overwritten before anyone took them."""

    def __init__(self, source):
        self.source = source
        self.dropped = 0
        self.error: BaseException | None = None
        self._frame: np.ndarray | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-grabber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                with self._cond:
                    if frame is None:
                        self._stop.set()
                    else:
                        if self._frame is not None:
                            self.dropped += 1
                        self._frame = frame
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            with self._cond:
                self.error = exc
                self._stop.set()
                self._cond.notify_all()

    def read(self, timeout: float = 5.0) -> np.ndarray | None:
        """The newest frame not yet taken (waits for one); ``None`` when the source ended; raises
        what the source raised."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._frame is not None or self._stop.is_set(), timeout):
                raise CameraError(f"no frame from the camera for {timeout:.0f} s")
            frame, self._frame = self._frame, None
            if frame is None and self.error is not None:
                raise self.error
            return frame

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.source.close()
