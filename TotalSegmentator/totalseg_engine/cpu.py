"""How many CPU threads a run's numerical work may use: every core, or ``TOTALSEG_CPU_THREADS``.

``totalseg_batch`` runs several workers on one machine and gives each its share of the cores through this
variable; without it every forward pass would start one thread per core in every worker.
"""

from __future__ import annotations

import os

THREADS_VARIABLE = "TOTALSEG_CPU_THREADS"


def cpu_threads() -> int:
    """``TOTALSEG_CPU_THREADS`` when it is a positive number, else the number of cores."""
    text = os.environ.get(THREADS_VARIABLE, "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return os.cpu_count() or 1
