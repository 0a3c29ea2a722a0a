"""The part of MONAI Label's REST API that its clients use for segmentation models, on the same server and token.

Read from MONAI Label's source (``monailabel/endpoints/{info,infer,datastore}.py``, ``client/client.py``):

- ``GET /info/``: the models (one per installed task and speed: ``total``, ``total_fast``, …) with their labels as
  ``{name: value}``, ``type`` segmentation, ``dimension`` 3.
- ``PUT /datastore/`` (and ``/datastore/image``) ``?image=ID``: multipart ``params`` and ``file``; answers
  ``{"image": ID}``. The datastore is shared by everyone holding the token, as MONAI Label's is; its images are
  removed like job results (``--keep-results`` after their last use) and when the server stops.
- ``POST /infer/{model}?image=ID`` (or with a ``file`` part): runs the task as a job through the same queue and
  slots, and answers as MONAI Label does: multipart with ``params`` (JSON: ``label_names`` …) and the label file
  (our multilabel NIfTI), or with ``output=image`` / ``output=json`` only one of them. ``params`` may carry any
  field of the segmentation request (``roi_subset``, ``body_seg``, …); MONAI's own keys are ignored.
- ``GET /auth/``, ``POST /auth/token``, ``GET /auth/token/valid``: MONAI Label's Slicer module logs in with a user
  name and password; here the password is the server's token (any user name), and the "access token" it gets
  back is that token, sent as ``Authorization: Bearer`` from then on.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs

from aiohttp import web
from totalseg_engine import __version__, get_task
from totalseg_web.protocol import same_secret

from . import uploads
from .api import Api
from .errors import ApiError
from .jobs import Job, JobState
from .service import SegmentationService

MAX_IMAGES = 16
MAX_FORM_BYTES = 4096
CLIENT_CHECK_S = 0.5  # how often a waiting infer request looks whether its client is still there
REQUEST_FIELDS = {"roi_subset", "robust_crop", "body_seg", "force_split", "remove_small_blobs",
                  "higher_order_resampling", "resampling_order", "device", "runtime", "v1_order"}


def client_gone(request: web.Request) -> bool:
    """True once the client's connection is closed (aiohttp drops the transport when the peer has gone)."""
    transport = request.transport
    return transport is None or transport.is_closing()


@dataclass
class StoredImage:
    folder: Path
    path: Path
    name: str
    dicom: bool
    used: float


class MonaiLabel:
    def __init__(self, api: Api, token: Optional[str], work: Path) -> None:
        self.api = api
        self.service: SegmentationService = api.service
        self.token = token
        self.folder = work / "datastore"
        self.images: dict[str, StoredImage] = {}

    def add_routes(self, app: web.Application) -> None:
        for path in ("/info", "/info/"):
            app.router.add_get(path, self.info)
        for path in ("/datastore", "/datastore/", "/datastore/image"):
            app.router.add_put(path, self.upload)
        app.router.add_get("/datastore/", self.datastore)
        app.router.add_post("/infer/{model}", self.infer)
        app.router.add_get("/auth/", self.auth_enabled)
        app.router.add_post("/auth/token", self.auth_token)
        app.router.add_get("/auth/token/valid", self.auth_valid)

    # ------------------------------------------------------------------ info

    async def models(self) -> dict[str, tuple[str, str]]:
        """MONAI model name -> (task, speed), for every installed task and speed."""
        return {(name if speed == "normal" else f"{name}_{speed}"): (name, speed)
                for name, speeds in (await self.api.installed()).items() for speed in speeds}

    async def info(self, request: web.Request) -> web.Response:
        models = {}
        for model, (task_name, speed) in (await self.models()).items():
            task = get_task(task_name)
            models[model] = {"type": "segmentation", "dimension": 3, "config": {},
                             "labels": {name: label for label, name in sorted(task.classes.items())},
                             "description": f"TotalSegmentator {task_name} ({task.modality}, {speed}): "
                                            f"{len(task.classes)} structures"}
        labels = list(dict.fromkeys(name for model in models.values() for name in model["labels"]))
        return web.json_response({
            "name": "TotalSegmentator", "description": "TotalSegmentator's nnU-Net models", "version": __version__,
            "labels": labels, "models": models, "trainers": {}, "strategies": {}, "scoring": {}, "train_stats": {},
            "datastore": {"total": len(self.images), "completed": 0}})

    # ------------------------------------------------------------------ datastore

    async def datastore(self, request: web.Request) -> web.Response:
        return web.json_response({"total": len(self.images), "completed": 0, "label_tags": {}, "train": 0})

    async def upload(self, request: web.Request) -> web.Response:
        image_id = request.query.get("image", "")
        folder = self.folder / secrets.token_hex(8)
        try:
            upload = await uploads.read_upload(request, folder, self.api.max_upload_bytes, ("params",), "file")
            if upload.path is None:
                raise ApiError(400, "The upload has no 'file' part.")
            path, dicom = await uploads.staged_input(upload.path, folder, self.api.max_upload_bytes)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        image_id = image_id or upload.name.split(".")[0]
        self._store(image_id, StoredImage(folder, path, upload.name, dicom, time.monotonic()))
        return web.json_response({"image": image_id})

    def _store(self, image_id: str, image: StoredImage) -> None:
        """Keep an image under its id (replacing one of the same id); the least recently used go past the cap,
        and those unused for --keep-results seconds."""
        self._remove(image_id)
        self.images[image_id] = image
        horizon = time.monotonic() - self.service.store.keep_results_s
        for old_id, old in sorted(self.images.items(), key=lambda item: item[1].used):
            if old.used < horizon or len(self.images) > MAX_IMAGES:
                self._remove(old_id)

    def _remove(self, image_id: str) -> None:
        image = self.images.pop(image_id, None)
        if image is not None:
            shutil.rmtree(image.folder, ignore_errors=True)

    # ------------------------------------------------------------------ infer

    async def infer(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        task_speed = (await self.models()).get(model)
        if task_speed is None:
            raise ApiError(404, f"No model '{model[:60]}' on this server; GET /info/ lists them.")
        output = request.query.get("output", "all")
        if output not in ("all", "image", "json"):
            raise ApiError(400, f"output '{output[:20]}' is not offered here; use image, json or all.")
        started = time.monotonic()
        job = await self._submit(request, *task_speed)
        try:
            while not job.state.finished:
                if client_gone(request):  # nobody will read the answer: free the engine now
                    await self.service.cancel(job)
                    raise ConnectionResetError("the client of this infer request disconnected")
                await job.changed_since(job.version, CLIENT_CHECK_S)
            return self._answer(job, output, time.monotonic() - started)
        except asyncio.CancelledError:  # aiohttp cancelled the handler: the client is gone
            await asyncio.shield(self.service.cancel(job))
            raise
        finally:
            self.service.store.forget(job)

    async def _submit(self, request: web.Request, task: str, speed: str) -> Job:
        place = self.service.take_place()
        folder = self.service.store.new_folder()
        try:
            upload = await uploads.read_upload(request, folder / "input", self.api.max_upload_bytes, ("params",),
                                               "file")
            params = uploads.parse_json_field("params", upload.fields.get("params") or "{}")
            if not isinstance(params, dict):
                raise ApiError(400, "params is a JSON object.")
            source, dicom, name = await self._source(request, upload, folder)
            fields = {key: value for key, value in params.items() if key in REQUEST_FIELDS}
            job_request = self.service.job_request({**fields, "task": task, "speed": speed}, ("nifti",), dicom)
            job = Job(id=self.service.store.new_id(), folder=folder, input=source, input_name=name,
                      request=job_request, formats=("nifti",), device=self.service.slot_device(job_request.device),
                      place=place)
            await self.service.submit(job)
        except BaseException:
            place.release()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job

    async def _source(self, request: web.Request, upload: uploads.Upload, folder: Path) -> tuple[Path, bool, str]:
        """The image to segment: the request's own file, or a datastore image (linked into the job's folder, so
        that replacing it in the datastore does not touch the job)."""
        if upload.path is not None:
            path, dicom = await uploads.staged_input(upload.path, folder / "input", self.api.max_upload_bytes)
            return path, dicom, upload.name
        image = self.images.get(request.query.get("image", ""))
        if image is None:
            raise ApiError(404, f"No image '{request.query.get('image', '')[:60]}' in the datastore: upload it first "
                                "(PUT /datastore/?image=ID), or send it as the 'file' part.")
        image.used = time.monotonic()
        target = folder / "input" / image.path.name
        await asyncio.to_thread(_link_copy, image.path, target)
        return target, image.dicom, image.name

    def _answer(self, job: Job, output: str, seconds: float) -> web.Response:
        if job.state is JobState.CANCELLED:
            raise ApiError(409, "The segmentation was cancelled.")
        if job.state is not JobState.SUCCEEDED:
            raise ApiError(400, f"The segmentation failed: {job.error}")
        task = get_task(job.request.task)
        params = {"label_names": {name: label for label, name in sorted(task.classes.items())},
                  "task": task.name, "speed": job.request.speed, "latencies": {"total": round(seconds, 3)}}
        if output == "json":
            return web.json_response(params)
        path = job.result_path("nifti")
        data = path.read_bytes()
        if output == "image":
            return web.Response(body=data, content_type="application/gzip",
                                headers={"Content-Disposition": f'attachment; filename="{path.name}"'})
        body, content_type = multipart_form({"params": json.dumps(params)}, ("image", path.name, data))
        return web.Response(body=body, headers={"Content-Type": content_type})

    # ------------------------------------------------------------------ auth

    async def auth_enabled(self, request: web.Request) -> web.Response:
        return web.json_response({"enabled": self.token is not None, "client_id": "totalseg_server", "realm": ""})

    async def auth_token(self, request: web.Request) -> web.Response:
        """MONAI Label's login: the password is the server's token."""
        if self.token is None:
            return web.json_response({"access_token": None, "token_type": None})
        body = await request.content.read(MAX_FORM_BYTES + 1)
        if len(body) > MAX_FORM_BYTES:
            raise ApiError(413, "The login form is too large.")
        password = parse_qs(body.decode("utf-8", "replace")).get("password", [""])[0]
        if not same_secret(password, self.token):
            raise ApiError(401, "Wrong password: use this server's access token as the password (any user name).")
        return web.json_response({"access_token": self.token, "token_type": "Bearer"})

    async def auth_valid(self, request: web.Request) -> web.Response:
        return web.json_response({"username": "totalseg", "email": "", "name": "", "roles": []})

    def remove_all(self) -> None:
        for image_id in list(self.images):
            self._remove(image_id)
        shutil.rmtree(self.folder, ignore_errors=True)


def _link_copy(source: Path, target: Path) -> None:
    """A hard link of a file or of each file of a folder (a copy where links are not possible)."""
    target.parent.mkdir(parents=True, exist_ok=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link)
    else:
        link(str(source), str(target))


def multipart_form(fields: dict[str, str], file: tuple[str, str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body of text fields and one file (name, file name, bytes), as MONAI Label sends its
    answer; and its content type."""
    boundary = secrets.token_hex(16)
    body = bytearray()
    for name, value in fields.items():
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
                 f"Content-Type: application/json\r\n\r\n{value}\r\n").encode()
    name, filename, data = file
    body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"
