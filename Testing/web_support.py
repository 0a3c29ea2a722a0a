"""Starting ``totalseg_web`` and Debian's Chromium the same way in the browser tests and in the benchmark."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
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


def start_launcher(weights_home: Path, work: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """``totalseg_web`` on a free port of 127.0.0.1, in its own process group, once it listens.

    Its output goes to ``log_file(work)``, not a pipe: a pipe nobody reads until the end fills up and stalls it.
    """
    port = free_port()
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(weights_home)}
    with open(log_file(work), "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "totalseg_web.launcher", "--port", str(port),
                                    "--work-dir", str(work), *args], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _wait_for_port(port, process)
    return process, port
