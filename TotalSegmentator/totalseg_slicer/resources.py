"""Will the panel's run fit? The engine's estimate against the free memory, asked before Apply starts a run.

The engine answers in a child process (``python -m totalseg_engine.inference.resources``): only torch knows a
GPU's free memory, and Slicer never imports torch itself. The volume's size and spacing come from the scene (no
export needed). A question that cannot be answered lets the run go ahead (the engine still warns in its log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from totalseg_engine import RESOURCE_CHECK_MODULE, SegmentationRequest

from .child_query import ask_child

DEFAULT_TIMEOUT_S = 60.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shortfall:
    """A run that will probably not fit: the engine's message, and what would help ("fast", "force_split")."""

    message: str
    advice: tuple[str, ...]


def check_resources(python: str, dimensions: tuple[int, int, int], spacing: tuple[float, float, float],
                    request: SegmentationRequest, timeout_s: float = DEFAULT_TIMEOUT_S) -> Optional[Shortfall]:
    """None when the run fits (or the question could not be answered), else what is short and what helps."""
    args = ["--shape", *map(str, dimensions), "--spacing", *map(str, spacing), *request.to_argv()]
    answer = ask_child(python, RESOURCE_CHECK_MODULE, args, timeout_s)
    value = answer.value
    if answer.problem or not isinstance(value, dict) or not isinstance(value.get("fits"), bool):
        log.warning("The memory check before the run gave no answer (the run goes ahead): %s",
                    answer.problem or f"unexpected answer {value!r}")
        return None
    if value["fits"]:
        return None
    return Shortfall(str(value.get("message", "")), tuple(str(a) for a in value.get("advice", ())))
