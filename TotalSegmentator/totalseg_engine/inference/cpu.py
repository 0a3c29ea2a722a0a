"""How many CPU threads a run's numerical work may use: every core, or ``TOTALSEG_CPU_THREADS``.

``totalseg_batch`` runs several workers on one machine and gives each its share of the cores through this
variable; without it every forward pass would start one thread per core in every worker.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

THREADS_VARIABLE = "TOTALSEG_CPU_THREADS"


def cpu_threads() -> int:
    """``TOTALSEG_CPU_THREADS`` when it is a positive number, else the number of cores."""
    text = os.environ.get(THREADS_VARIABLE, "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return os.cpu_count() or 1


def use_cpu_threads(threads: Optional[int]) -> None:
    """Give this process ``threads`` cores for its numerical work (a cohort worker's share of the machine): every
    runtime reads the variable when it loads a model, and torch, if already imported, is told at once."""
    if not threads:
        return
    os.environ[THREADS_VARIABLE] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def engine_process_environment(threads: int) -> dict[str, str]:
    """Environment for a long-lived process that runs the engine on ``threads`` cores, set before it starts
    (glibc reads its variables once).

    Its share of the cores; every thread on glibc's main heap (a Dask worker runs cases in a pool thread, whose
    own arena would not keep the freed blocks that :mod:`.allocator` keeps for reuse); and freed memory kept up
    to :data:`.allocator.KEEP` instead of a few KiB, so that reading and resampling do not fault in fresh pages
    for every array. Python's UTF-8 mode, so that files are read as UTF-8 whatever the node's locale
    (torch.compile's kernel templates fail to load under LANG=C).
    """
    from .allocator import KEEP

    cores = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", THREADS_VARIABLE)}
    return {**cores, "MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": str(KEEP), "PYTHONUTF8": "1"}
