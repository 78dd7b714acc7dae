"""A real HTTP file server on 127.0.0.1 for download tests (threaded, with Range support).

Files are served from a folder; behaviours a download must survive are switched per path:
`drop_after[path] = n` sends the full Content-Length but closes the connection after n bytes
(once; then `fail_after_drop[path]` more requests get HTTP 503), `ignore_range` answers every request with the whole file (200), `fail_times[path] =
k` answers HTTP `fail_status` (503) k times first, with `retry_after` as a Retry-After header
when set; `throttle` slows every body down. Every request is logged as (method, path, Range
header).
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self.drop_after: dict[str, int] = {}
        self.fail_times: dict[str, int] = {}
        self.fail_after_drop: dict[str, int] = {}
        self.fail_status = 503
        self.retry_after: str | None = None
        self.ignore_range = False
        self.throttle = 0.0  # seconds of sleep after each 8 KB of a body
        self.requests: list[tuple[str, str, str | None]] = []

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up mid-body are part of the tests

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RangeServer

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = unquote(self.path.split("?", 1)[0])
        range_header = self.headers.get("Range")
        self.server.requests.append((self.command, path, range_header))
        if self.server.fail_times.get(path, 0) > 0:
            self.server.fail_times[path] -= 1
            self._plain(self.server.fail_status, b"try later", self.server.retry_after)
            return
        file = (self.server.root / path.lstrip("/")).resolve()
        if self.server.root.resolve() not in file.parents or not file.is_file():
            self._plain(404, b"not found")
            return
        data = file.read_bytes()
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not self.server.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        payload = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        drop = self.server.drop_after.pop(path, None)
        if drop is not None:
            self.server.fail_times[path] = self.server.fail_after_drop.pop(path, 0)
            self.wfile.write(payload[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.server.throttle:
            for start in range(0, len(payload), 8192):
                self.wfile.write(payload[start:start + 8192])
                self.wfile.flush()
                time.sleep(self.server.throttle)
            return
        self.wfile.write(payload)

    def _plain(self, status: int, text: bytes, retry_after: str | None = None) -> None:
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)


@contextmanager
def serve(root: Path):
    server = RangeServer(root)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
