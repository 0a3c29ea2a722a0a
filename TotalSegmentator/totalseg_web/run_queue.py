"""Runs from every browser session take turns: first come, first served, ``slots`` at a time.

Each session is its own process, so the queue lives in a folder they share: a ticket is a file named with a
number drawn under an exclusive lock, and a ticket may run once fewer than ``slots`` live tickets are ahead of
it. Drawing and counting happen under the same lock, so two sessions can never both see themselves first.
A ticket whose process died (killed, crashed) is dropped by whoever counts next, so a dead session never holds
the GPU; but not while the engine it started still runs: a ticket records its engine's process group, and counts
until that group is gone, so the next run never starts beside an orphan. The lock is portalocker's (``flock`` on
POSIX, ``LockFileEx`` / ``msvcrt.locking`` on Windows); process groups are POSIX only, like the rest of the server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import portalocker
from totalseg_engine import kill_process_group, process_group_alive

LOCK_NAME = "queue.lock"
COUNTER_NAME = "counter"
SUFFIX = ".ticket"


class RunQueue:
    def __init__(self, folder: os.PathLike | str, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"A run queue needs at least one slot, got {slots}.")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.slots = slots

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / LOCK_NAME, "a+") as lock:
            portalocker.lock(lock, portalocker.LOCK_EX)
            try:
                yield
            finally:
                portalocker.unlock(lock)

    def join(self, owner: str) -> Ticket:
        """A new ticket at the end of the queue, held by this process."""
        with self._locked():
            counter = self.folder / COUNTER_NAME
            number = int(counter.read_text() or 0) + 1 if counter.exists() else 1
            counter.write_text(str(number))
            path = self.folder / f"{number:012d}-{os.getpid()}-{owner}{SUFFIX}"
            path.write_text("")
        return Ticket(self, path)

    def _live_tickets(self) -> list[Path]:
        """Tickets in order, after removing those whose process and engine are gone. Call under the lock."""
        live = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            if _alive(_owner_pid(path)) or _engine_alive(path):
                live.append(path)
            else:
                path.unlink(missing_ok=True)
        return live

    def waiting_ahead(self, ticket: Path) -> int:
        """How many tickets must finish before this one may run (0: it may run now)."""
        with self._locked():
            live = self._live_tickets()
        if ticket not in live:
            raise RuntimeError("This ticket has left the queue.")
        return max(0, live.index(ticket) - self.slots + 1)

    def drop_owner(self, owner: str) -> None:
        """Remove an ended session's tickets (the launcher calls it: a reused PID must not keep them alive).

        An engine the session left running is killed; its ticket stays, without an owner process, until the kernel
        has ended it (the next count drops it then), so its turn is not given away while it still runs.
        """
        with self._locked():
            for path in self.folder.glob(f"*-{owner}{SUFFIX}"):
                engine = _engine(path)
                if engine and process_group_alive(engine):
                    kill_process_group(engine)
                    number, _pid, rest = path.name.split("-", 2)
                    path.rename(path.with_name(f"{number}-0-{rest}"))
                else:
                    path.unlink(missing_ok=True)

    def length(self) -> int:
        with self._locked():
            return len(self._live_tickets())


class Ticket:
    """A place in the queue; ``ahead()`` is 0 when the run may start; ``leave()`` when done or cancelled."""

    def __init__(self, queue: RunQueue, path: Path) -> None:
        self.queue = queue
        self.path = path

    def ahead(self) -> int:
        return self.queue.waiting_ahead(self.path)

    def engine_started(self, pgid: int) -> None:
        """Record the engine's process group: the turn is not given away while it runs, even if this process dies."""
        self.path.write_text(str(pgid))

    def leave(self) -> None:
        self.path.unlink(missing_ok=True)


def _owner_pid(path: Path) -> int:
    """The PID in a ticket's name (0: its session has ended, only its engine may still run)."""
    return int(path.name.split("-")[1])


def _engine(path: Path) -> Optional[int]:
    try:
        text = path.read_text()
    except OSError:
        return None
    return int(text) if text.strip().isdigit() else None


def _engine_alive(path: Path) -> bool:
    engine = _engine(path)
    return engine is not None and process_group_alive(engine)


def _alive(pid: int) -> bool:
    if pid <= 0:  # os.kill(0, ...) would ask about this process's own group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
