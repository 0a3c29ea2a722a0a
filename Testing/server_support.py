"""Starting ``totalseg_server`` (and ``totalseg_web --api``) as programs for the tests and the benchmark, and
looking at what they run: their slot processes, their environment, their work folders."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import requests
from process_support import children_of, command_line, group_left_after, seconds_until_gone

SLOT_MARKER = "totalseg_server.slot_process"
BANNER = re.compile(r"(?:TotalSegmentator server|TotalSegmentator web app): (?:open )?(http://\S+?/)")


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    work: Path
    log_path: Path
    token: Optional[str] = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def headers(self, token: Optional[str] = "default") -> dict:
        token = self.token if token == "default" else token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, token: Optional[str] = "default", **kwargs) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers(token), timeout=60, **kwargs)

    def slots(self, count: int = 1, timeout: float = 120) -> list[int]:
        """The PIDs of the server's slot processes, once ``count`` of them are ready (the info says so)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.get("api/v1/info").json()
            ready = [slot for slot in info["slots"] if slot["state"] != "starting"]
            pids = slot_processes(self.process.pid)
            if len(ready) >= count and len(pids) >= count:
                return pids
            time.sleep(0.2)
        raise TimeoutError(f"the server's slots did not start:\n{self.log()}")


def slot_processes(server_pid: int) -> list[int]:
    return sorted(pid for pid in children_of(server_pid) if SLOT_MARKER in " ".join(command_line(pid)))


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def start_server(weights_home: Path, work: Path, *args: str, env: Optional[dict] = None,
                 module: str = "totalseg_server.cli", token: Optional[str] = None,
                 timeout: float = 120) -> Server:
    """The server as a program on a free port of 127.0.0.1 (``--port 0``: it prints the port it got), its output
    in a log file beside ``work`` (a pipe nobody reads would fill up and stall it)."""
    work.mkdir(parents=True, exist_ok=True)
    log_path = work.parent / f"{work.name}.log"
    environment = {**os.environ, "TOTALSEG_HOME_DIR": str(weights_home), **(env or {})}
    port_args = ["--port", "0"] if module == "totalseg_server.cli" else ["--port", str(_free_port())]
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", module, *port_args, "--work-dir", str(work), *args],
                                   env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = BANNER.search(log_path.read_text(errors="replace"))
        if found:
            return Server(process, found.group(1), work, log_path, token)
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise TimeoutError(f"the server printed no address:\n{log_path.read_text()}")


def stop_server(server: Server, timeout: float = 60) -> str:
    """Stop it as a service manager would (SIGTERM): its slots and files must go with it."""
    slots = slot_processes(server.process.pid)
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=timeout)
    assert group_left_after(server.process.pid, 15) == [], "a process of the server outlived it"
    assert seconds_until_gone(slots, 15) < 15, "a slot outlived its server"
    return server.log()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
