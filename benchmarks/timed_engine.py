"""Our command line with every network forward pass timed, so one run gives both its wall time and its overhead.

    python benchmarks/timed_engine.py -i ct.nii.gz -o seg.nii.gz --fast      # the options of ``TotalSegmentator``

Runs exactly what ``python -m totalseg_engine`` runs, in this process; the only addition is a clock around
each forward call (with a device synchronisation on a GPU). At exit it prints one line on stderr,
``FORWARD_SECONDS <seconds> <calls>``, which the benchmarks read back.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TotalSegmentator"))

MARKER = "FORWARD_SECONDS"


class ForwardClock:
    """Total seconds and calls of the forward passes of every model a runner factory makes."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, call: Callable, sync: Callable[[], None] = lambda: None) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = call(*args, **kwargs)
            sync()
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return result
        return timed

    def factory(self, base):
        """``base`` (a pipeline runner factory) with this clock around each model's forward passes."""
        from totalseg_engine.inference.prediction import SlidingWindowRunner

        def make(spec, step):
            runner = base(spec, step)
            if isinstance(runner, SlidingWindowRunner):
                runner._forwards = [self.wrap(f) for f in runner._forwards]
            else:
                import torch

                network = runner._predictor.network
                sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
                network.forward = self.wrap(network.forward, sync)
            return runner

        return make


def parse_forward(stderr: str) -> tuple[float, int]:
    """(seconds, calls) from the line this script prints at exit."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(MARKER):
            _, seconds, calls = line.split()
            return float(seconds), int(calls)
    raise ValueError(f"no {MARKER} line in the engine's output")


def main() -> None:
    from totalseg_engine.cli import main as cli
    from totalseg_engine.core import pipeline

    clock = ForwardClock()
    plain = pipeline.default_runner_factory
    pipeline.default_runner_factory = lambda *a, **k: clock.factory(plain(*a, **k))
    try:
        code = cli.main(sys.argv[1:])
    finally:
        print(f"{MARKER} {clock.seconds:.3f} {clock.calls}", file=sys.stderr, flush=True)
    cli.end_process(code)  # ends as the program does


if __name__ == "__main__":
    main()
