"""Keep freed memory in the process while torch runs a network on the CPU (glibc only).

torch frees and reallocates every activation of a forward pass. glibc serves blocks this large with fresh
``mmap`` pages, which the kernel zeroes and faults in again on each allocation: on a 2-core VM that was a third
of the forward pass of nnU-Net's default CT network (2.4 million page faults, 8 s of system time). With the
thresholds raised, the blocks come from the heap and are reused, and the forward pass computes the same values
with the same kernels in 20-25 % less time. The memory is handed back to the system afterwards.

Blocks larger than ``KEEP`` still get their own mapping, returned as soon as they are freed. Kept in the heap,
the largest ones (the 118-class output of a 128³ window, 990 MB; the full-resolution concatenation, 537 MB)
left holes that later blocks of other sizes could not fill: one window's peak grew from 3.6 to 4.9 GiB over two
forward passes, and a whole run reached 5.7 GiB. With them mapped it stays at 3.6-3.8 GiB in the same time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, Optional

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
GLIBC_DEFAULT_THRESHOLD = 128 * 1024
KEEP = 512 << 20  # blocks up to 512 MiB come from the heap (every activation of a 128³ window up to 32 features)


@lru_cache(maxsize=1)
def _glibc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # musl and other C libraries without glibc's tuning calls
        return None


_depth = 0
_depth_lock = threading.Lock()


@contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Inside: large blocks are taken from and returned to the heap. After: glibc's defaults, heap trimmed.

    Nested uses keep the outermost one's settings until it ends, and first hand back what is free, so that
    memory freed by earlier stages (reading, resampling) does not sit under the nested stage's own peak.
    """
    global _depth
    libc = _glibc()
    with _depth_lock:  # totalseg_batch's workers run two cases in two threads: one count for both
        if libc is None or (_depth == 0 and not _keep(libc)):
            libc = None
        elif _depth > 0:  # blocks freed since the outer one began would add to this one's peak: give them back
            libc.malloc_trim(0)
        if libc is not None:
            _depth += 1
    if libc is None:
        yield
        return
    try:
        yield
    finally:
        with _depth_lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
                libc.mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
                libc.mallopt(M_ARENA_MAX, 0)
                libc.malloc_trim(0)


def _keep(libc: ctypes.CDLL) -> bool:
    """Raise the thresholds, and keep worker threads on the main heap: each extra arena would hold freed blocks
    of its own (one run on chest CT peaked 1.2 GiB higher that way). glibc fixes the arena limit when it first
    makes an extra arena, so in a process that already has some this part has no effect."""
    return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP) and libc.mallopt(M_TRIM_THRESHOLD, 2 * KEEP)
                and libc.mallopt(M_ARENA_MAX, 1))
