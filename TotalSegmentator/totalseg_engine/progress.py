"""Progress events shared by the engine, the CLI and the Slicer panel.

The engine reports through a callback taking :class:`ProgressEvent`. The CLI renders events for a
terminal or, with ``--progress-json``, writes one JSON object per line that the panel parses back
with :func:`parse_event_line`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, TextIO

JSON_PREFIX = "TOTALSEG_PROGRESS "


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a run.

    ``stage`` is a short machine name (read, crop, resample, predict, merge, postprocess, write,
    download, statistics, done); ``model``/``of`` count models within the run; ``fraction`` is the
    completed share of the current stage (0..1) or None when unknown.
    """

    stage: str
    message: str = ""
    fraction: Optional[float] = None
    model: Optional[int] = None
    of: Optional[int] = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True)


ProgressCallback = Callable[[ProgressEvent], None]


def ignore_progress(event: ProgressEvent) -> None:
    """Default callback for API calls that do not care about progress."""


def parse_event_line(line: str) -> Optional[ProgressEvent]:
    """Return the event encoded on a ``--progress-json`` output line, or None for other lines."""
    line = line.strip()
    if line.startswith(JSON_PREFIX):
        line = line[len(JSON_PREFIX):]
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or "stage" not in data:
        return None
    known = {k: data[k] for k in ("stage", "message", "fraction", "model", "of") if k in data}
    return ProgressEvent(**known)


class JsonLinesReporter:
    """Writes each event as one JSON line (flushed) for a parent process to read."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def __call__(self, event: ProgressEvent) -> None:
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()


class TerminalReporter:
    """Human progress display: one line per stage, an updating bar for fractions."""

    def __init__(self, stream: TextIO = sys.stderr, min_interval_s: float = 0.2) -> None:
        self.stream = stream
        self.min_interval_s = min_interval_s
        self._last_key: tuple = ()
        self._last_draw = 0.0
        self._bar_open = False
        self._start = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        key = (event.stage, event.model, event.message)
        elapsed = time.monotonic() - self._start
        prefix = f"[{elapsed:6.1f}s] "
        model = f" (model {event.model}/{event.of})" if event.model and event.of else ""
        if event.fraction is None or key != self._last_key:
            self._close_bar()
            self.stream.write(f"{prefix}{event.message or event.stage}{model}\n")
            self._last_key = key
        if event.fraction is not None and self._due(event.fraction):
            width = 30
            filled = int(round(width * event.fraction))
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r    [{bar}] {100 * event.fraction:5.1f}%")
            self._bar_open = True
            if event.fraction >= 1.0:
                self._close_bar()
        self.stream.flush()

    def _due(self, fraction: float) -> bool:
        now = time.monotonic()
        if fraction >= 1.0 or now - self._last_draw >= self.min_interval_s:
            self._last_draw = now
            return True
        return False

    def _close_bar(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
