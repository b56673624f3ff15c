"""``--serve``: an MJPEG preview of the live loop and a page to change the phrase.

Standard library only (``http.server``). Bound to 127.0.0.1 unless ``--host`` says otherwise;
the page has no authentication, so expose it only on a network you trust.

    GET  /             the page: the stream, the current phrase, a text box
    GET  /stream.mjpg  multipart/x-mixed-replace JPEG stream (mask, phrase, FPS, latency drawn in)
    GET  /frame.jpg    the latest frame, once
    GET  /status       JSON: frame, phrase, fps, latency_ms, found
    POST /phrase       form field ``text`` (<= 200 characters): the new phrase
"""

from __future__ import annotations

import html
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from pi_runtime.segmenter import PhraseError
from pi_runtime.stream import MAX_PHRASE_CHARS, PhraseBox

__all__ = ["PreviewServer"]

MAX_BODY_BYTES = 4096
BOUNDARY = "erisframe"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>eris-pi</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:sans-serif;margin:1em;background:#111;color:#eee}}img{{max-width:100%}}
input[type=text]{{width:24em}}</style></head>
<body>
<form id="phrase-form" method="post" action="/phrase">
  <input id="text" name="text" type="text" maxlength="{limit}" value="{phrase}" autofocus>
  <button type="submit">segment</button>
</form>
<p id="status">phrase: {phrase}</p>
<img id="stream" src="/stream.mjpg" alt="live preview">
<script>
const form = document.getElementById('phrase-form'), status = document.getElementById('status');
form.addEventListener('submit', async (e) => {{
  e.preventDefault();
  const r = await fetch('/phrase', {{method: 'POST', body: new URLSearchParams(new FormData(form))}});
  if (!r.ok) status.textContent = 'error: ' + await r.text();
}});
setInterval(async () => {{
  try {{
    const s = await (await fetch('/status')).json();
    status.textContent = `phrase: ${{s.phrase}} | frame ${{s.frame}} | ${{s.fps}} FPS | ${{s.latency_ms}} ms`;
    status.dataset.frame = s.frame; status.dataset.phrase = s.phrase;
  }} catch (err) {{ status.textContent = 'preview stopped'; }}
}}, 500);
</script>
</body></html>
"""


class PreviewServer:
    """Holds the newest annotated JPEG; serves it as MJPEG on its own threads."""

    def __init__(self, box: PhraseBox, host: str = "127.0.0.1", port: int = 8080):
        self.box = box
        self._jpeg: bytes | None = None
        self._status: dict = {"frame": None, "phrase": box.get(), "fps": 0.0, "latency_ms": None, "found": False}
        self._seq = 0
        self._cond = threading.Condition()
        self.closed = threading.Event()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="preview-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> PreviewServer:
        self._thread.start()
        return self

    def publish(self, jpeg: bytes, status: dict) -> None:
        with self._cond:
            self._jpeg, self._status = jpeg, status
            self._seq += 1
            self._cond.notify_all()

    def next_frame(self, after: int, timeout: float = 5.0) -> tuple[int, bytes | None]:
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after or self.closed.is_set(), timeout)
            return self._seq, self._jpeg

    def latest(self) -> tuple[int, bytes | None]:
        """The newest frame's sequence number and JPEG (None before the first frame)."""
        with self._cond:
            return self._seq, self._jpeg

    def status(self) -> dict:
        with self._cond:
            return dict(self._status)

    def close(self) -> None:
        self.closed.set()
        with self._cond:
            self._cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the terminal for JSON lines and errors
                pass

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/":
                    page = PAGE.format(phrase=html.escape(server.box.get(), quote=True), limit=MAX_PHRASE_CHARS)
                    self._send(200, page.encode(), "text/html; charset=utf-8")
                elif path == "/status":
                    self._send(200, json.dumps(server.status()).encode(), "application/json")
                elif path == "/frame.jpg":
                    _, jpeg = server.latest()
                    if jpeg is None:
                        self._send(503, b"no frame yet\n", "text/plain")
                    else:
                        self._send(200, jpeg, "image/jpeg")
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seq, jpeg = server.latest()
                seq = seq - 1 if jpeg is not None else seq  # send the frame we have, then each new one
                try:
                    while not server.closed.is_set():
                        new, jpeg = server.next_frame(seq)
                        if new == seq or jpeg is None:
                            continue
                        seq = new
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the viewer went away

            def do_POST(self):  # noqa: N802
                if self.path.split("?", 1)[0] != "/phrase":
                    self._send(404, b"not found\n", "text/plain")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"request body too large\n", "text/plain")
                    return
                fields = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
                try:
                    phrase = server.box.set((fields.get("text") or [""])[0])
                except PhraseError as exc:
                    self._send(400, f"{exc}\n".encode(), "text/plain; charset=utf-8")
                    return
                self._send(200, json.dumps({"phrase": phrase}).encode(), "application/json")

        return Handler
