"""Running a cohort: which cases run, on what, and what is recorded.

Cases run on a Dask cluster (a local one sized to the machine, or any scheduler given by address), or, for
``--shard``, one after another in this process. Dask reschedules a case whose worker died on another
worker, up to ``max_attempts``; the case's records come from :mod:`.worker` wherever it ran.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from totalseg_engine import engine_process_environment

from . import manifest as batch_manifest
from . import worker as batch_worker
from .cases import Case
from .worker import CaseRequest

RecordCallback = Callable[[dict], None]
DEFAULT_MAX_ATTEMPTS = 3
MEMORY_PER_CPU_WORKER_GB = 8  # a large CT's peak in one worker (README, Performance), with room to spare
CORES_PER_CPU_WORKER = 4  # torch's forward passes scale to about this many cores per process
CASES_PER_GPU_WORKER = 2  # the GPU predicts one case while the CPU reads and writes the other
CASES_PER_CPU_WORKER = 1  # on a CPU the prediction already uses the worker's cores


@dataclass
class ClusterSpec:
    """Where cases run: an existing scheduler's address, or a local cluster of ``workers`` processes."""

    scheduler: Optional[str] = None
    workers: Optional[int] = None
    threads_per_worker: Optional[int] = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    gpu_count: int = field(default=0)
    cases_per_worker: int = 1  # cases a local worker runs at once (their predictions take turns)
    on_start: Callable[[str], None] = lambda message: None  # told the dashboard link and the workers


def local_layout(workers: Optional[int], threads: Optional[int], gpus: int) -> tuple[int, int]:
    """(workers, torch threads per worker) for this machine: one worker per GPU; on a CPU, workers of about
    four cores each, as many as memory allows, the cores split between them."""
    cores = os.cpu_count() or 1
    if workers is None:
        if gpus:
            workers = gpus
        else:
            memory_gb = _memory_bytes() / 2**30
            workers = max(1, min(cores // CORES_PER_CPU_WORKER, int(memory_gb // MEMORY_PER_CPU_WORKER_GB)))
    return workers, threads or max(1, cores // workers)


def _memory_bytes() -> int:
    try:
        import psutil

        return psutil.virtual_memory().total
    except ImportError:
        return MEMORY_PER_CPU_WORKER_GB * 2**30


def run_in_process(cases: Sequence[Case], request: CaseRequest, on_record: RecordCallback,
                   cases_at_once: int = 1) -> None:
    """Every case here, on this process's warm models (``--shard``): ``cases_at_once`` at a time, in order."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(cases_at_once, thread_name_prefix="totalseg-case")
    try:
        for record in pool.map(lambda case: batch_worker.run_case(case, request), cases):
            on_record(record)
    finally:  # Ctrl+C: the cases not started are dropped, those running finish (nothing is left half-done)
        pool.shutdown(wait=True, cancel_futures=True)


def run_on_dask(cases: Sequence[Case], request: CaseRequest, on_record: RecordCallback, spec: ClusterSpec) -> None:
    """Every case on a Dask cluster; a worker is handed one case more than it runs at once, so a cohort of
    any size is submitted as the cluster can take it (and cancelled cleanly)."""
    from distributed import as_completed

    with _client(spec) as client:
        slots = sum(w.get("nthreads", 1) + 1 for w in client.scheduler_info().get("workers", {}).values()) or 2
        queue = list(reversed(cases))
        running: dict = {}
        completed = as_completed()

        def submit() -> None:
            case = queue.pop()
            future = client.submit(batch_worker.run_case, case, request, pure=False, retries=0,
                                   key=f"totalseg-case-{case.case_id}-{uuid.uuid4().hex[:8]}")
            running[future] = case
            completed.add(future)

        for _ in range(min(len(queue), slots)):
            submit()
        try:
            for future in completed:
                case = running.pop(future)
                on_record(_record_of(future, case, request, spec.max_attempts))
                if queue:
                    submit()
        except BaseException:  # Ctrl+C or a lost scheduler: stop handing out work, leave nothing running
            client.cancel(list(running))
            raise


def _record_of(future, case: Case, request: CaseRequest, max_attempts: int) -> dict:
    """The worker's record, or one written here when no worker could write it (every attempt's worker died)."""
    try:
        return future.result()
    except Exception as err:  # KilledWorker, or a worker that cannot import the engine
        outdir = Path(request.outdir)
        shutil.rmtree(outdir / batch_worker.STAGING / case.case_id, ignore_errors=True)
        killed = type(err).__name__ == "KilledWorker"
        message = (f"its worker died {max_attempts} times (out of memory, or the node was lost); "
                   f"the case was given up. Give the workers more memory, or run it alone with the "
                   f"single-case command." if killed else f"{type(err).__name__}: {err}")
        record = {"case_id": case.case_id, "input": case.source, "options": request.request.to_json(),
                  "options_key": request.options_key, "status": "failed", "error": message,
                  "attempts": max_attempts if killed else 1, "finished": batch_worker.utc_now()}
        batch_manifest.Manifest(outdir).append(record, f"driver-{batch_worker.writer_name()}")
        return record


@contextlib.contextmanager
def _client(spec: ClusterSpec) -> Iterator:
    """A client of the given scheduler, or of a local cluster that is shut down (workers and all) on exit."""
    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"distributed.scheduler.allowed-failures": max(0, spec.max_attempts - 1)})
    if spec.scheduler:
        given = Path(spec.scheduler).expanduser()
        where = {"scheduler_file": str(given)} if given.is_file() else {"address": spec.scheduler}
        with Client(**where, timeout="30s") as client:
            spec.on_start(f"Dask scheduler {spec.scheduler}, {len(client.scheduler_info()['workers'])} workers"
                          + _dashboard(client))
            yield client
        return
    workers, threads = local_layout(spec.workers, spec.threads_per_worker, spec.gpu_count)
    # set by the nanny before it starts the worker process: glibc reads its variables once, at start
    spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **engine_process_environment(threads)}
    dask.config.set({"distributed.worker.profile.enabled": False, "distributed.nanny.pre-spawn-environ": spawn})
    with LocalCluster(n_workers=workers, threads_per_worker=spec.cases_per_worker, processes=True,
                      dashboard_address=":0" if find_spec("bokeh") else None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        spec.on_start(f"Local Dask cluster: {workers} worker(s), {threads} CPU threads and {spec.cases_per_worker} "
                      f"case(s) at a time each" + _dashboard(client))
        yield client


def _dashboard(client) -> str:
    return f"; dashboard {client.dashboard_link}" if find_spec("bokeh") else ""
