"""Starting ``totalseg_web`` and Debian's Chromium the same way in the browser tests and in the benchmark, and
the browser tests' common steps (a new page, an upload, a run, the engine processes of a run)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from process_support import group_left_after

CHROMIUM = "/usr/bin/chromium"
MAX_UPLOAD_MB = 20  # the shared test server's --max-upload-mb
RUN_TIMEOUT_MS = 300_000
# Headless, and no calls home: this machine's closed network refuses them (many at a time otherwise).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch_chromium(playwright):
    """Debian's Chromium through Playwright (Playwright's own browser download does not work here)."""
    assert Path(CHROMIUM).exists(), "Debian's chromium package is needed (apt-get install chromium)"
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"totalseg_web exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError("totalseg_web did not start listening")


def log_file(work: Path) -> Path:
    """Where a launcher's output (its sessions' included) goes: beside its work folder, which must end up empty."""
    return work.parent / f"{work.name}-launcher.log"


def start_launcher(weights_home: Path, work: Path, *args: str,
                   env: Optional[dict[str, str]] = None) -> tuple[subprocess.Popen, int]:
    """``totalseg_web`` on a free port of 127.0.0.1, in its own process group, once it listens; ``env`` is added to
    this process's environment.

    Its output goes to ``log_file(work)``, not a pipe: a pipe nobody reads until the end fills up and stalls it.
    """
    port = free_port()
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(weights_home), **(env or {})}
    with open(log_file(work), "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "totalseg_web.launcher", "--port", str(port),
                                    "--work-dir", str(work), *args], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _wait_for_port(port, process)
    return process, port


def stop_launcher(process: subprocess.Popen, work: Path) -> str:
    """Stop as a service manager would (SIGTERM); every session process and engine run must go with it."""
    process.terminate()
    process.wait(timeout=60)
    assert group_left_after(process.pid, 15) == [], "a process of the web app outlived the launcher"
    return log_file(work).read_text()


def new_page(browser, server: dict):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.goto(server["url"])
    page.wait_for_selector('[data-testid="run"]', timeout=120_000)
    return page


def upload(page, path: Path) -> None:
    page.set_input_files('[data-testid="upload"]', str(path))


def open_image(page, path: Path) -> None:
    upload(page, path)
    page.wait_for_selector(f'[data-testid="input-name"]:has-text("{path.name}")', timeout=120_000)


def choose(page, testid: str, option: str) -> None:
    page.click(f'[data-testid="{testid}"]')
    page.click(f'.v-overlay--active .v-list-item:has-text("{option}")')


def wait_for_text(page, testid: str, condition: str, timeout: float = 60_000) -> None:
    """Wait until ``condition`` (JavaScript over ``text``) holds for an element's text; absent counts as ''.

    The element may not exist yet (Vue renders it on the next state update): a plain querySelector would throw
    and end the wait at once.
    """
    page.wait_for_function(
        f"(() => {{ const text = document.querySelector('[data-testid=\"{testid}\"]')?.innerText ?? ''; "
        f"return {condition}; }})()", timeout=timeout)


def run_fast(page) -> None:
    choose(page, "speed", "fast")
    page.click('[data-testid="run"]')


def engine_processes(*markers: str) -> list[int]:
    """PIDs of engine runs whose command line mentions every marker (a server's work folder, a session's folder,
    an input's name). Give the work folder: other test runs on this machine run engines on the same inputs."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "totalseg_engine" in cmdline and "-i" in cmdline and all(m in cmdline for m in markers):
                found.append(int(entry.name))
    return found
