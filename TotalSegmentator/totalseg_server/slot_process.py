"""One warm engine slot: ``python -m totalseg_server.slot_process``, a long-lived child of the server.

It imports the engine and torch once, then runs one job at a time as the server sends them, keeping every model
it loads (``totalseg_batch``'s :class:`~totalseg_batch.warm.WarmModels`), so a second job pays no start, import or
model load. Its device is fixed by its environment (``CUDA_VISIBLE_DEVICES``: the one GPU it may see, or none)
and the device its jobs' requests name, both set by the server.

The protocol is JSON lines. Standard input: one job per line (``key``, ``input``, ``output``, ``statistics``,
``request``: paths chosen by the server, the request as :meth:`SegmentationRequest.to_json`). Standard output,
which nothing else may write to (``sys.stdout`` and file descriptor 1 are pointed at stderr at start, so the
engine's and the libraries' prints end up in the server's log): ``ready`` once, then per job ``progress`` events
and one ``done`` (with the number of models it had to load) or ``failed`` (with the engine's message). The
server cancels a job by killing this process's whole group and starting a fresh slot.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from typing import Any, TextIO

from totalseg_engine import (
    SegmentationRequest,
    TotalSegmentatorError,
    reuse_freed_memory,
    segment_to_files,
    switched_task,
)

READY, PROGRESS, DONE, FAILED = "ready", "progress", "done", "failed"


class Channel:
    """The protocol's output: a duplicate of the original stdout, one flushed JSON object per line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def send(self, kind: str, **values: Any) -> None:
        self.stream.write(json.dumps({"type": kind, **values}) + "\n")
        self.stream.flush()


def take_stdout() -> Channel:
    """Keep the real stdout for the protocol and send everything else written there to stderr."""
    channel = Channel(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def run_job(order: dict, warm: Any, channel: Channel) -> None:
    """Segment one job's input into its folder, reporting progress; never raises."""
    key = order["key"]
    loaded_before = warm.loaded
    started = time.monotonic()
    try:
        request = switched_task(order["input"], SegmentationRequest.from_json(order["request"]))
        factory = warm.factory(request.device, request.runtime, request.download)
        with reuse_freed_memory():
            segment_to_files(order["input"], order["output"], request, statistics_path=order.get("statistics"),
                             runner_factory=factory,
                             progress=lambda event: channel.send(PROGRESS, key=key, event=asdict(event)))
    except TotalSegmentatorError as err:
        channel.send(FAILED, key=key, error=str(err))
    except MemoryError:
        channel.send(FAILED, key=key, error="The server ran out of memory for this image. Try fast mode, or a "
                                            "smaller region (roi_subset).")
    except Exception as err:  # the job fails with a message; the slot stays for the next one
        traceback.print_exc()
        channel.send(FAILED, key=key, error=f"The engine failed: {type(err).__name__}: {err}")
    else:
        channel.send(DONE, key=key, loaded=warm.loaded - loaded_before, seconds=round(time.monotonic() - started, 3))


def main() -> int:
    channel = take_stdout()
    from totalseg_batch.warm import WarmModels  # the engine's pipeline with it: imported before the first job

    with contextlib.suppress(ImportError):
        import torch  # noqa: F401  (imported now, once, so that no job pays for it)
    warm = WarmModels()
    channel.send(READY, pid=os.getpid(), device=os.environ.get("TOTALSEG_SLOT_DEVICE", ""),
                 cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    for line in sys.stdin:
        if line.strip():
            run_job(json.loads(line), warm, channel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
