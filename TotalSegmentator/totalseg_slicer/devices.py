"""The device list for the panel, asked of a child Python (the engine's device-list program) and cached.

Importing torch in Slicer's own process would open a CUDA context for the whole session, and a broken torch
(a Windows DLL failing to load) would abort the panel's setup; a child process costs a second or two, once
per session (and once more after torch is installed: call ``query_devices.cache_clear()``). Any failure of the
child (no such Python, timeout, non-zero exit, output that is not the expected JSON) gives auto + CPU and a
log line saying why, never an exception.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sys

from totalseg_engine import AUTO_DEVICE, CPU_DEVICE, DEVICE_LIST_MODULE, EngineProcess, LogMessage

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
    # The engine's child-process runner (standard library only: usable before any install) puts the engine on
    # the child's PYTHONPATH and, on timeout, stops the whole process tree: PythonSlicer may be a launcher whose
    # own child would otherwise keep running with the pipes open.
    command = f"{python} -m {DEVICE_LIST_MODULE}"
    process = EngineProcess([python, "-m", DEVICE_LIST_MODULE])
    try:
        process.start()
    except OSError as err:
        return _fallback(f"{command} could not be started: {err}")
    if not process.wait(timeout_s).finished:
        process.cancel()
        return _fallback(f"{command} did not answer within {timeout_s:g} s")
    lines = [m for m in process.poll() if isinstance(m, LogMessage)]
    stdout = "\n".join(m.text for m in lines if m.stream == "stdout")
    stderr = "\n".join(m.text for m in lines if m.stream == "stderr")
    if process.returncode != 0:
        return _fallback(f"{command} exited with status {process.returncode}: {_last_line(stderr)}")
    try:
        devices = _parse(stdout)
    except ValueError as err:
        return _fallback(f"{command} printed unexpected output ({err}): {_last_line(stdout)}")
    if stderr.strip():
        log.info("Device list: %s", _last_line(stderr))
    return devices


query_devices.cache_clear = _device_table.cache_clear  # type: ignore[attr-defined]


def _parse(text: str) -> tuple[tuple[str, str], ...]:
    """The JSON list of {"label", "value"} objects on the child's last stdout line (a startup script may print
    before it); ValueError for anything else."""
    lines = [line for line in text.splitlines() if line.strip()]
    entries = json.loads(lines[-1] if lines else "")  # json.JSONDecodeError is a ValueError
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


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(no output)"
