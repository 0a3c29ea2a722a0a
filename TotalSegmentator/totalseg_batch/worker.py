"""One case of a cohort, as a worker runs it: warm models, a private staging folder, all or nothing.

A worker process (a Dask worker, or the ``--shard`` process itself) keeps every model it loaded for the
cases that follow. A case is written by the single-case command's own path (``totalseg_engine.segment_to_files``)
into ``OUTDIR/.staging/<case id>/attempt-*/``, and only a finished case is renamed to ``OUTDIR/<case id>``:
a worker that dies mid-case leaves an attempt folder, never a half-written case folder, and the next attempt
counts and removes what earlier ones left. Every failure of a case is returned as that case's record, so one
bad image never stops the cohort.

A case the run has finished stays finished: Dask computes a task again when the worker that held its result is
lost, and that attempt returns the finished case's record without doing anything (its run's note in
``OUTDIR/.staging/.run-<run id>/``, or its record in the manifest). A case is not started where the output
folder's file system lacks the room it needs (:mod:`.space`): it is recorded ``not_run``, and the run stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from totalseg_engine import (
    InvalidOptionError,
    ProgressEvent,
    SegmentationRequest,
    TotalSegmentatorError,
    is_file_output,
    reuse_freed_memory,
    segment_to_files,
    switched_task,
    use_cpu_threads,
)

from . import manifest as batch_manifest
from . import space, warm
from .cases import Case

STAGING = ".staging"
ATTEMPT_PREFIX = "attempt-"
RUN_PREFIX = ".run-"  # OUTDIR/.staging/.run-<run id>/<case id>.json: the cases this run has published
NOT_RUN = "not_run"  # the status of a case a stopped run did not run (a re-run runs it)
NO_SPACE = "no_space"  # a record's "stop": the output folder lacks the room for the case; the run stops
NO_WORKERS = "no_workers"  # a record's "stop": no Dask worker was connected for --no-worker-timeout
# File names inside a case folder for outputs that are files (the folder itself holds the class files).
FILE_SUFFIXES = {"nifti": ".nii.gz", "seg_nrrd": ".seg.nrrd", "dicom_seg": ".dcm", "dicom_rtstruct": ".dcm"}
OUTPUT_NAME = "segmentation"


@dataclass(frozen=True)
class CaseRequest:
    """What every case of a run shares: where outputs go and the segmentation request of the single-case command."""

    outdir: str
    request: SegmentationRequest
    options_key: str
    threads: Optional[int] = None  # CPU threads for torch in this worker
    gpu_count: int = 0  # GPUs of a local cluster, one per worker
    replaceable: frozenset = field(default_factory=frozenset)  # case ids whose folders earlier runs wrote
    run_id: str = ""  # this run's id, in its records (empty: no note of the cases it finished)


WARM = warm.WarmModels()  # one per worker process


def run_case(case: Case, request: CaseRequest) -> dict:
    """Segment one case into ``OUTDIR/<case id>``; return its manifest record (status done or failed, or not_run
    where the output folder lacks the room for it)."""
    outdir = Path(request.outdir)
    finished = done_in_this_run(case, request)
    if finished is not None:  # Dask lost this case's result with its worker and computes it again: nothing to do
        # except what a worker killed between publishing it and removing its attempt left behind
        shutil.rmtree(Path(request.outdir) / STAGING / case.case_id, ignore_errors=True)
        return finished
    too_full = space.shortage(case, request.request, outdir)
    if too_full:
        return not_run(case, request, too_full, NO_SPACE, writer_name())
    staging = outdir / STAGING / case.case_id
    earlier = _earlier_attempts(staging)
    attempt = staging / f"{ATTEMPT_PREFIX}{uuid.uuid4().hex[:12]}"
    for tries_left in (2, 1, 0):  # another shard may remove .staging, empty for a moment, as this creates it
        try:
            attempt.mkdir(parents=True)
            break
        except FileNotFoundError:
            if not tries_left:
                raise
    (attempt / "attempt.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    record = _base_record(case, request, earlier)
    started = time.monotonic()
    stages = StageTimer()
    loaded_before = WARM.loaded
    try:
        record["fingerprint"] = {"stat": batch_manifest.stat_fingerprint(case),
                                 "sha256": batch_manifest.content_fingerprint(case)}
        _check_replaceable(outdir / case.case_id, case, request)
        built, output = _segment(case, request, attempt, stages)
        record["outputs"] = sorted(p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file())
        record.update(status="done", messages=output.messages(), prediction_turns=output.turns)
        _finish(record, started, stages, loaded_before, outdir)  # recorded first: a folder is never unrecorded
        _publish(built, outdir / case.case_id, staging)
        _note_done(record, request)
    except Exception as err:  # the case's failure, whatever it is: recorded, and the cohort goes on
        record.update(status="failed", error=_message(err))
        if not isinstance(err, TotalSegmentatorError):
            record["traceback"] = traceback.format_exc(limit=8)
        _finish(record, started, stages, loaded_before, outdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()  # only when no other case is staged
    return record


def done_in_this_run(case: Case, request: CaseRequest) -> Optional[dict]:
    """The record of the case if this run has finished it already (its folder published), else None."""
    if not request.run_id or not (Path(request.outdir) / case.case_id).is_dir():
        return None
    with contextlib.suppress(OSError, ValueError):
        return json.loads((run_folder(request) / f"{case.case_id}.json").read_text(encoding="utf-8"))
    if case.case_id in request.replaceable:  # no note (its worker died right after publishing): done again
        return None
    # a folder no earlier run wrote: this run's own if its record says so (read only here, where it is rare)
    record = batch_manifest.Manifest(Path(request.outdir)).load().get(case.case_id) or {}
    return record if record.get("status") == "done" and record.get("run") == request.run_id else None


def run_folder(request: CaseRequest) -> Path:
    """Where this run notes the cases it has published (removed when the run ends)."""
    return Path(request.outdir) / STAGING / f"{RUN_PREFIX}{request.run_id}"


def _note_done(record: dict, request: CaseRequest) -> None:
    if not request.run_id:
        return
    with contextlib.suppress(OSError):  # without the note a lost result is computed again, never wrongly
        folder = run_folder(request)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{record['case_id']}.json").write_text(json.dumps(record, sort_keys=True, default=str),
                                                          encoding="utf-8")


def not_run(case: Case, request: CaseRequest, reason: str, stop: str, writer: str) -> dict:
    """Record that a stopped run did not run the case, and why (a re-run runs it); recorded where the disk allows."""
    record = {"case_id": case.case_id, "input": case.source, "options": request.request.to_json(),
              "options_key": request.options_key, "run": request.run_id, "status": NOT_RUN, "error": reason,
              "stop": stop, "finished": utc_now()}
    if case.series_uid:
        record["series_uid"] = case.series_uid
    with contextlib.suppress(OSError):  # a full disk may not take even the record: the case is then simply new
        batch_manifest.Manifest(Path(request.outdir)).append(record, writer)
    return record


def writer_name() -> str:
    """This process's manifest file: ``manifest.<host>-<pid>.jsonl``."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _finish(record: dict, started: float, stages: StageTimer, loaded_before: int, outdir: Path) -> None:
    record.update(seconds=round(time.monotonic() - started, 2), stages=stages.seconds,
                  models_loaded=WARM.loaded - loaded_before, finished=utc_now())
    batch_manifest.Manifest(outdir).append(record, writer_name())


def _base_record(case: Case, request: CaseRequest, earlier: int) -> dict:
    record = {"case_id": case.case_id, "input": case.source, "options": request.request.to_json(),
              "options_key": request.options_key, "run": request.run_id, "attempts": earlier + 1,
              "started": utc_now(), "worker": f"{socket.gethostname()}:{os.getpid()}"}
    if case.series_uid:
        record["series_uid"] = case.series_uid
    if earlier:
        record["lost_attempts"] = earlier  # attempts whose worker died (out of memory, node lost)
    return record


def utc_now() -> str:
    """The time records carry: UTC, ISO 8601 to the millisecond (sorts as text, as Manifest.load compares)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _earlier_attempts(staging: Path) -> int:
    """Attempt folders left by workers that died during this case (a finished attempt removes its own)."""
    if not staging.is_dir():
        return 0
    return sum(1 for p in staging.iterdir() if p.name.startswith(ATTEMPT_PREFIX))


def _message(err: BaseException) -> str:
    text = str(err).strip()
    return text if isinstance(err, TotalSegmentatorError) and text else f"{type(err).__name__}: {text}"


def _check_replaceable(target: Path, case: Case, request: CaseRequest) -> None:
    """An existing case folder is replaced only when an earlier run of this output folder wrote it."""
    if target.exists() and case.case_id not in request.replaceable:
        raise InvalidOptionError(f"{target} exists but no earlier totalseg_batch run into {target.parent} wrote it "
                                 f"(it is not in the manifest); move it away or choose another -o.")


class StageTimer:
    """Seconds per engine stage (read, predict, write...), from the progress events."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stage: Optional[str] = None
        self._since = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage != self._stage:
            self._close()
            self._stage = event.stage

    def finish(self) -> None:
        """Close the last stage: what follows the engine's "done" is writing the outputs."""
        self._close()
        self._stage = None
        if "done" in self.seconds:
            self.seconds["write"] = self.seconds.pop("done")

    def _close(self) -> None:
        now = time.monotonic()
        if self._stage is not None:
            self.seconds[self._stage] = round(self.seconds.get(self._stage, 0.0) + now - self._since, 3)
        self._since = now


def case_output(case_dir: Path, ml: bool, output_types: Sequence[str]) -> Path:
    """``-o`` for a case: its folder for class files or surfaces, else ``segmentation.<suffix>`` inside it."""
    if len(output_types) == 1 and not is_file_output(ml, output_types[0]):
        return case_dir
    if len(output_types) > 1:
        return case_dir / OUTPUT_NAME  # the command names several outputs after this stem
    return case_dir / f"{OUTPUT_NAME}{FILE_SUFFIXES[output_types[0]]}"


def _segment(case: Case, request: CaseRequest, attempt: Path,
             stages: StageTimer) -> tuple[Path, warm.CaseOutput]:
    """Run the single-case command's path on the case; return the built case folder and what it printed."""
    built = attempt / "case"
    built.mkdir()
    wanted = request.request
    device = _worker_device(wanted.device, request.gpu_count)
    use_cpu_threads(request.threads)
    with _case_input(case, attempt) as source, warm.captured() as output:
        segmentation = switched_task(source, replace(wanted, device=device))
        factory = WARM.factory(device, segmentation.runtime, segmentation.download)
        with reuse_freed_memory():
            segment_to_files(source, case_output(built, segmentation.multilabel, segmentation.output_types),
                             segmentation, runner_factory=factory, progress=stages)
    stages.finish()
    if output.waited >= 0.01:  # another case of this worker was predicting
        stages.seconds["wait_for_prediction_turn"] = round(output.waited, 3)
    return built, output


@contextlib.contextmanager
def _case_input(case: Case, attempt: Path):
    """The path to segment: the source, or for one series of a folder holding several, a folder of links
    to its slices (DICOM outputs reference those files, so they must stay DICOM files)."""
    if not case.series_uid:
        yield case.path
        return
    folder = attempt / "series"
    folder.mkdir()
    for index, name in enumerate(case.series_files):
        link = folder / f"{index:06d}_{Path(name).name}"
        try:
            link.symlink_to(name)
        except OSError:  # no symlinks (Windows without the privilege): copy
            shutil.copy2(name, link)
    yield folder


def _worker_device(device: str, gpu_count: int) -> str:
    """On a local cluster with several GPUs, worker N uses GPU N (mod the count); elsewhere the device as asked."""
    if gpu_count < 2 or device.strip().lower() not in ("gpu", "cuda", "auto"):
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return device
    return f"cuda:{int(name) % gpu_count}" if str(name).isdigit() else device


def _publish(built: Path, target: Path, staging: Path) -> None:
    """Rename the finished case folder into place; an earlier version is moved aside first, then removed."""
    if target.exists() or target.is_symlink():
        os.replace(target, staging / f"replaced-{uuid.uuid4().hex[:12]}")
    os.replace(built, target)
