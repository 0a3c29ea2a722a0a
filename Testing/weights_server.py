"""A real HTTP server on 127.0.0.1 with canned answers, standing in for the weights release and licence hosts."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional

import pytest


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, tuple[int, bytes, str, Optional[int], float]] = {}
        self.requests: list[tuple[str, str, bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve(self, path: str, body: bytes, status: int = 200, content_type: str = "application/zip",
              announce: Optional[int] = None, delay: float = 0.0) -> None:
        """Answer ``path`` with ``body`` after ``delay`` seconds; ``announce`` claims another Content-Length."""
        self.routes[path] = (status, body, content_type, announce, delay)

    def serve_json(self, path: str, data: dict, status: int = 200) -> None:
        self.serve(path, json.dumps(data).encode(), status, "application/json")


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.requests.append((self.command, self.path, self.rfile.read(length)))
        if self.path not in self.server.routes:
            self.send_error(404)
            return
        status, body, content_type, announce, delay = self.server.routes[self.path]
        time.sleep(delay)  # a licence server assembling a zip answers only when it is ready
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(announce or len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass



@contextlib.contextmanager
def serving(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """Start a server and point the engine's release and licence URLs at it."""
    httpd = Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", httpd.url + "/{version}/{folder}.zip")
    monkeypatch.setenv("TOTALSEG_LICENSE_URL", httpd.url + "/download_weights")
    monkeypatch.setenv("TOTALSEG_LICENSE_CHECK_URL", httpd.url + "/is_valid_license_number")
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
