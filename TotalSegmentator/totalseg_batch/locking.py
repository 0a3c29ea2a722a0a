"""Who may work in an output folder: one rule for whole-cohort runs and ``--shard`` runs, on POSIX and Windows.

Two runs never work on the same case in one folder. Every run holds a lock file of its own in OUTDIR while it
works there (``.totalseg_batch.lock`` for a whole-cohort run, ``.totalseg_batch.shard-I-of-N.lock`` for slice
I/N), and once it holds it, checks that no run holds a lock that overlaps its own: a whole-cohort run overlaps
every other run; slice I/N overlaps the whole-cohort run and the slices of any other N (the slices of one N are
disjoint, and share a folder). Two overlapping runs that start together may both refuse; they never both go on.

The locks are portalocker's (``flock`` on POSIX, ``LockFileEx``/``msvcrt.locking`` on Windows): the system
releases them when the process ends, however it ends, so a killed run never leaves the folder locked.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator, Optional

import portalocker
from totalseg_engine import InvalidOptionError

from .cases import parse_shard

LOCK = ".totalseg_batch.lock"
SHARD_LOCK = ".totalseg_batch.shard-{index}-of-{count}.lock"
_SHARD_LOCK = re.compile(r"\.totalseg_batch\.shard-(\d+)-of-(\d+)\.lock")
RULE = ("runs in one folder never share a case: a whole-cohort run excludes every other run, and --shard runs share "
        "a folder only as slices I/N of the same N")


@contextlib.contextmanager
def exclusive(outdir: Path, shard: Optional[str]) -> Iterator[None]:
    """Hold this run's lock in ``outdir`` (``shard`` "I/N", or None for the whole cohort) while the block runs;
    refuse (:class:`InvalidOptionError`) while another run holds an overlapping one."""
    count = parse_shard(shard)[1] if shard else None
    own = outdir / (SHARD_LOCK.format(index=parse_shard(shard)[0], count=count) if shard else LOCK)
    with _held(own, outdir):
        for other in _overlapping(outdir, count):
            with _held(other, outdir):
                pass  # nobody holds it: free again at once
        yield


def _overlapping(outdir: Path, count: Optional[int]) -> list[Path]:
    """The lock files of the runs that may not work here beside this one."""
    shards = [path for path in outdir.glob(".totalseg_batch.shard-*.lock") if _SHARD_LOCK.fullmatch(path.name)]
    if count is None:
        return sorted(shards)
    return [outdir / LOCK, *sorted(p for p in shards if int(_SHARD_LOCK.fullmatch(p.name).group(2)) != count)]


def _holder(lock: Path) -> str:
    match = _SHARD_LOCK.fullmatch(lock.name)
    return f"a --shard {match.group(1)}/{match.group(2)} run" if match else "a whole-cohort run"


@contextlib.contextmanager
def _held(lock: Path, outdir: Path) -> Iterator[None]:
    handle = lock.open("a")
    try:
        try:
            portalocker.lock(handle, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except portalocker.AlreadyLocked:
            raise InvalidOptionError(f"Another totalseg_batch run ({_holder(lock)}) is writing to {outdir}; {RULE}. "
                                     f"Wait for it to end, or choose another -o.") from None
        except portalocker.LockException as err:  # not held, but not lockable: a file system without locks
            raise InvalidOptionError(f"Cannot lock {lock} ({err}): the file system of {outdir} has no file locks, "
                                     f"which keep two runs from working on one case. Choose an output folder on "
                                     f"one that has them (Lustre: mounted with -o flock).") from None
        try:
            yield
        finally:
            portalocker.unlock(handle)
    finally:
        handle.close()
