"""What a worker process keeps between cases, and shares between the cases it runs at the same time.

- :class:`WarmModels`: every model loaded once and kept for the cases that follow.
- Predictions take turns (:data:`PREDICTION_TURN`): a worker may run two cases at once so that one case's
  reading, resampling, postprocessing and writing overlap the other's prediction, but only one prediction uses
  the device (the GPU, or the worker's share of the CPU cores) at a time.
- What a case prints and warns is kept for its own record (:func:`captured`), even with two cases running.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
import warnings
from typing import Any, Iterator

from totalseg_engine import default_runner_factory, ensure_weights, model_dir

PREDICTION_TURN = threading.Lock()


class WarmModels:
    """The models a worker process has loaded, kept for every later case (keyed by model, device, runtime)."""

    def __init__(self) -> None:
        self.runners: dict[tuple, Any] = {}
        self.loaded = 0  # models loaded so far: a case that loads none ran on warm models
        self._loading = threading.Lock()

    def factory(self, device: str, runtime: str, download: bool):
        """A pipeline runner factory that loads each model once per process, fetching missing weights first."""
        base = default_runner_factory(device, runtime)

        def make(spec, step: float):
            key = (spec.dataset_id, spec.folder, spec.configuration, spec.folds, step, device, runtime,
                   str(model_dir(spec)))
            with self._loading:  # two cases starting together load a model once
                if key not in self.runners:
                    ensure_weights([spec], download=download)
                    self.runners[key] = TakingTurns(base(spec, step))
                    self.loaded += 1
            return self.runners[key]

        make.device = getattr(base, "device", device)  # where a model that does not fit runs again: on the CPU,
        make.for_cpu = lambda: self.factory("cpu", runtime, download)  # kept warm like the others
        return make


class TakingTurns:
    """A runner whose predictions wait for the worker's other case to finish predicting."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def predict(self, *args, **kwargs):
        waited = time.monotonic()
        with PREDICTION_TURN:
            case = _current()
            case.waited += time.monotonic() - waited
            began = time.time()
            try:
                return self.runner.predict(*args, **kwargs)
            finally:
                case.turns.append((round(began, 3), round(time.time(), 3)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)


class CaseOutput:
    """What one case's thread printed and warned, and how long it waited for its turn to predict."""

    def __init__(self) -> None:
        self.printed = io.StringIO()
        self.warnings: list[str] = []
        self.waited = 0.0
        self.turns: list[tuple[float, float]] = []  # when it predicted (seconds since the epoch)

    def messages(self) -> list[str]:
        lines = [line for line in self.printed.getvalue().splitlines() if line.strip()]
        return lines + self.warnings


_cases: dict[int, CaseOutput] = {}
_NOBODY = CaseOutput()  # where a thread that runs no case reports its waiting (never read)


def _current() -> CaseOutput:
    return _cases.get(threading.get_ident(), _NOBODY)


class _RoutedStream(io.TextIOBase):
    """``sys.stderr`` of a worker: a case's thread writes into that case's record, other threads to the log."""

    def __init__(self, fallback) -> None:
        self.fallback = fallback

    def write(self, text: str) -> int:
        case = _cases.get(threading.get_ident())
        return case.printed.write(text) if case is not None else self.fallback.write(text)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self.fallback.flush()


_install_lock = threading.Lock()
_original_showwarning = warnings.showwarning


def _install() -> None:
    """Route stderr and warnings by thread, once per process (a worker process is ours alone)."""
    with _install_lock:
        if isinstance(sys.stderr, _RoutedStream):
            return
        sys.stderr = _RoutedStream(sys.stderr)
        warnings.showwarning = _show_warning
        warnings.filterwarnings("always", category=UserWarning)  # every case's warnings, not only the first's


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    case = _cases.get(threading.get_ident())
    if case is None:
        _original_showwarning(message, category, filename, lineno, file, line)
    else:
        case.warnings.append(str(message))


@contextlib.contextmanager
def captured() -> Iterator[CaseOutput]:
    """Keep what this thread prints to stderr and warns for the case it runs."""
    _install()
    output = CaseOutput()
    _cases[threading.get_ident()] = output
    try:
        yield output
    finally:
        _cases.pop(threading.get_ident(), None)
