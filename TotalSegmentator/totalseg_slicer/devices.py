"""The device list for the panel, asked of a child Python (the engine's device-list program) and cached.

Importing torch in Slicer's own process would open a CUDA context for the whole session, and a broken torch
(a Windows DLL failing to load) would abort the panel's setup; a child process costs a second or two, once
per session (and once more after torch is installed: call ``query_devices.cache_clear()``). Any failure of the
child (no such Python, timeout, non-zero exit, output that is not the expected JSON) gives auto + CPU and a
log line saying why, never an exception.
"""

from __future__ import annotations

import functools
import logging
import shutil
import sys

from totalseg_engine import AUTO_DEVICE, CPU_DEVICE, DEVICE_LIST_MODULE

from .child_query import ask_child, last_line

FALLBACK = (AUTO_DEVICE, CPU_DEVICE)  # what the child itself answers without torch
DEFAULT_TIMEOUT_S = 60.0  # a cold torch import with CUDA takes several seconds on Windows
log = logging.getLogger(__name__)


def slicer_python() -> str:
    """Slicer's own Python (``PythonSlicer``); in Slicer ``sys.executable`` is the application itself."""
    return shutil.which("PythonSlicer") or sys.executable


def query_devices(python: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[tuple[str, str]]:
    """(label, value) pairs: auto, every CUDA GPU, Apple MPS when available, CPU; from ``python``'s torch.

    In Slicer pass :func:`slicer_python`. The answer is cached per
    ``python``; ``query_devices.cache_clear()`` forgets it (after torch was installed or changed).
    """
    return list(_device_table(str(python), float(timeout_s)))


@functools.cache
def _device_table(python: str, timeout_s: float) -> tuple[tuple[str, str], ...]:
    answer = ask_child(python, DEVICE_LIST_MODULE, (), timeout_s)
    if answer.problem:
        return _fallback(answer.problem)
    try:
        devices = _parse(answer.value)
    except ValueError as err:
        return _fallback(f"{python} -m {DEVICE_LIST_MODULE} printed unexpected output ({err})")
    if answer.stderr.strip():
        log.warning("Device list: %s", last_line(answer.stderr))
    return devices


query_devices.cache_clear = _device_table.cache_clear  # type: ignore[attr-defined]


def _parse(entries: object) -> tuple[tuple[str, str], ...]:
    """The list of {"label", "value"} objects the child printed; ValueError for anything else."""
    if not isinstance(entries, list) or not entries:
        raise ValueError("not a non-empty JSON list")
    devices = []
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("label"), str)
                and isinstance(entry.get("value"), str)):
            raise ValueError(f"entry {entry!r} lacks a label or value")
        devices.append((entry["label"], entry["value"]))
    return tuple(devices)


def _fallback(reason: str) -> tuple[tuple[str, str], ...]:
    log.warning("Listing the GPUs failed, only auto and CPU are offered: %s", reason)
    return FALLBACK
