"""Watching real processes from the tests (Linux /proc): is a process or a process group still running, what are
its children, its command line, the ports it listens on?

A zombie counts as gone: it has exited and only waits for a parent (PID 1 here) to reap it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether ``pid`` still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (Linux /proc; empty elsewhere)."""
    return _live_processes(2, pgid)


def group_left_after(pgid: int, timeout: float) -> list[int]:
    """Wait up to ``timeout`` s for a process group to end; the members still running then (empty: all gone)."""
    deadline = time.monotonic() + timeout
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return members


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after "pid (comm)": state, ppid, pgrp, ...; empty when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def parent_of(pid: int) -> int:
    """The parent PID of a process (0 when it is gone)."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else 0


def children_of(pid: int) -> list[int]:
    """Live direct children of a process."""
    return _live_processes(1, pid)


def _live_processes(field: int, value: int) -> list[int]:
    """Live processes whose /proc stat field (1: parent, 2: process group) is ``value``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(int(stat.parent.name))
        if fields and fields[field] == str(value) and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def command_line(pid: int) -> list[str]:
    """A process's argv as ``ps`` shows it to any local user (empty when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def listening_ports(pid: int) -> list[int]:
    """TCP ports a process listens on (Linux /proc: its socket inodes matched against /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def seconds_until_gone(pids: list[int], timeout: float) -> float:
    """Seconds until none of ``pids`` runs any more; ``inf`` when one still runs after ``timeout``."""
    started = time.monotonic()
    while any(process_alive(pid) for pid in pids):
        if time.monotonic() - started > timeout:
            return float("inf")
        time.sleep(0.02)
    return time.monotonic() - started
