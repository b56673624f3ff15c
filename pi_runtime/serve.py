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

from pi_runtime.phrases import MAX_PHRASE_CHARS, PhraseError
from pi_runtime.stream import PhraseBox

__all__ = ["PreviewServer"]

MAX_BODY_BYTES = 4096
BOUNDARY = "erisframe"
SOCKET_TIMEOUT_S = 10.0     # an idle or slow client is dropped after this long without progress
MAX_CONNECTIONS = 16        # concurrent connections; more are answered 503 and closed at once

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


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``MAX_CONNECTIONS`` at once; every socket gets a timeout,
    and a client that goes away mid-answer ends its thread quietly (no traceback on the terminal)."""

    daemon_threads = True

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 17\r\nConnection: close\r\n"
                                b"\r\ntoo many clients\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        pass  # disconnects and timeouts: the client's problem, not the terminal's


class PreviewServer:
    """Holds the newest annotated JPEG; serves it as MJPEG on its own threads."""

    def __init__(self, box: PhraseBox, host: str = "127.0.0.1", port: int = 8080):
        self.box = box
        self._jpeg: bytes | None = None
        self._status: dict = {"frame": None, "phrase": box.get(), "fps": 0.0, "latency_ms": None, "found": False}
        self._seq = 0
        self._cond = threading.Condition()
        self.closed = threading.Event()
        self.httpd = _BoundedServer((host, port), self._handler())
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
            timeout = SOCKET_TIMEOUT_S  # StreamRequestHandler sets it on the socket

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
                except OSError:
                    pass  # the viewer went away (broken pipe, reset, timeout)

            def do_POST(self):  # noqa: N802
                if self.path.split("?", 1)[0] != "/phrase":
                    self._send(404, b"not found\n", "text/plain")
                    return
                raw = self.headers.get("Content-Length")
                if raw is None or not raw.strip().isdigit():
                    self._send(HTTPStatus.LENGTH_REQUIRED if raw is None else 400,
                               b"Content-Length must be a non-negative integer\n", "text/plain")
                    return
                length = int(raw)
                if length > MAX_BODY_BYTES:
                    self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"request body too large\n", "text/plain")
                    return
                body = self.rfile.read(length)  # bounded by the socket timeout
                if len(body) != length:
                    self._send(400, b"request body shorter than Content-Length\n", "text/plain")
                    return
                try:
                    fields = parse_qs(body.decode("utf-8"), strict_parsing=False)
                except UnicodeDecodeError:
                    self._send(400, b"request body is not UTF-8\n", "text/plain")
                    return
                try:
                    phrase = server.box.set((fields.get("text") or [""])[0])
                except PhraseError as exc:
                    self._send(400, f"{exc}\n".encode(), "text/plain; charset=utf-8")
                    return
                self._send(200, json.dumps({"phrase": phrase}).encode(), "application/json")

        return Handler
