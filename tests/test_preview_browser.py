"""End to end in a real browser: the preview page's image follows a phrase typed into its form.

Needs Debian's chromium (installed by .ci/run) and the playwright package (dev extra; it drives
/usr/bin/chromium, it never downloads a browser). Skipped, with the reason printed, where either
is absent.
"""

import io
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from pi_runtime.segmenter import Result
from pi_runtime.serve import PreviewServer
from pi_runtime.stream import PhraseBox, run_stream

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class HalfSegmenter:
    """Masks the left half of the frame when the phrase says 'left', else the right half: what
    the page shows then depends on the phrase in a way a screenshot can check."""

    def segment(self, frame, phrase, track=None):
        h, w = frame.shape[:2]
        mask = np.zeros((h, w), bool)
        mask[:, : w // 2] = "left" in phrase
        mask[:, w // 2:] = "left" not in phrase
        return Result(phrase, mask.astype(np.float32), mask, 1.0, True, (0, 0, w, h), (w / 2, h / 2), 0.5, {})


class GreyFrames:
    live = False

    def read(self):
        time.sleep(0.03)
        return np.full((240, 320, 3), 128, np.uint8)

    def close(self):
        pass


def _tinted_half(png: bytes) -> str:
    """Which half of the screenshot carries the mask's red tint (below the text lines)."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32)
    body = image[image.shape[0] // 3:]
    redness = body[..., 0] - body[..., 1]
    half = body.shape[1] // 2
    return "left" if redness[:, :half].mean() > redness[:, half:].mean() + 20 else \
        "right" if redness[:, half:].mean() > redness[:, :half].mean() + 20 else "none"


def test_page_image_follows_a_phrase_typed_into_the_form():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium package)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")

    box = PhraseBox("the cup on the left")
    server = PreviewServer(box, "127.0.0.1", 0).start()
    stop = threading.Event()
    loop = threading.Thread(target=run_stream, args=(HalfSegmenter(), GreyFrames(), box),
                            kwargs={"preview": server, "stop": stop, "log": io.StringIO()}, daemon=True)
    loop.start()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_function("document.getElementById('stream').naturalWidth > 0", timeout=20000)
            page.wait_for_function("document.getElementById('status').dataset.phrase === 'the cup on the left'",
                                   timeout=20000)
            assert _tinted_half(page.locator("#stream").screenshot()) == "left"

            page.fill("#text", "the cup on the right")
            page.click("button[type=submit]")
            page.wait_for_function("document.getElementById('status').dataset.phrase === 'the cup on the right'",
                                   timeout=20000)
            deadline = time.time() + 20
            while (side := _tinted_half(page.locator("#stream").screenshot())) != "right":
                assert time.time() < deadline, f"the image still shows the {side} half after the phrase change"
                time.sleep(0.2)
            assert box.get() == "the cup on the right"
            browser.close()
    finally:
        stop.set()
        loop.join(10)
        server.close()
