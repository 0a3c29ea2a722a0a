"""The segmentation API, ``/api/v1``: submit an image with a request, follow the job, cancel it, fetch its results.

| method and path | answer |
|---|---|
| ``GET /api/v1/info`` | version, tasks (installed or not), slots and their devices, queue, upload limit |
| ``POST /api/v1/jobs`` | multipart: ``request`` (JSON), optional ``formats`` (JSON list), ``image``; 202 with the job |
| ``GET /api/v1/jobs/{id}`` | state, queue position, progress, error, result formats |
| ``GET /api/v1/jobs/{id}/events`` | the same as Server-Sent Events until the job ends, a comment every few seconds |
| ``DELETE /api/v1/jobs/{id}`` | cancel: the engine's whole process tree ends before the answer |
| ``GET /api/v1/jobs/{id}/result?format=…`` | nifti, seg_nrrd, dicom_seg or statistics |

Every answer is JSON (errors ``{"error": ...}``) but the results. Access takes ``Authorization: Bearer <token>``
(or, inside ``totalseg_web --api``, the browser's token cookie), compared in constant time.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from typing import Optional

from aiohttp import web
from totalseg_engine import __version__, all_tasks, missing_models
from totalseg_web.protocol import same_secret

from . import uploads
from .errors import ApiError, json_error, json_errors
from .jobs import RESULT_FILES, Job, JobState, UnknownJobError
from .service import SegmentationService

PREFIX = "/api/v1"
MONAI_PREFIXES = ("/info", "/infer", "/datastore", "/auth")
PUBLIC_PATHS = ("/auth", "/auth/", "/auth/token")  # MONAI Label's clients ask whether and how to log in
HEARTBEAT_S = 2.0
INSTALLED_CACHE_S = 10.0
TOKEN_HELP = ("send it as 'Authorization: Bearer <token>'. Command line: TOTALSEG_SERVER_TOKEN or --token; Slicer: "
              "the remote server's token in the TotalSegmentator panel; MONAI Label: the token as password.")
MEDIA_TYPES = {"nifti": "application/gzip", "seg_nrrd": "application/octet-stream", "dicom_seg": "application/dicom",
               "statistics": "application/json"}
COMPRESSIBLE = ("dicom_seg", "statistics")  # the NIfTI and .seg.nrrd are gzipped already


def owns(path: str) -> bool:
    """Whether a path is the API's (or MONAI Label's routes), not the browser app's."""
    return path.startswith(PREFIX + "/") or path == PREFIX or any(
        path == prefix or path.startswith(prefix + "/") for prefix in MONAI_PREFIXES)


class Access:
    """Who may use the API: a bearer token, or the browser app's cookie when mounted in its launcher."""

    def __init__(self, token: Optional[str], cookie: Optional[str] = None) -> None:
        self.token = token
        self.cookie = cookie

    def allows(self, request: web.Request) -> bool:
        if self.token is None or request.path in PUBLIC_PATHS:
            return True
        from totalseg_web.access import bearer_token

        given = bearer_token(request)
        if given is None and self.cookie:
            try:
                given = request.cookies.get(self.cookie)
            except (ValueError, KeyError, UnicodeError):
                given = None
        return given is not None and same_secret(given, self.token)

    def middleware(self):
        @web.middleware
        async def check_token(request: web.Request, handler) -> web.StreamResponse:
            if owns(request.path) and not self.allows(request):
                return self.denied(request)
            return await handler(request)

        return check_token

    @staticmethod
    def denied(request: web.Request) -> web.Response:
        given = "a wrong" if request.headers.get("Authorization") else "no"
        return json_error(401, f"This server needs its access token, and the request carried {given} token: "
                               f"{TOKEN_HELP}", **{"WWW-Authenticate": "Bearer"})


class Api:
    """The routes of ``/api/v1`` over one :class:`SegmentationService`."""

    def __init__(self, service: SegmentationService, max_upload_bytes: int) -> None:
        self.service = service
        self.max_upload_bytes = max_upload_bytes
        self._installed: tuple[float, dict[str, list[str]]] = (0.0, {})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/info", self.info)
        app.router.add_post(f"{PREFIX}/jobs", self.submit)
        app.router.add_get(f"{PREFIX}/jobs/{{id}}", self.status)
        app.router.add_delete(f"{PREFIX}/jobs/{{id}}", self.cancel)
        app.router.add_get(f"{PREFIX}/jobs/{{id}}/events", self.events)
        app.router.add_get(f"{PREFIX}/jobs/{{id}}/result", self.result)

    # ------------------------------------------------------------------ info

    async def info(self, request: web.Request) -> web.Response:
        installed = await self.installed()
        tasks = [{"name": task.name, "modality": task.modality, "speeds": list(task.speeds),
                  "licensed": task.licensed, "installed": bool(installed.get(task.name)),
                  "installed_speeds": installed.get(task.name, [])} for task in all_tasks().values()]
        return web.json_response({
            "name": "TotalSegmentator server", "version": __version__, "api": 1,
            "tasks": [task["name"] for task in tasks if task["installed"]], "all_tasks": tasks,
            "devices": self.service.devices(), "slots": [slot.to_json() for slot in self.service.slots],
            "queue": self.service.store.counts(), "max_jobs": self.service.places.limit,
            "max_upload_mb": round(self.max_upload_bytes / 2**20, 1),
            "keep_results_s": self.service.store.keep_results_s, "formats": list(RESULT_FILES)})

    async def installed(self) -> dict[str, list[str]]:
        """Task -> the speeds whose weights are all installed (checked at most every few seconds)."""
        checked, found = self._installed
        if time.monotonic() - checked > INSTALLED_CACHE_S:
            found = await asyncio.to_thread(installed_speeds)
            self._installed = (time.monotonic(), found)
        return found

    # ------------------------------------------------------------------ jobs

    async def submit(self, request: web.Request) -> web.Response:
        place = self.service.take_place()  # before anything is awaited: parallel uploads cannot pass the cap
        folder = self.service.store.new_folder()
        try:
            job = await self._read_job(request, folder)
            job.place = place
            await self.service.submit(job)
        except BaseException:
            place.release()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return web.json_response({"id": job.id, "state": job.state.value, "position": job.position}, status=202)

    async def _read_job(self, request: web.Request, folder) -> Job:
        checked: dict[str, object] = {}

        def check(name: str, text: str) -> None:  # a bad request is refused before the image is read
            checked[name] = uploads.parse_json_field(name, text)
            if name == "request":
                self.service.slot_device(self.service.job_request(checked[name], (), dicom=True).device)

        upload = await uploads.read_upload(request, folder / "input", self.max_upload_bytes,
                                           ("request", "formats"), "image", check)
        missing = [name for name, there in (("request", "request" in checked), ("image", upload.path)) if not there]
        if missing:
            raise ApiError(400, f"The upload has no part {' and '.join(repr(m) for m in missing)}; send 'request' "
                                "(a SegmentationRequest as JSON) and 'image' (the image file).")
        data = checked["request"]
        statistics = isinstance(data, dict) and data.get("statistics") is True
        formats = self.service.formats(checked.get("formats"), statistics)
        source, dicom = await uploads.staged_input(upload.path, folder / "input", self.max_upload_bytes)
        job_request = self.service.job_request(data, formats, dicom)
        return Job(id=self.service.store.new_id(), folder=folder, input=source, input_name=upload.name,
                   request=job_request, formats=formats, device=self.service.slot_device(job_request.device))

    def _job(self, request: web.Request) -> Job:
        try:
            return self.service.store.get(request.match_info["id"])
        except UnknownJobError as err:
            raise ApiError(404, str(err)) from err

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._job(request).to_json())

    async def cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        await self.service.cancel(job)
        return web.json_response(job.to_json())

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: the job whenever it changes, a comment line every HEARTBEAT_S (so a client notices
        a dead server within seconds), until the job has ended."""
        job = self._job(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        version = -1
        while True:
            if job.version != version:
                version = job.version
                await response.write(f"data: {json.dumps(job.to_json())}\n\n".encode())
                if job.state.finished:
                    break
            elif not await job.changed_since(version, HEARTBEAT_S):
                await response.write(b": alive\n\n")
        await response.write_eof()
        return response

    async def result(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        kind = request.query.get("format", "nifti")
        if kind not in RESULT_FILES:
            raise ApiError(400, f"Unknown format '{kind[:40]}'; known: {', '.join(RESULT_FILES)}.")
        if job.state is not JobState.SUCCEEDED:
            raise ApiError(409, f"The job has no results: it is {job.state.value}"
                                + (f" ({job.error})" if job.error else "") + ".")
        path = job.result_path(kind)
        if kind not in job.formats or not path.exists():
            raise ApiError(404, f"The job has no {kind} result; it was asked for "
                                f"{', '.join(job.formats)} (add formats when submitting).")
        response = web.FileResponse(path, headers={
            "Content-Type": MEDIA_TYPES[kind], "Content-Disposition": f'attachment; filename="{path.name}"'})
        if kind in COMPRESSIBLE:
            response.enable_compression()
        return response


def installed_speeds() -> dict[str, list[str]]:
    """Task -> speeds whose models are all in the weights folder (a file-system check, no model loaded)."""
    found = {}
    for task in all_tasks().values():
        speeds = [speed for speed in task.speeds if not missing_models(task.modes[speed].models)]
        if speeds:
            found[task.name] = speeds
    return found


def api_middlewares(access: Access) -> list:
    return [json_errors(owns), access.middleware()]
