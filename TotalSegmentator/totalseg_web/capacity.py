"""Caps on what a server holds at once (browser sessions now; remote jobs later), counted so that they hold.

Checking a count, then awaiting the start of a process, then counting it lets every request that arrives
meanwhile pass the same check: four parallel requests against a cap of one started three sessions. Here taking a
place is one call under a lock, made before anything is awaited; the place is given back exactly once, when what
held it has ended. A lock rather than the event loop alone, so threads (an API server's workers) may share a cap.
"""

from __future__ import annotations

import threading
from typing import Optional


class Capacity:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"A capacity needs at least one place, got {limit}.")
        self.limit = limit
        self._lock = threading.Lock()
        self._in_use = 0

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    def take(self) -> Optional[Place]:
        """A place, or None when all are taken (the caller refuses the request then)."""
        with self._lock:
            if self._in_use >= self.limit:
                return None
            self._in_use += 1
        return Place(self)

    def _give_back(self) -> None:
        with self._lock:
            self._in_use -= 1


class Place:
    """One taken place; ``release()`` gives it back, once however often it is called."""

    def __init__(self, capacity: Capacity) -> None:
        self._capacity = capacity
        self._held = True
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._capacity._give_back()
