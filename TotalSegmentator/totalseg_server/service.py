"""The jobs' way through the server: queue, warm slot, results; shared by the API, MONAI Label's routes and the
browser launcher (``totalseg_web --api``).

A job takes a ticket in the run queue (``totalseg_web.run_queue.RunQueue``: the browser app's, when the API is
mounted in its launcher, so browser runs and API jobs take turns on the same GPUs), waits until its turn has come
and a slot of its device is free, and runs there. The ticket records the slot's process group while the job runs,
so the queue never gives the turn away while an engine still works on it, whatever happens to this process.
Jobs held at once (queued or running) are capped by a :class:`~totalseg_web.capacity.Capacity`, taken before an
upload is read, so parallel uploads cannot pass it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from totalseg_engine import (
    InvalidOptionError,
    SegmentationRequest,
    TotalSegmentatorError,
    kill_process_group,
    missing_models,
    required_models,
)
from totalseg_web import messages
from totalseg_web.capacity import Capacity, Place
from totalseg_web.run_queue import RunQueue, Ticket

from .errors import ApiError
from .jobs import FORMATS, Job, JobState, JobStore
from .slots import Slot, SlotLost, SlotSpec

QUEUE_POLL_S = 0.2
CANCEL_TIMEOUT_S = 30.0
SLOT_RETRY_S = 5.0
QUEUE_OWNER = "api"
ANY_GPU = ("gpu", "cuda", "auto")


class SegmentationService:
    def __init__(self, work: Path, specs: list[SlotSpec], queue: RunQueue, max_jobs: int, keep_results_s: float,
                 download: bool = False, log: Callable[[str], None] = print) -> None:
        self.store = JobStore(work / "jobs", keep_results_s)
        self.slots = [Slot(spec, log) for spec in specs]
        self.queue = queue
        self.places = Capacity(max_jobs)
        self.download = download
        self.log = log
        self.closing = False
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        for slot in self.slots:
            self._spawn(self._keep_running(slot))
        self._spawn(self._expire_results())

    async def stop(self) -> None:
        """Every slot's process group killed and gone, every job's files removed."""
        self.closing = True
        for slot in self.slots:
            if slot.pid is not None:
                kill_process_group(slot.pid)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(slot.stop() for slot in self.slots), return_exceptions=True)
        self.store.remove_all()

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _keep_running(self, slot: Slot) -> None:
        """Start the slot and start it again whenever its process ends (cancel, out-of-memory kill, crash)."""
        while not self.closing:
            started = asyncio.get_running_loop().time()
            try:
                await slot.start()
                await slot.process.wait()
            except OSError as err:
                self.log(f"[slot {slot.spec.index}] could not start: {err}")
            await slot.stop()  # what the engine left in the group, then the job it ran (if any) is failed
            slot.fail_pending()
            if self.closing:
                return
            if asyncio.get_running_loop().time() - started < SLOT_RETRY_S:
                await asyncio.sleep(SLOT_RETRY_S)  # a slot that cannot start must not spin
            self.log(f"[slot {slot.spec.index}] starting a fresh slot on {slot.spec.device}")

    async def _expire_results(self) -> None:
        interval = max(1.0, min(30.0, self.store.keep_results_s / 4))
        while True:
            await asyncio.sleep(interval)
            self.store.expire()

    # ------------------------------------------------------------------ submitting

    def take_place(self) -> Place:
        """A place for one more job, taken before its upload is read; 503 when the server holds enough."""
        place = self.places.take()
        if place is None:
            raise ApiError(503, f"This server already holds {self.places.limit} jobs (--max-jobs). Try again when "
                                "one has finished.")
        return place

    def devices(self) -> list[str]:
        return [slot.spec.device for slot in self.slots]

    def slot_device(self, requested: str) -> Optional[str]:
        """The slot device a request may run on (None: any slot); only the server's own devices can be chosen."""
        text = (requested or "gpu").strip().lower().replace("cuda", "gpu")
        devices = self.devices()
        if text in ANY_GPU:
            return None
        if text in devices:
            return text
        raise ApiError(400, f"Device '{requested}' is not one of this server's: {', '.join(sorted(set(devices)))} "
                            "(or gpu / auto for any of them).")

    def job_request(self, data: object, formats: tuple[str, ...], dicom: bool) -> SegmentationRequest:
        """The request as the slot runs it: outputs chosen by the server (a multilabel NIfTI and the formats asked
        for, into the job's folder), never by the client; the licence key stays the server's own."""
        try:
            request = SegmentationRequest.from_json(data)
            if "dicom_seg" in formats and not dicom:
                raise InvalidOptionError("Format dicom_seg needs a DICOM input: upload a .zip of the DICOM series.")
            output_types = ("nifti", *(kind for kind in ("seg_nrrd", "dicom_seg") if kind in formats))
            request = replace(request, output_types=output_types, multilabel=True, radiomics=False, preview=False,
                              skip_saving=False, overwrite="always", license_number=None, derived_masks=False,
                              statistics="statistics" in formats, download=self.download)
            missing = missing_models(required_models(request))
        except TotalSegmentatorError as err:
            raise ApiError(400, str(err)) from err
        if missing:
            raise ApiError(400, f"The weights of task '{request.task}' ({request.speed}) are not installed on this "
                                f"server. Its administrator installs them with: totalseg_download_weights -t "
                                f"{request.task}")
        return request

    @staticmethod
    def formats(data: object, statistics: bool) -> tuple[str, ...]:
        """The result formats asked for (a JSON list); the NIfTI always, the statistics when the request has them."""
        if data is None:
            data = []
        if not isinstance(data, list) or not all(isinstance(kind, str) for kind in data):
            raise ApiError(400, f"formats is a list of format names ({', '.join(FORMATS)}).")
        unknown = sorted(set(data) - set(FORMATS))
        if unknown:
            raise ApiError(400, f"Unknown format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}.")
        wanted = {"nifti", *data, *(("statistics",) if statistics else ())}
        return tuple(kind for kind in FORMATS if kind in wanted)

    async def submit(self, job: Job) -> None:
        """Queue a job: its ticket is drawn before the client hears of the job, so even the first answer carries
        its real place in the queue (never a 0 that a waiting client would read as "next")."""
        ticket = await asyncio.to_thread(self.queue.join, QUEUE_OWNER)
        try:
            position = await asyncio.to_thread(ticket.ahead)
        except BaseException:
            await asyncio.to_thread(ticket.leave)
            raise
        job.update(position=position)
        self.store.add(job)
        self._spawn(self._run(job, ticket))

    async def cancel(self, job: Job) -> None:
        """Cancel a job; a running one's slot is killed, and this returns once its whole process group is gone."""
        if job.state.finished:
            return
        job.cancel_requested = True
        if job.state is JobState.QUEUED:
            job.update(state=JobState.CANCELLED, position=0)
            return
        slot = self.slots[job.slot]
        if slot.pid is not None:
            kill_process_group(slot.pid)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._finished(job), CANCEL_TIMEOUT_S)

    @staticmethod
    async def _finished(job: Job) -> None:
        while not job.state.finished:
            await job.changed_since(job.version, 1.0)

    # ------------------------------------------------------------------ running

    async def _run(self, job: Job, ticket: Ticket) -> None:
        try:
            slot = await self._wait_for_turn(job, ticket)
            if slot is not None:
                await self._execute(job, slot, ticket)
        except Exception as err:  # never leave a job hanging in a state that does not end
            self.log(f"job failed unexpectedly: {type(err).__name__}: {err}")
            if not job.state.finished:
                job.update(state=JobState.FAILED, error="The server failed on this job; its log says why.")
        finally:
            await asyncio.to_thread(ticket.leave)

    async def _wait_for_turn(self, job: Job, ticket: Ticket) -> Optional[Slot]:
        while not job.cancel_requested:
            ahead = await asyncio.to_thread(ticket.ahead)
            slot = self._free_slot(job.device) if ahead == 0 else None
            if slot is not None and not job.cancel_requested:
                slot.busy = True
                return slot
            if ahead != job.position:
                job.update(position=ahead)
            await asyncio.sleep(QUEUE_POLL_S)
        return None

    def _free_slot(self, device: Optional[str]) -> Optional[Slot]:
        for slot in self.slots:
            if slot.ready.is_set() and not slot.busy and device in (None, slot.spec.device):
                return slot
        return None

    async def _execute(self, job: Job, slot: Slot, ticket: Ticket) -> None:
        job.update(state=JobState.RUNNING, position=0, slot=slot.spec.index, slot_device=slot.spec.device,
                   progress={"stage": "start", "message": "Starting on the server"})
        await asyncio.to_thread(ticket.engine_started, slot.pid)
        order = {"key": secrets.token_hex(8), "input": str(job.input), "output": str(job.result_path("nifti")),
                 "statistics": str(job.result_path("statistics")) if "statistics" in job.formats else None,
                 "request": replace(job.request, device=slot.spec.engine_device).to_json(secrets=True)}
        try:
            outcome = await slot.run(order, lambda message: job.update(progress=message.get("event", {})))
        except SlotLost as lost:
            if job.cancel_requested:
                job.update(state=JobState.CANCELLED, progress={"stage": "cancelled", "message": "Cancelled"})
            else:
                job.update(state=JobState.FAILED, error=str(lost))
            return
        finally:
            slot.busy = False
        if outcome["type"] == "done":
            job.update(state=JobState.SUCCEEDED, models_loaded=outcome.get("loaded"),
                       progress={"stage": "done", "message": "Segmentation finished", "fraction": 1.0})
        else:
            job.update(state=JobState.FAILED, error=self.for_user(str(outcome.get("error")), job))

    @staticmethod
    def for_user(text: str, job: Job) -> str:
        """An engine message with the input named as the client named it, and no other server path."""
        return messages.for_user(text, {job.input: job.input_name, job.folder: "the job"})
