"""The remote client (``totalseg_remote``) alone: what it imports (only what Slicer ships), and its messages when
the server cannot be reached. With a running server: test_server*.py."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from totalseg_remote import (
    AuthenticationError,
    CancelledError,
    RemoteServer,
    ServerLostError,
    ServerUnreachableError,
    UnknownJobError,
)
from totalseg_remote.client import JobStatus
from totalseg_remote.upload import compresses

MODULE_ROOT = Path(__file__).resolve().parents[1] / "TotalSegmentator"
HEAVY = ("numpy", "nibabel", "torch", "scipy", "SimpleITK", "nnunetv2", "totalseg_engine", "totalseg_slicer",
         "totalseg_web", "totalseg_server", "aiohttp", "slicer", "qt", "vtk")


def test_the_client_imports_only_the_standard_library_and_requests():
    """As in a fresh Slicer: any import of a package it does not ship fails, and the client still works."""
    script = f"""
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Blocker())
import totalseg_remote
from totalseg_remote import RemoteServer, RemoteJob, RemoteError
server = RemoteServer("http://127.0.0.1:9/")
try:
    server.info()
except totalseg_remote.ServerUnreachableError as err:
    print("unreachable:", err)
# __main__ is this script; _cython_*/cython_runtime are what compiled modules (charset_normalizer's) register
third_party = sorted({{m.split(".")[0] for m in sys.modules}} - set(sys.stdlib_module_names) - {{"totalseg_remote",
                     "__main__", "cython_runtime"}})
third_party = [name for name in third_party if not name.startswith("_cython_")]
print(third_party)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=MODULE_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "unreachable: Cannot reach the server at http://127.0.0.1:9/" in done.stdout
    allowed = {"requests", "urllib3", "idna", "certifi", "charset_normalizer", "chardet", "brotli", "zstandard",
               "socks", "simplejson", "cryptography", "OpenSSL", "_cffi_backend", "_distutils_hack"}
    third_party = eval(done.stdout.strip().splitlines()[-1])
    assert set(third_party) <= allowed, third_party


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_not_there_is_named_with_what_to_check():
    url = f"http://127.0.0.1:{_closed_port()}/"
    with pytest.raises(ServerUnreachableError, match="connection was refused. Is the server running") as refused:
        RemoteServer(url).info()
    assert url in str(refused.value) and refused.value.status is None
    with pytest.raises(ServerUnreachableError, match="host name 'no-such-host.invalid' is not known"):
        RemoteServer("http://no-such-host.invalid:8000", connect_timeout=10).info()
    for bad in ("127.0.0.1:8000", "ftp://host/", ""):
        with pytest.raises(ValueError, match="http://host:port"):
            RemoteServer(bad)


class _Scripted(BaseHTTPRequestHandler):
    """A stand-in server that answers what the test scripted (status, JSON body), and may stop answering."""

    answers: dict[str, tuple[int, str]] = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        status, body = self.answers.get(self.path.split("?")[0], (404, '{"error": "no"}'))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_DELETE = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_refusals_become_errors_that_name_the_setting_or_the_restart(scripted):
    server, url = scripted
    _Scripted.answers = {"/api/v1/info": (401, '{"error": "token"}'),
                         "/api/v1/jobs/gone": (404, '{"error": "Unknown job; the server may have restarted."}')}
    with pytest.raises(AuthenticationError, match="needs an access token. Set the right token in MY SETTING"):
        RemoteServer(url, token_hint="MY SETTING").info()
    with pytest.raises(AuthenticationError, match="refused the access token"):
        RemoteServer(url, token="wrong").info()
    with pytest.raises(UnknownJobError, match="may have restarted"):
        RemoteServer(url).job("gone").status()


def test_a_server_that_dies_during_the_wait_is_reported_within_seconds(scripted):
    server, url = scripted
    _Scripted.answers = {"/api/v1/jobs/j": (200, '{"id": "j", "state": "running", "progress": {"stage": "predict"}}')}
    job = RemoteServer(url, lost_after_s=1.0).job("j")
    threading.Timer(0.5, lambda: (server.shutdown(), server.server_close())).start()
    started = time.monotonic()
    with pytest.raises(ServerLostError, match="stopped answering during the job") as lost:
        job.wait(poll_s=0.1)
    assert time.monotonic() - started < 5 and url in str(lost.value) and "Nothing was written" in str(lost.value)


def test_cancel_from_another_thread_stops_the_wait_and_cancels_the_job(scripted):
    server, url = scripted
    _Scripted.answers = {"/api/v1/jobs/j": (200, '{"id": "j", "state": "queued", "position": 2}')}
    job = RemoteServer(url).job("j")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    seen = []
    started = time.monotonic()
    with pytest.raises(CancelledError, match="cancelled too"):
        job.wait(on_progress=seen.append, should_cancel=stop.is_set, poll_s=5.0)
    assert time.monotonic() - started < 1.5  # not the 5 s poll interval
    assert seen[0].describe() == "Waiting on the server: 2 jobs ahead"


def test_status_lines_for_a_panel():
    assert JobStatus.from_json({"id": "a", "state": "queued", "position": 1}).describe() == \
        "Waiting on the server: 1 job ahead"
    progress = {"stage": "predict", "message": "Predicting", "fraction": 0.5}
    running = JobStatus.from_json({"id": "a", "state": "running", "progress": progress})
    assert running.describe() == "Predicting (50 %)" and not running.finished


def test_what_is_compressed_on_the_way(tmp_path):
    raw_nrrd = tmp_path / "a.nrrd"
    raw_nrrd.write_bytes(b"NRRD0004\ntype: short\nencoding: raw\n\n" + b"\0" * 100)
    gz_nrrd = tmp_path / "b.nrrd"
    gz_nrrd.write_bytes(b"NRRD0004\ntype: short\nencoding: gzip\n\n" + b"\x1f\x8b")
    for name in ("c.nii", "d.mha"):
        (tmp_path / name).write_bytes(b"\0" * 10)
    assert compresses(raw_nrrd) and compresses(tmp_path / "c.nii") and compresses(tmp_path / "d.mha")
    assert not compresses(gz_nrrd) and not compresses(Path("x.nii.gz")) and not compresses(Path("series.zip"))
