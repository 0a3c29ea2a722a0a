"""``totalseg_batch -i INPUT... -o OUTDIR [TotalSegmentator options]``: segment a cohort.

Every case is written to ``OUTDIR/<case id>/`` exactly as ``TotalSegmentator -i <case> -o OUTDIR/<case id>``
writes it (``segmentation.*`` inside it for file outputs). A re-run with the same options skips finished
cases; the exit statuses are :data:`EXIT_STATUSES`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Optional, Sequence

from totalseg_engine import (
    COHORT_REFUSED,
    InvalidOptionError,
    SegmentationRequest,
    TotalSegmentatorError,
    add_reporting_options,
    add_request_arguments,
    ensure_weights,
    gpu_count,
    parse_command,
    required_models,
)

from . import cases as batch_cases
from . import cluster as batch
from . import locking as batch_locking
from . import manifest as batch_manifest
from . import worker as batch_worker
from .progress import CohortProgress
from .worker import CaseRequest

# Options that do not change a case's segmentation: a re-run that changes only these skips finished cases.
NOT_IN_OPTIONS_KEY = ("device", "download")  # the licence key is never in the options at all
EXIT_NO_WORKERS = 3
EXIT_NO_SPACE = 4
EXIT_STATUSES = {
    0: "every case of the cohort is done",
    1: "a case failed (in this run, or in an earlier one and not retried)",
    2: "bad options or inputs, or an output folder that cannot be written or that another run works in (nothing "
       "was run)",
    EXIT_NO_WORKERS: "stopped: no Dask worker was connected for --no-worker-timeout seconds",
    EXIT_NO_SPACE: "stopped: the output folder lacks the free space the next case needs",
    130: "interrupted (Ctrl+C)",
}
_STOP_STATUS = {batch_worker.NO_WORKERS: EXIT_NO_WORKERS, batch_worker.NO_SPACE: EXIT_NO_SPACE}


def build_parser() -> argparse.ArgumentParser:
    statuses = "; ".join(f"{code} {meaning}" for code, meaning in EXIT_STATUSES.items())
    p = argparse.ArgumentParser(prog="totalseg_batch", allow_abbrev=False,
                                description="Segment a cohort with TotalSegmentator's models: warm workers, "
                                            "resumable, on a local or any Dask cluster.",
                                epilog=f"Exit status: {statuses}. After 3 and 4 the finished cases are kept and the "
                                       f"others recorded as not_run: the same command runs them.")
    p.add_argument("-i", dest="inputs", metavar="input", nargs="+", type=Path, required=True,
                   help="Image files, folders of them, DICOM folders or zips, or CSV / text lists of them "
                        "(a CSV needs a 'path' column, 'case_id' is optional).")
    p.add_argument("-o", dest="outdir", metavar="outdir", type=Path, required=True,
                   help="Output folder: OUTDIR/<case id>/ per case, manifest.jsonl and manifest.csv.")
    cohort = p.add_argument_group("cohort")
    cohort.add_argument("--workers", type=int, help="Local worker processes (default: one per GPU; on a CPU "
                                                    "one per 4 cores that memory allows, at least one).")
    cohort.add_argument("--threads-per-worker", type=int, help="CPU threads per worker (default: the cores "
                                                               "split between the workers).")
    cohort.add_argument("--cases-per-worker", type=int,
                        help="Cases a local worker runs at once: with 2, one case is read, resampled and written "
                             "while the other predicts (default 2 per GPU worker, 1 on a CPU).")
    cohort.add_argument("--scheduler", metavar="ADDRESS",
                        help="Run on an existing Dask cluster (tcp://host:8786, or a scheduler file's path).")
    cohort.add_argument("--shard", metavar="I/N",
                        help="Run only slice I of N (1..N) of the cohort, in this process, without Dask "
                             "(for Slurm array jobs).")
    cohort.add_argument("--retry-failed", action="store_true", help="Run again cases that failed before.")
    cohort.add_argument("--force", action="store_true", help="Run every case again, finished or not.")
    cohort.add_argument("--max-attempts", type=int, default=batch.DEFAULT_MAX_ATTEMPTS,
                        help="Attempts per case when its worker dies (default 3).")
    cohort.add_argument("--no-worker-timeout", type=float, default=batch.DEFAULT_NO_WORKER_TIMEOUT,
                        metavar="SECONDS",
                        help=f"Stop when no Dask worker has been connected for this long (default "
                             f"{batch.DEFAULT_NO_WORKER_TIMEOUT:g}; 0 waits for ever): finished cases are kept, the "
                             f"others recorded as not run, exit status {EXIT_NO_WORKERS}.")
    cohort.add_argument("--progress-json", action="store_true",
                        help="One JSON object per line on stdout: start, each finished case, end.")
    add_request_arguments(p, exclude=("overwrite",))  # each case is written into a staging folder of its own
    add_reporting_options(p, refused=COHORT_REFUSED)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, request = parse_command(parser, argv)
    if args.statistics not in (True, False):
        parser.error("-s takes no file name here: every case gets statistics.json and the cohort "
                     "cohort_statistics.csv in OUTDIR")
    try:
        return _run(args, request)
    except KeyboardInterrupt:
        print("Interrupted: finished cases are kept and recorded; re-run the same command to go on.",
              file=sys.stderr)
        return 130
    except TotalSegmentatorError as err:
        if args.verbose:
            raise
        print(f"ERROR: {err}", file=sys.stderr)
        return 2


def options_key(request: SegmentationRequest) -> str:
    """The manifest's key of what a case's segmentation depends on: a case done with other options is done again."""
    options = request.to_json()
    return batch_manifest.options_key({k: v for k, v in options.items() if k not in NOT_IN_OPTIONS_KEY})


def _run(args: argparse.Namespace, request: SegmentationRequest) -> int:
    _check_cohort_options(args)
    outdir = batch_cases.normal_path(args.outdir)
    _check_output_folder(outdir)
    cases = batch_cases.find_cases(args.inputs)
    if args.shard:
        cases = batch_cases.shard(cases, args.shard)
    _ensure_weights(request)
    _make_output_folder(outdir)
    with batch_locking.exclusive(outdir, args.shard):
        if not args.shard:  # no other run works here: what crashed runs noted is stale
            _remove_run_notes(outdir)
        manifest = batch_manifest.Manifest(outdir)
        previous = manifest.load()
        key = options_key(request)
        decisions = [batch_manifest.decide(case, previous.get(case.case_id), key, outdir, args.force,
                                           args.retry_failed) for case in cases]
        to_run = [d.case for d in decisions if d.run]
        failed_before = sum(1 for d in decisions if not d.run and d.reason != "done")
        progress = CohortProgress(len(to_run), len(decisions) - len(to_run), failed_before, args.progress_json,
                                  args.quiet)
        spec, threads = _cluster(args, request)
        cases_request = CaseRequest(str(outdir), request, key, threads, spec.gpu_count, frozenset(previous),
                                    uuid.uuid4().hex[:12])
        spec.on_start, spec.on_notice = progress.start, progress.notice
        stop = None
        try:
            if not to_run:
                progress.start("Nothing to run.")
            elif args.shard:
                progress.start(f"Shard {args.shard}: {len(cases)} cases, in this process")
                stop = batch.run_in_process(to_run, cases_request, progress.case, spec.cases_per_worker)
            else:
                stop = batch.run_on_dask(to_run, cases_request, progress.case, spec)
        finally:
            _remove_run_notes(outdir, cases_request.run_id)
        _finish_manifest(outdir, manifest, args, progress)
        progress.end(str(outdir / batch_manifest.MANIFEST), stop.reason if stop else None, stop.message if stop else "")
    if stop is not None:
        return _STOP_STATUS[stop.reason]
    incomplete = progress.failed + failed_before
    return 1 if incomplete else 0


def _finish_manifest(outdir: Path, manifest: batch_manifest.Manifest, args: argparse.Namespace,
                     progress: CohortProgress) -> None:
    """Fold the records into manifest.jsonl (not while other shards may write), the summary, the statistics; on a
    full disk, say what could not be written (every record is kept in its writer's file)."""
    try:
        records = manifest.load() if args.shard else manifest.compact()
        if args.shard:
            manifest.write_summary(records)
        if args.statistics:
            from .statistics import write_cohort_statistics

            write_cohort_statistics(outdir, records)
    except OSError as err:
        progress.notice(f"Could not write the manifest summary or the cohort statistics ({err}); every case's "
                        f"record is kept in {outdir}/manifest.*.jsonl, and the next run writes them.")


def _remove_run_notes(outdir: Path, run_id: Optional[str] = None) -> None:
    """Remove a run's notes of the cases it finished (every run's, when None), and .staging once it is empty."""
    staging = outdir / batch_worker.STAGING
    for notes in staging.glob(f"{batch_worker.RUN_PREFIX}{run_id or '*'}"):
        shutil.rmtree(notes, ignore_errors=True)
    with contextlib.suppress(OSError):
        staging.rmdir()


def _check_cohort_options(args: argparse.Namespace) -> None:
    """The cohort options' values, before anything is read or written."""
    if args.max_attempts < 1:
        raise InvalidOptionError("--max-attempts must be at least 1.")
    for name in ("workers", "cases_per_worker", "threads_per_worker"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InvalidOptionError(f"--{name.replace('_', '-')} must be at least 1.")
    if not args.no_worker_timeout >= 0:
        raise InvalidOptionError("--no-worker-timeout must be 0 (wait for ever) or a number of seconds.")
    if args.shard:
        batch_cases.parse_shard(args.shard)


def _check_output_folder(outdir: Path) -> None:
    """-o is a folder this process may write (or create), before any case is read."""
    if outdir.exists() and not outdir.is_dir():
        raise InvalidOptionError(f"-o {outdir} is a file; give the folder that receives the cases.")
    if outdir.is_dir():
        _check_writable(outdir)
        return
    existing = next(parent for parent in outdir.parents if parent.exists())
    if not os.access(existing, os.W_OK | os.X_OK):  # created only once the options and weights are checked
        raise _unwritable(outdir, f"{existing} is not writable (read-only, or not yours)")


def _make_output_folder(outdir: Path) -> None:
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(outdir, err.strerror or str(err)) from None
    _check_writable(outdir)


def _check_writable(outdir: Path) -> None:
    """Create and remove a file in ``outdir``: what the run does, and the only answer a read-only mount gives."""
    try:
        handle, name = tempfile.mkstemp(prefix=".totalseg_batch-", suffix=".probe", dir=outdir)
        os.close(handle)
        os.unlink(name)
    except OSError as err:
        raise _unwritable(outdir, err.strerror or str(err)) from None


def _unwritable(outdir: Path, why: str) -> InvalidOptionError:
    return InvalidOptionError(f"Cannot write to {outdir}: {why}. Choose an output folder you can write to (-o).")


def _cluster(args: argparse.Namespace, request: SegmentationRequest) -> tuple[batch.ClusterSpec, Optional[int]]:
    """The cluster to run on and the torch threads per worker (None: the worker's own setting)."""
    if args.scheduler:
        return batch.ClusterSpec(args.scheduler, max_attempts=args.max_attempts,
                                 no_worker_timeout=args.no_worker_timeout), args.threads_per_worker
    gpus = gpu_count() if request.device.lower() not in ("cpu", "mps") else 0
    cases = args.cases_per_worker or (batch.CASES_PER_GPU_WORKER if gpus else batch.CASES_PER_CPU_WORKER)
    if args.shard:  # this process is the one worker
        threads = args.threads_per_worker
        return batch.ClusterSpec(None, 1, threads, args.max_attempts, min(gpus, 1), cases_per_worker=cases), threads
    workers, threads = batch.local_layout(args.workers, args.threads_per_worker, gpus)
    return batch.ClusterSpec(None, workers, threads, args.max_attempts, gpus, cases_per_worker=cases,
                             no_worker_timeout=args.no_worker_timeout), threads


def _ensure_weights(request: SegmentationRequest) -> None:
    """Check the options and fetch missing weights once, here, before any worker starts (not once per worker)."""
    ensure_weights(required_models(request), download=request.download, task=request.task)


def run() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
