"""The web app against an attacker and a careless user: killed processes, racing requests, the process list,
refused uploads, malformed requests and what messages reveal. ``totalseg_web`` runs as a program; the browser is
Chromium through Playwright, other clients are plain HTTP; processes are killed with real SIGKILLs.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import time
import zipfile
from pathlib import Path

import pytest
from process_support import (
    children_of,
    command_line,
    listening_ports,
    parent_of,
    process_alive,
    seconds_until_gone,
)
from web_support import (
    MAX_UPLOAD_MB,
    RUN_TIMEOUT_MS,
    engine_processes,
    new_page,
    open_image,
    run_fast,
    start_launcher,
    stop_launcher,
    upload,
    wait_for_text,
)

ORPHAN_BOUND_S = 5.0  # an engine whose session or launcher was SIGKILLed is gone within this
LAUNCHER_KILL_BOUND_S = 20.0  # ... and every session of a SIGKILLed launcher, with its files
ENGINE_START_S = 120.0  # how long a run may take to start its engine process
CAP_RACERS = 6  # parallel requests for a new session against --max-sessions 1
DAMAGED_ZIP_S = 10.0  # a zip of cut-short DICOM slices gets its message within this (28 s before, on 2 cores)
TOKEN = "t0ken-for-tests"
PROXY_HEADER = "X-TotalSeg-Proxy"


@pytest.fixture(scope="module")
def token_server(home, tmp_path_factory):
    """A launcher whose token comes from the environment, that also answers to one extra host name."""
    work = tmp_path_factory.mktemp("token-work")
    process, port = start_launcher(home, work, "--allowed-host", "seg.example.org", "--session-timeout", "5",
                                   env={"TOTALSEG_WEB_TOKEN": TOKEN})
    yield {"url": f"http://127.0.0.1:{port}/", "port": port, "work": work, "process": process}
    stop_launcher(process, work)


def racing_requests(port: int, count: int, headers: dict) -> list[int]:
    """``count`` requests whose bytes all reach the server before any answer is read: the status of each."""
    text = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=180) for _ in range(count)]
    try:
        for connection in sockets:
            connection.sendall(text.encode())
        return [int(connection.makefile("rb").readline().split()[1]) for connection in sockets]
    finally:
        for connection in sockets:
            connection.close()


def request(port: int, path: str = "/", method: str = "GET", headers: dict | None = None,
            body: bytes | None = None) -> tuple[int, dict, str]:
    """One HTTP request, redirects not followed: (status, headers, body text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read().decode(errors="replace")
    finally:
        connection.close()


def wait_for_engine(work: Path, name: str) -> int:
    """The engine run on input ``name`` of the server working in ``work`` (and no other test run's)."""
    deadline = time.monotonic() + ENGINE_START_S
    while not (found := engine_processes(str(work), name)):
        assert time.monotonic() < deadline, f"no engine process for {name} started"
        time.sleep(0.05)
    return found[0]


def session_processes(launcher_pid: int) -> list[int]:
    return [pid for pid in children_of(launcher_pid) if "totalseg_web.session_app" in command_line(pid)]


def wait_for_result(page) -> None:
    """Until the run shows its segments or an error; an error fails at once, not after the run timeout."""
    page.wait_for_selector('[data-testid="segments"], [data-testid="error"]', timeout=RUN_TIMEOUT_MS)
    assert page.query_selector('[data-testid="error"]') is None, page.inner_text('[data-testid="error"]')


def shown_messages(page) -> str:
    return " ".join(page.inner_text(f'[data-testid="{name}"]') for name in ("error", "status")
                    if page.query_selector(f'[data-testid="{name}"]'))


def assert_no_server_paths(text: str, server: dict, page) -> None:
    sid = page.url.split("/s/")[1].split("/")[0]
    for leak in (str(server["work"]), "/tmp/", "sessions/", "uploads/", sid):
        assert leak not in text, f"{leak!r} shown to the user: {text}"


# ------------------------------------------------------------------------------------------------ no orphans


def test_killing_a_session_mid_run_kills_its_engine_before_the_next_run_starts(browser, server, data_dir):
    first, second = new_page(browser, server), new_page(browser, server)
    open_image(first, data_dir / "chest_cta_1.5mm.nii.gz")
    open_image(second, data_dir / "example_ct_sm.nii.gz")
    run_fast(first)
    engine = wait_for_engine(server["work"], "chest_cta_1.5mm")
    run_fast(second)
    wait_for_text(second, "progress-message", "text.includes('1 run ahead')")

    # An engine between two progress lines (loading a large model, a long GPU pass: minutes without output) never
    # learns that its session's pipes are gone; a writing one would die of EPIPE. Stopped, it writes nothing.
    os.kill(engine, signal.SIGSTOP)
    try:
        os.kill(parent_of(engine), signal.SIGKILL)  # the session process: no cleanup of its own runs
        assert seconds_until_gone([engine], ORPHAN_BOUND_S) <= ORPHAN_BOUND_S, "the engine outlived its session"
        wait_for_text(second, "progress-message", "text !== '' && !text.includes('ahead')", timeout=30_000)
        assert not process_alive(engine)  # the next run's turn came only after the engine was gone
        second.click('[data-testid="run"]')  # Cancel: what matters is that its turn came
        second.wait_for_selector('[data-testid="run"]:has-text("Run")', timeout=30_000)
    finally:
        if process_alive(engine):
            os.kill(engine, signal.SIGKILL)
        first.context.close()
        second.context.close()


def test_killing_the_launcher_mid_run_ends_every_session_and_engine(browser, home, data_dir, tmp_path):
    work = tmp_path / "work"
    launcher, port = start_launcher(home, work)
    sessions, engine = [], 0
    try:
        page = new_page(browser, {"url": f"http://127.0.0.1:{port}/"})
        open_image(page, data_dir / "chest_cta_1.5mm.nii.gz")
        run_fast(page)
        engine = wait_for_engine(work, "chest_cta_1.5mm")
        sessions = session_processes(launcher.pid)
        assert sessions
        launcher.kill()
        launcher.wait(10)
        assert seconds_until_gone([engine], ORPHAN_BOUND_S) <= ORPHAN_BOUND_S, "the engine outlived the launcher"
        assert seconds_until_gone(sessions, LAUNCHER_KILL_BOUND_S) <= LAUNCHER_KILL_BOUND_S
        assert not list(work.glob("*/sessions/*")), "a session's uploads outlived the launcher"
        page.context.close()
    finally:
        launcher.kill()
        for pid in [*sessions, engine]:  # a failed check must not leave them to the next tests
            if pid and process_alive(pid):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------------ caps


def test_parallel_requests_never_start_more_sessions_than_the_cap(home, tmp_path):
    work = tmp_path / "work"
    launcher, port = start_launcher(home, work, "--max-sessions", "1", env={"TOTALSEG_WEB_TOKEN": TOKEN})
    try:
        statuses = racing_requests(port, CAP_RACERS, {"Cookie": f"totalseg_web_token={TOKEN}"})
        assert sorted(statuses) == [302] + [503] * (CAP_RACERS - 1), statuses
        assert len(session_processes(launcher.pid)) == 1
        status, _, text = request(port, headers={"Cookie": f"totalseg_web_token={TOKEN}"})
        assert status == 503 and "--max-sessions" in text
    finally:
        stop_launcher(launcher, work)


# ------------------------------------------------------------------------------------------------ secrets


def test_no_token_secret_or_session_id_on_any_command_line(token_server):
    status, headers, _ = request(token_server["port"], headers={"Cookie": f"totalseg_web_token={TOKEN}"})
    assert status == 302
    sid = headers["Location"].split("/s/")[1].strip("/")
    sessions = session_processes(token_server["process"].pid)
    assert sessions
    for pid in [token_server["process"].pid, *sessions]:
        words = command_line(pid)
        assert not any(TOKEN in word or sid in word for word in words), words
    for pid in sessions:  # nothing any local user can read in ps gets a request past the session's check
        for port in listening_ports(pid):
            for word in ["", *command_line(pid)]:
                assert request(port, headers={PROXY_HEADER: word})[0] == 403, word
    assert request(token_server["port"])[0] == 401  # the token from the environment is required


# ------------------------------------------------------------------------------------------------ uploads


def test_a_refused_upload_leaves_the_open_input_and_the_run_works(browser, server, data_dir):
    page = new_page(browser, server)
    open_image(page, data_dir / "example_ct_sm.nii.gz")
    session_url = page.url.rsplit("/", 1)[0] + "/"
    body = b"\0" * ((MAX_UPLOAD_MB + 1) * 2**20)
    answer = page.request.post(session_url + "upload", multipart={
        "file": {"name": "huge.nii", "mimeType": "application/octet-stream", "buffer": body}}, timeout=120_000)
    assert answer.status == 413 and "limit" in answer.json()["error"]
    assert page.inner_text('[data-testid="input-name"]') == "example_ct_sm.nii.gz"
    run_fast(page)
    wait_for_result(page)
    page.context.close()


# ------------------------------------------------------------------------------------------------ bad requests


def test_a_non_ascii_token_gets_401_with_a_message(token_server):
    for headers, path in (({}, "/?token=%C3%A9"), ({"Cookie": "totalseg_web_token=\u00e9".encode()}, "/"),
                          ({}, "/s/abc/?token=%FF")):
        status, _, text = request(token_server["port"], path, headers=headers)
        assert status == 401 and "token" in text, (path, status, text)


def test_a_nul_byte_in_a_path_gets_a_message(browser, server):
    page = new_page(browser, server)
    page.evaluate("window.trame.trigger('totalseg_open_entry', ['ct_dicom\\u0000/x', 'image'])")
    wait_for_text(page, "error", "text.includes('not a valid path')", timeout=15_000)
    page.context.close()


def test_an_upload_that_is_not_one_file_gets_400_with_a_message(browser, server):
    page = new_page(browser, server)
    upload_url = page.url.rsplit("/", 1)[0] + "/upload"
    empty = "--b0undary--\r\n"
    for body, content_type in (('{"file": "x"}', "application/json"), (empty, "multipart/form-data; boundary=b0undary"),
                               ("", "multipart/form-data")):
        answer = page.request.post(upload_url, data=body, headers={"Content-Type": content_type})
        assert answer.status == 400 and "file" in answer.json()["error"], (content_type, answer.status)
    page.context.close()


# ------------------------------------------------------------------------------------------------ messages


def test_messages_name_files_as_the_user_named_them(browser, server, data_dir, tmp_path):
    page = new_page(browser, server)
    long_name = "n" * 5000 + ".nii.gz"
    page.evaluate(f"window.trame.trigger('totalseg_uploaded', [{{name: '{long_name}'}}])")  # as a script could
    wait_for_text(page, "error", "text !== ''", timeout=15_000)
    assert_no_server_paths(shown_messages(page), server, page)

    page.set_input_files('[data-testid="upload"]', files=[{
        "name": long_name, "mimeType": "application/gzip", "buffer": (data_dir / "example_ct_sm.nii.gz").read_bytes()}])
    wait_for_text(page, "input-name", "text.endsWith('.nii.gz')", timeout=120_000)
    assert_no_server_paths(page.inner_text('[data-testid="input-name"]') + shown_messages(page), server, page)

    not_dicom = tmp_path / "notes.zip"
    with zipfile.ZipFile(not_dicom, "w") as zipped:
        zipped.writestr("notes/readme.txt", "no images here")
    upload(page, not_dicom)
    wait_for_text(page, "error", "text.includes('notes.zip')", timeout=60_000)
    assert_no_server_paths(shown_messages(page), server, page)
    page.context.close()


def test_a_zip_of_damaged_dicom_slices_gets_its_message_at_once(browser, server, data_dir, tmp_path):
    damaged = tmp_path / "series.zip"
    with zipfile.ZipFile(damaged, "w") as zipped:
        for path in sorted((data_dir / "example_ct_dicom").iterdir()):
            zipped.writestr(f"study/{path.name}", path.read_bytes()[:80_000])  # every slice cut short
    page = new_page(browser, server)
    started = time.monotonic()
    upload(page, damaged)
    wait_for_text(page, "error", "text.includes('series.zip')", timeout=60_000)
    assert time.monotonic() - started < DAMAGED_ZIP_S
    assert_no_server_paths(shown_messages(page), server, page)
    page.context.close()


# ------------------------------------------------------------------------------------------------ addresses


def test_the_token_leaves_the_address_once_the_cookie_is_set(browser, token_server):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{token_server['url']}?token={TOKEN}")
    page.wait_for_selector('[data-testid="run"]', timeout=120_000)
    assert "/s/" in page.url and "token" not in page.url
    session_root = page.url.split("index.html")[0]
    page.goto(f"{session_root}?token={TOKEN}")  # a session's address with the token (a link someone shared)
    page.wait_for_selector('[data-testid="run"]', timeout=120_000)
    assert "token" not in page.url and page.url.startswith(session_root)
    context.close()


def test_only_known_host_names_are_answered(token_server):
    port = token_server["port"]
    status, _, text = request(port, headers={"Host": f"attacker.example:{port}"})
    assert status == 400 and "--allowed-host" in text and "attacker.example" in text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "seg.example.org"):
        assert request(port, headers={"Host": host})[0] == 401, host  # past the host check: the token is next
