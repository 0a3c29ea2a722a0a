"""Running a cohort: which cases run, on what, and what is recorded.

Cases run on a Dask cluster (a local one sized to the machine, or any scheduler given by address), or, for
``--shard``, one after another in this process. Dask reschedules a case whose worker died on another
worker, up to ``max_attempts``; the case's records come from :mod:`.worker` wherever it ran.

A case's result is final once it is recorded: its task is released at once, so that losing the worker that holds
the result does not make Dask compute it again (and a task computed again anyway returns the record it has). A run
stops before its last case (:class:`Stop`) when no worker has been connected for ``no_worker_timeout`` seconds
(saying so while it waits), or when a case finds no room for its outputs; the cases it did not run are recorded
``not_run``, and a re-run runs them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue as queues
import shutil
import threading
import time
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
DEFAULT_NO_WORKER_TIMEOUT = 600.0  # seconds without any worker before a run stops (0: wait for ever)
POLL_SECONDS = 1.0  # how often the driver asks the scheduler for its workers while it waits for cases
NOTICE_EVERY_SECONDS = 60.0  # how often it says again that no worker is connected
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
    no_worker_timeout: float = DEFAULT_NO_WORKER_TIMEOUT  # stop after this long without workers (0: never)
    on_start: Callable[[str], None] = lambda message: None  # told the dashboard link and the workers
    on_notice: Callable[[str], None] = lambda message: None  # told while no worker is connected


@dataclass(frozen=True)
class Stop:
    """Why a run stopped before its last case (``batch_worker.NO_WORKERS`` or ``NO_SPACE``), in words."""

    reason: str
    message: str


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
                   cases_at_once: int = 1) -> Optional[Stop]:
    """Every case here, on this process's warm models (``--shard``): ``cases_at_once`` at a time, in order; after a
    case that found no room, the rest are recorded not run."""
    from concurrent.futures import ThreadPoolExecutor

    stops: list[Stop] = []
    lock = threading.Lock()

    def one(case: Case) -> dict:
        if stops:
            return batch_worker.not_run(case, request, f"not run: {stops[0].message}", stops[0].reason,
                                        batch_worker.writer_name())
        record = batch_worker.run_case(case, request)
        with lock:
            if record.get("stop") == batch_worker.NO_SPACE and not stops:
                stops.append(Stop(batch_worker.NO_SPACE, record["error"]))
        return record

    pool = ThreadPoolExecutor(cases_at_once, thread_name_prefix="totalseg-case")
    try:
        for record in pool.map(one, cases):
            on_record(record)
    finally:  # Ctrl+C: the cases not started are dropped, those running finish (nothing is left half-done)
        pool.shutdown(wait=True, cancel_futures=True)
    return stops[0] if stops else None


def run_on_dask(cases: Sequence[Case], request: CaseRequest, on_record: RecordCallback,
                spec: ClusterSpec) -> Optional[Stop]:
    """Every case on a Dask cluster; a worker is handed one case more than it runs at once, so a cohort of
    any size is submitted as the cluster can take it (and cancelled cleanly)."""
    dispatch = None
    try:
        with _client(spec) as client:
            dispatch = _Dispatch(client, cases, request, on_record, spec)
            return dispatch.run()
    except BaseException:  # Ctrl+C: a local cluster's workers end with it, leaving their cases' attempts behind
        if dispatch is not None and spec.scheduler is None:  # (a scheduler's workers may still run theirs)
            for case in dispatch.running.values():
                shutil.rmtree(Path(request.outdir) / batch_worker.STAGING / case.case_id, ignore_errors=True)
        raise


class _Dispatch:
    """Hands the cases to the cluster as it can take them, records each as it ends, and stops when told to."""

    def __init__(self, client, cases: Sequence[Case], request: CaseRequest, on_record: RecordCallback,
                 spec: ClusterSpec) -> None:
        self.client, self.request, self.on_record, self.spec = client, request, on_record, spec
        self.queue = list(reversed(cases))
        self.running: dict = {}  # future -> case
        self.ended: queues.Queue = queues.Queue()  # futures as they end (done, failed or cancelled)
        self.watch = WorkerWatch(client.nthreads, spec.no_worker_timeout, spec.on_notice)
        self.stop: Optional[Stop] = None

    def run(self) -> Optional[Stop]:
        try:
            while self.running or (self.queue and self.stop is None):
                self.stop = self.stop or self.watch.check(len(self.queue) + len(self.running))
                if self.stop and self.stop.reason == batch_worker.NO_WORKERS:
                    break
                while self.stop is None and self.queue and len(self.running) < self.watch.slots:
                    self._submit(self.queue.pop())
                try:
                    future = self.ended.get(timeout=POLL_SECONDS)
                except queues.Empty:
                    continue
                self._collect(future)
        except BaseException:  # Ctrl+C or a lost scheduler: stop handing out work, leave nothing running
            self.client.cancel(list(self.running))
            raise
        if self.stop is not None:
            self._record_the_rest()
        return self.stop

    def _submit(self, case: Case) -> None:
        future = self.client.submit(batch_worker.run_case, case, self.request, pure=False, retries=0,
                                    key=f"totalseg-case-{case.case_id}-{uuid.uuid4().hex[:8]}")
        self.running[future] = case
        future.add_done_callback(self.ended.put)

    def _collect(self, future) -> None:
        case = self.running.pop(future, None)
        if case is None:
            return
        record = _record_of(future, case, self.request, self.spec.max_attempts)
        future.release()  # final: the scheduler forgets the result, and never computes it again
        self.on_record(record)
        if record.get("stop") == batch_worker.NO_SPACE and self.stop is None:
            self.stop = Stop(batch_worker.NO_SPACE, record["error"])

    def _record_the_rest(self) -> None:
        """After a stop: the cases still running (their workers gone) and those never handed out are not run."""
        self.client.cancel(list(self.running))
        outdir = Path(self.request.outdir)
        writer = f"driver-{batch_worker.writer_name()}"
        for case in [*self.running.values(), *reversed(self.queue)]:
            record = batch_worker.done_in_this_run(case, self.request)
            if record is None:
                shutil.rmtree(outdir / batch_worker.STAGING / case.case_id, ignore_errors=True)
                record = batch_worker.not_run(case, self.request, f"not run: {self.stop.message}", self.stop.reason,
                                              writer)
            self.on_record(record)
        self.running.clear()
        self.queue.clear()


class WorkerWatch:
    """The scheduler's workers, asked at most every POLL_SECONDS: the slots to fill (a worker's threads and one
    case more), and while none is connected, a notice now and every NOTICE_EVERY_SECONDS, then a :class:`Stop`
    after ``timeout`` seconds (0: never)."""

    def __init__(self, workers: Callable[[], dict], timeout: float, notice: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.workers, self.timeout, self.notice, self.clock = workers, timeout, notice, clock
        self.slots = 2
        self.none_since: Optional[float] = None
        self._told = self._asked = float("-inf")

    def check(self, waiting: int) -> Optional[Stop]:
        now = self.clock()
        if now - self._asked < POLL_SECONDS:
            return None
        self._asked = now
        threads = self.workers()
        if threads:
            self.slots = sum(count + 1 for count in threads.values())
            if self.none_since is not None:
                self.notice(f"A Dask worker is connected again, after {now - self.none_since:.0f} s without any.")
            self.none_since = None
            return None
        if self.none_since is None:
            self.none_since = now
        idle = now - self.none_since
        if self.timeout and idle >= self.timeout:
            return Stop(batch_worker.NO_WORKERS, f"no Dask worker was connected for {self.timeout:g} s "
                                                 f"(--no-worker-timeout {self.timeout:g})")
        if now - self._told >= NOTICE_EVERY_SECONDS:
            self._told = now
            limit = (f"the run stops after {self.timeout:g} s without any (--no-worker-timeout)" if self.timeout
                     else "waiting for ever (--no-worker-timeout 0)")
            since = f", for {idle:.0f} s now" if idle >= 1 else ""
            self.notice(f"No Dask worker is connected to the scheduler{since}; {waiting} case(s) wait for one; "
                        f"{limit}.")
        return None


def _record_of(future, case: Case, request: CaseRequest, max_attempts: int) -> dict:
    """The worker's record, or one written here when no worker could write it (every attempt's worker died)."""
    try:
        return future.result()
    except Exception as err:  # KilledWorker, or a worker that cannot import the engine
        finished = batch_worker.done_in_this_run(case, request)
        if finished is not None:  # its last worker died after finishing it
            return finished
        outdir = Path(request.outdir)
        shutil.rmtree(outdir / batch_worker.STAGING / case.case_id, ignore_errors=True)
        killed = type(err).__name__ == "KilledWorker"
        message = (f"its worker died {max_attempts} times (out of memory, or the node was lost); "
                   f"the case was given up. Give the workers more memory, or run it alone with the "
                   f"single-case command." if killed else f"{type(err).__name__}: {err}")
        record = {"case_id": case.case_id, "input": case.source, "options": request.request.to_json(),
                  "options_key": request.options_key, "run": request.run_id, "status": "failed", "error": message,
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
