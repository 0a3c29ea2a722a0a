"""The server's jobs: one folder each below the work folder, a state, a place in the queue and its results.

A job's id is an unguessable capability (``secrets.token_urlsafe``): knowing it is what lets a client see the job,
and nothing else leads to it. Its folder has another, unrelated name, so that no path on the server (in a log, an
error message, the process list) gives the id away, and an id is only ever looked up in the store, never joined
into a path. A finished job's results are kept for ``keep_results_s`` seconds, then its folder is removed and the
job forgotten; everything is removed when the server stops. The server keeps jobs in memory only: after a
restart every earlier id is unknown, and the client is told so.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from totalseg_engine import SegmentationRequest, State
from totalseg_web.capacity import Place

RESULT_FILES = {"nifti": "segmentation.nii.gz", "seg_nrrd": "segmentation.seg.nrrd",
                "dicom_seg": "segmentation_seg.dcm", "statistics": "statistics.json"}
FORMATS = tuple(RESULT_FILES)
ID_BYTES = 24


class JobState(str, enum.Enum):
    """A job waits in the queue, then lives as an engine run does: the later states are the runner's own."""

    QUEUED = "queued"
    RUNNING = State.RUNNING.value
    SUCCEEDED = State.SUCCEEDED.value
    FAILED = State.FAILED.value
    CANCELLED = State.CANCELLED.value

    @property
    def finished(self) -> bool:
        return self is not JobState.QUEUED and State(self.value).finished


class UnknownJobError(KeyError):
    """No job has this id (never had, expired, or the server restarted since)."""

    def __str__(self) -> str:
        return ("Unknown job; the server may have restarted (it keeps no job across a restart), or the job's "
                "results expired. Submit the image again.")


@dataclass
class Job:
    """One segmentation: its input, the request as the engine runs it, the formats asked for, and how it goes."""

    id: str
    folder: Path
    input: Path  # the image file, or the folder a DICOM zip was unpacked into
    input_name: str  # as the client named it: messages use it, never a server path
    request: SegmentationRequest
    formats: tuple[str, ...]
    device: Optional[str] = None  # the slot device the client asked for (None: any slot)
    place: Optional[Place] = None  # its place among the jobs a server holds at once (--max-jobs)
    state: JobState = JobState.QUEUED
    position: int = 0
    progress: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    slot: Optional[int] = None
    slot_device: Optional[str] = None
    models_loaded: Optional[int] = None
    created: float = field(default_factory=time.time)
    ended: Optional[float] = None  # time.monotonic() when it finished
    version: int = 0
    cancel_requested: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def result_folder(self) -> Path:
        return self.folder / "result"

    def result_path(self, kind: str) -> Path:
        return self.result_folder / RESULT_FILES[kind]

    def update(self, **values: Any) -> None:
        """Change what a client sees, and wake every event stream that waits for a change."""
        for name, value in values.items():
            setattr(self, name, value)
        if self.state.finished and self.ended is None:
            self.ended = time.monotonic()
            if self.place is not None:
                self.place.release()
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed_since(self, version: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a version after ``version``; whether there is one."""
        if self.version != version:
            return True
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        """What ``GET /api/v1/jobs/{id}`` answers: never a server path."""
        succeeded = self.state is JobState.SUCCEEDED
        return {"id": self.id, "state": self.state.value, "position": self.position,
                "progress": dict(self.progress), "error": self.error,
                "formats": [kind for kind in self.formats if succeeded and self.result_path(kind).exists()],
                "requested_formats": list(self.formats), "task": self.request.task, "slot": self.slot,
                "device": self.slot_device, "models_loaded": self.models_loaded}


class JobStore:
    """Jobs by id, their folders below ``folder``, and the removal of finished ones after ``keep_results_s``."""

    def __init__(self, folder: Path, keep_results_s: float) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep_results_s = keep_results_s
        self.jobs: dict[str, Job] = {}

    def new_folder(self) -> Path:
        """A folder for a new job, named apart from its id."""
        folder = self.folder / secrets.token_hex(8)
        folder.mkdir()
        return folder

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(ID_BYTES)

    def add(self, job: Job) -> None:
        self.jobs[job.id] = job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise UnknownJobError(job_id)
        return job

    def counts(self) -> dict[str, int]:
        states = [job.state for job in self.jobs.values()]
        return {"queued": states.count(JobState.QUEUED), "running": states.count(JobState.RUNNING)}

    def expire(self, now: Optional[float] = None) -> list[str]:
        """Forget finished jobs whose results have been kept long enough, and remove their folders."""
        now = time.monotonic() if now is None else now
        expired = [job for job in self.jobs.values()
                   if job.ended is not None and now - job.ended >= self.keep_results_s]
        for job in expired:
            self.forget(job)
        return [job.id for job in expired]

    def forget(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def remove_all(self) -> None:
        for job in list(self.jobs.values()):
            self.forget(job)
        shutil.rmtree(self.folder, ignore_errors=True)
