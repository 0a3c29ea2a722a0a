"""One browser session: its own MRML scene, views, panel and runs, in its own process.

The launcher starts one of these per browser session (``python -m totalseg_web.session_app``, its settings and
the proxy secret as one JSON line on standard input) and proxies the browser to it; it listens on 127.0.0.1 only
and answers only requests that carry the secret. Everything MRML and VTK happens on the event loop's thread;
reading an input runs in an executor, and a run is the panel's job polled from an asyncio task, so the page stays
responsive while the engine works in its child process (which dies with this process, however it ends). The
process ends when its browser has been gone for ``idle_timeout`` seconds.

What the browser sends is checked: a trigger's arguments of the wrong type get a message, an upload that is not
one file a 400, one over the limit a 413, and messages name files as the user named them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import slicer
from aiohttp import BodyPartReader, web
from totalseg_engine import State, TotalSegmentatorError, cancel_all, get_task, segment_info
from totalseg_slicer import panel_state, segmentation_import
from totalseg_slicer.devices import query_devices
from totalseg_slicer.job_request import job_request
from trame.app import get_server
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from . import inputs, messages, probe, session_ui
from .data_root import DataRoot, OutsideDataRootError
from .protocol import PORT_LINE, PROXY_HEADER, SessionSettings, same_secret
from .run_queue import RunQueue, Ticket
from .web_job import DOWNLOAD_KINDS, WebSegmentationJob

POLL_S = 0.25
QUEUE_POLL_S = 0.5
SERVE = {"totalseg_web": str(Path(__file__).with_name("serve"))}
INPUT_ERRORS = (TotalSegmentatorError, ValueError, OSError)
BAD_ARGUMENTS = (TotalSegmentatorError, TypeError, ValueError, LookupError, AttributeError)
BAD_REQUEST = "The page sent a request this server cannot read. Reload the page and try again."
STATISTICS_HEADERS = [{"title": "Structure", "key": "name"}, {"title": "Volume (ml)", "key": "volume_ml"},
                      {"title": "Mean intensity", "key": "intensity"}]


def _hex(color) -> str:
    return "#" + "".join(f"{round(max(0.0, min(1.0, c)) * 255):02x}" for c in color[:3])


class Session:
    def __init__(self, server, options: SessionSettings) -> None:
        self.server, self.state, self.ctrl = server, server.state, server.controller
        self.options = options
        self.folder = Path(options.session_dir)
        self.uploads = inputs.UploadArea(self.folder / "uploads")
        self.max_bytes = int(options.max_upload_mb * 2**20)
        self.data_root = DataRoot(options.data_root) if options.data_root else None
        self.queue = RunQueue(options.queue_dir, options.concurrent_runs)
        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        register_rca_factories(self.slicer_app.view_manager, server)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout("Quad View")
        self.volume: Optional[slicer.vtkMRMLScalarVolumeNode] = None
        self.opened: Optional[inputs.OpenedInput] = None
        self.job: Optional[WebSegmentationJob] = None
        self.result: Optional[WebSegmentationJob] = None
        self.label_names: dict[int, str] = {}  # label value -> segment name of the shown result
        self.ticket: Optional[Ticket] = None
        self.cancel_requested = False
        self._run_task: Optional[asyncio.Task] = None
        self.runs = 0
        self._init_state()
        self._bind()
        session_ui.build_page(server, self.layout_manager, "TotalSegmentator")

    # ------------------------------------------------------------------ state and bindings

    def _init_state(self) -> None:
        self.state.update({
            "trame__title": "TotalSegmentator", "input_name": "", "has_input": False, "busy_loading": False,
            "error_message": "", "status_message": "Upload a CT or MR image, or open one from the server.",
            "max_upload_mb": self.options.max_upload_mb, "data_root_enabled": self.data_root is not None,
            "data_path": "", "data_entries": [], "modality_filter": panel_state.ALL, "task": "total",
            "task_items": [], "speed": "normal", "speed_items": [], "roi_enabled": True, "roi_items": [],
            "roi_subset": [], "surfaces": False, "device": "auto", "device_items": [{"title": "auto", "value": "auto"}],
            "task_licensed": False, "license_number": "", "running": False, "progress": 0,
            "progress_message": "", "queue_message": "", "segments": [], "opacity": 1.0, "show_3d": True,
            "probe_text": "", "statistics": [], "statistics_headers": STATISTICS_HEADERS, "downloads": [],
        })
        self._task_lists("All", "total")

    def _bind(self) -> None:
        self.server.enable_module(trame_slicer_module)
        self.server.enable_module({"serve": SERVE, "scripts": ["totalseg_web/upload.js"]})
        self.ctrl.on_server_bind.add(self._add_routes)
        self.ctrl.on_server_ready.add(self._announce)
        self.ctrl.trigger("totalseg_uploaded")(self._guarded(self.on_uploaded))
        # named: the tests call it as a browser could
        self.ctrl.trigger("totalseg_open_entry")(self._guarded(self.open_entry))
        self.ctrl.run_or_cancel, self.ctrl.browse_up = self.run_or_cancel, self.browse_up
        for name in ("set_segment_visible", "jump_to_segment", "apply_preset"):
            setattr(self.ctrl, name, self._guarded(getattr(self, name)))
        self.state.change("modality_filter")(self._guarded(self._on_filter))
        self.state.change("task")(self._guarded(self._on_task))
        self.state.change("opacity", "show_3d")(self._guarded(self._on_display))
        crosshair = self.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        crosshair.AddObserver(slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent, self._on_cursor)

    def _guarded(self, handler: Callable) -> Callable:
        """``handler`` for arguments that come from the browser (any JSON, any state value): one it cannot use gets
        a message on the page and a line in the server's log, not a traceback that trame swallows silently."""
        if inspect.iscoroutinefunction(handler):
            async def guarded(*args, **kwargs):
                with self._answering_bad_requests(handler):
                    return await handler(*args, **kwargs)
        else:
            def guarded(*args, **kwargs):
                with self._answering_bad_requests(handler):
                    return handler(*args, **kwargs)
        return functools.wraps(handler)(guarded)

    @contextlib.contextmanager
    def _answering_bad_requests(self, handler: Callable):
        try:
            yield
        except BAD_ARGUMENTS as err:
            print(f"{handler.__name__}: a request it cannot use ({err!r})", file=sys.stderr, flush=True)
            self._fail(BAD_REQUEST)

    def _add_routes(self, wslink_server) -> None:
        app = wslink_server.app
        app.middlewares.append(self._from_launcher_only)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/download/{kind}", self.download)

    @web.middleware
    async def _from_launcher_only(self, request, handler):
        if not same_secret(request.headers.get(PROXY_HEADER, ""), self.options.proxy_secret):
            return web.Response(status=403, text="Open the app through its launcher address.")
        return await handler(request)

    def _announce(self, **_) -> None:
        print(f"{PORT_LINE}{self.server.port}", flush=True)
        asyncio.get_event_loop().create_task(self._load_devices())
        if self.data_root:
            self.browse("")

    async def _load_devices(self) -> None:
        devices = await asyncio.get_event_loop().run_in_executor(None, query_devices, sys.executable)
        with self.state:
            self.state.device_items = [{"title": label, "value": value} for label, value in devices]

    # ------------------------------------------------------------------ panel rules (the Slicer panel's)

    def _task_lists(self, modality_filter: str, task: str) -> None:
        self.state.task_items = [{"title": c.label, "value": c.name} for c in panel_state.task_choices(modality_filter)]
        self.state.task = panel_state.task_after_filter_change(modality_filter, task)
        self._on_task(self.state.task)

    def _on_filter(self, modality_filter, **_) -> None:
        self._task_lists(modality_filter, self.state.task)

    def _on_task(self, task, **_) -> None:
        classes = get_task(task).class_names
        self.state.speed_items = [speed for speed, ok in panel_state.offered_speeds(task).items() if ok]
        self.state.speed = panel_state.speed_for(task, self.state.speed)
        self.state.roi_enabled = panel_state.roi_supported(task)
        self.state.roi_items = [{"title": segment_info(name)[0], "value": name}
                                for name in classes] if self.state.roi_enabled else []
        self.state.roi_subset = [name for name in self.state.roi_subset if name in classes]
        self.state.task_licensed = get_task(task).licensed

    # ------------------------------------------------------------------ inputs

    async def upload(self, request: web.Request) -> web.Response:
        """Stream one file into a staged folder; the open input is replaced only once the new one has opened."""
        if self.state.running:
            return _answer(409, "A segmentation is running; cancel it or wait before uploading.")
        part = await _file_part(request)
        if part is None:
            return _answer(400, "Send one file, as the form field 'file' of a multipart/form-data request.")
        name = inputs.safe_name(part.filename)
        try:
            inputs.check_image_name(name)
        except inputs.UnsupportedInputError as err:
            return _answer(400, str(err))
        staged = self.uploads.stage()
        try:
            await inputs.save_stream(_chunks(part), staged / name, self.max_bytes)
        except (inputs.UploadTooLargeError, ValueError, OSError) as err:
            self.uploads.discard(staged)
            return _upload_failed(name, err)
        return web.json_response({"name": name, "upload": staged.name})

    async def on_uploaded(self, answer: dict) -> None:
        if "too_large" in answer:
            size = f"'{inputs.safe_name(answer.get('name', ''))}' ({float(answer['too_large']) / 2**20:.0f} MB)"
            return self._fail(inputs.too_large_message(size, self.max_bytes))
        if "error" in answer:
            return self._fail(str(answer["error"]))
        name, staged = inputs.safe_name(answer.get("name")), self.uploads.find(answer.get("upload"))
        if staged is None or not (staged / name).is_file():
            return self._fail("The uploaded file is no longer on the server. Upload it again.")
        await self._open(staged / name, name, staged)

    def browse(self, relative: str) -> None:
        try:
            entries = self.data_root.listing(relative)
        except (OutsideDataRootError, OSError) as err:
            return self._fail(str(err))
        with self.state:
            self.state.data_path = relative.strip("/")
            self.state.data_entries = [vars(entry) for entry in entries]

    def browse_up(self) -> None:
        self.browse("/".join(self.state.data_path.split("/")[:-1]))

    async def open_entry(self, relative: str, kind: str) -> None:
        if kind == "folder":
            return self.browse(relative)
        try:
            path = self.data_root.resolve(relative)
        except (OutsideDataRootError, OSError) as err:
            return self._fail(str(err))
        await self._open(path, Path(relative).name)

    async def _open(self, path: Path, name: str, staged: Optional[Path] = None) -> None:
        """Read and show an input; its staged folder (where a zip unpacks) becomes the session's input folder only
        when that worked. Until then the open input, its files and its result stay as they are."""
        staged = staged or self.uploads.stage()
        if self.state.running:
            self.uploads.discard(staged)
            return self._fail("A segmentation is running; cancel it or wait before opening another image.")
        with self.state:
            self.state.busy_loading, self.state.error_message = True, ""
            self.state.status_message = f"Reading {name}"
        loop = asyncio.get_event_loop()
        try:
            opened = await loop.run_in_executor(None, inputs.open_input, path, staged, self.max_bytes, name)
            self._show(opened)
        except INPUT_ERRORS as err:
            self.uploads.discard(staged)
            self._fail(f"Could not open {name}: {err}")
        else:
            self.uploads.keep(staged)
        finally:
            with self.state:
                self.state.busy_loading = False

    def _show(self, opened: inputs.OpenedInput) -> None:
        volumes = self.slicer_app.io_manager.load_volumes(opened.viewer_files)
        if not volumes:
            raise ValueError("the viewer could not read it as a volume.")
        self._clear_scene()
        largest = max(volumes, key=lambda v: _voxel_count(v))  # as the engine, which reads the largest series
        self.volume, self.opened = largest, opened
        for extra in volumes:
            if extra is not largest:
                self.scene.RemoveNode(extra)
        self.slicer_app.display_manager.show_volume_in_slice_background(self.volume)
        self.slicer_app.display_manager.reset_views()
        with self.state:
            self.state.update({"input_name": opened.name, "has_input": True, "segments": [], "statistics": [],
                               "downloads": [], "progress_message": "", "probe_text": "",
                               "status_message": f"{opened.name} is open. Choose a task and press Run."})

    def _clear_scene(self) -> None:
        self._drop_result()
        if self.volume is not None and self.volume.GetScene() is self.scene:
            self.scene.RemoveNode(self.volume)

    def _drop_result(self) -> None:
        """Remove the shown result: its segmentation node and its files (one result per session at a time)."""
        if self.result is not None:
            if self.result.segmentation_node.GetScene() is self.scene:
                self.scene.RemoveNode(self.result.segmentation_node)
            shutil.rmtree(self.result.results_folder, ignore_errors=True)
        self.result, self.label_names = None, {}

    # ------------------------------------------------------------------ runs

    async def run_or_cancel(self) -> None:
        if self.state.running:
            return self.cancel()
        try:
            request = job_request(task=self.state.task, speed=self.state.speed, device=self.state.device,
                                  roi_subset=list(self.state.roi_subset) if self.state.roi_enabled else [],
                                  license_number=self.state.license_number or None)
            self.runs += 1
            job = WebSegmentationJob(self.scene, self.volume, request, self.opened,
                                     self.folder / "results" / f"run-{self.runs}", python=sys.executable,
                                     temp_root=self.folder, surfaces=bool(self.state.surfaces))
        except (TotalSegmentatorError, ValueError, TypeError) as err:  # state values come from the browser
            return self._fail(str(err))
        job.on_progress = self._on_progress
        self.job, self.cancel_requested = job, False
        with self.state:
            self.state.update({"running": True, "progress": 0, "error_message": "", "status_message": "",
                               "progress_message": "Waiting for a free slot"})
        # A task of its own: trame handles one client's triggers one after another, so awaiting the run here
        # would hold back the Cancel click until the run had ended. Kept referenced: asyncio holds tasks weakly.
        self._run_task = asyncio.get_event_loop().create_task(self._run(job))

    async def _run(self, job: WebSegmentationJob) -> None:
        self.ticket = self.queue.join(self.folder.name)
        started = time.monotonic()
        try:
            if await self._wait_for_turn():
                job.start()  # on this (the main) thread: the engine dies with this process, by the kernel's signal
                self.ticket.engine_started(job.engine_pid)
                while not job.poll():
                    await asyncio.sleep(POLL_S)
                self._finished(job, time.monotonic() - started)
            else:
                self._set_final_status("Cancelled while waiting in the queue.")
        except Exception as err:  # an unexpected failure must not leave the page stuck in "running"
            job.cancel()
            self._fail(f"The run failed: {err}")
        finally:
            self.ticket.leave()
            self.job = None
            with self.state:
                self.state.update({"running": False, "queue_message": ""})

    async def _wait_for_turn(self) -> bool:
        while (ahead := self.ticket.ahead()) > 0:
            if self.cancel_requested:
                return False
            with self.state:
                self.state.queue_message = (f"Queued: {ahead} run{'s' if ahead > 1 else ''} ahead of yours "
                                            "on this server.")
            await asyncio.sleep(QUEUE_POLL_S)
        with self.state:
            self.state.queue_message = ""
        return not self.cancel_requested

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.job is not None and self.job.state is State.RUNNING:
            self.job.cancel()

    def _on_progress(self, fraction: Optional[float], message: str) -> None:
        with self.state:
            if fraction is not None:  # a stage without a fraction keeps the bar where it was
                self.state.progress = round(100 * fraction)
            self.state.progress_message = message

    def _finished(self, job: WebSegmentationJob, seconds: float) -> None:
        if job.state is State.FAILED:
            return self._fail(job.error_message)
        if job.state is not State.SUCCEEDED:
            return self._set_final_status(job.error_message or "Cancelled.")
        self._drop_result()
        self.result = job
        self.label_names = {label: segment_info(name)[0]
                            for label, name in get_task(job.request.task).classes.items()}
        node = job.segmentation_node
        node.CreateClosedSurfaceRepresentation()
        self._on_display()
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_view()
        with self.state:
            self.state.segments = self._segment_rows()
            self.state.statistics = self._statistics_table(job)
            self.state.downloads = [{"kind": kind, "label": DOWNLOAD_KINDS[kind][1], "href": f"download/{kind}",
                                     "file": path.name} for kind, path in job.downloads.items()]
            self.state.progress, self.state.progress_message = 100, f"Done in {seconds:.0f} s."
            self.state.status_message = ""

    def _statistics_table(self, job: WebSegmentationJob) -> list[dict]:
        """A row per segment of the result. TotalSegmentator measures no structure cut off by the image's first
        or last slice (it reports 0 there, as the official tool does without --stats_include_incomplete): say so."""
        if job.statistics is None:
            return []
        segmentation = job.segmentation_node.GetSegmentation()
        present = {segmentation_import.segment_tag(segmentation.GetSegment(sid), segmentation_import.CLASS_TAG)
                   for sid in segmentation.GetSegmentIDs()}
        return [{"name": row["name"],
                 "volume_ml": round(row["volume_mm3"] / 1000, 2) if row["volume_mm3"] else "cut off: not measured",
                 "intensity": round(row["intensity"], 1) if row["volume_mm3"] else ""}
                for row in job.statistics if row["structure"] in present]

    def _set_final_status(self, message: str) -> None:
        with self.state:
            self.state.status_message, self.state.progress_message = self._for_user(message), ""

    def _segment_rows(self) -> list[dict]:
        node = self.result.segmentation_node
        segmentation, display = node.GetSegmentation(), node.GetDisplayNode()
        return [{"id": sid, "name": segmentation.GetSegment(sid).GetName(),
                 "color": _hex(segmentation.GetSegment(sid).GetColor()),
                 "visible": bool(display.GetSegmentVisibility(sid))} for sid in segmentation.GetSegmentIDs()]

    # ------------------------------------------------------------------ display

    def set_segment_visible(self, segment_id: str, visible: bool) -> None:
        if self.result is None:
            return
        self.result.segmentation_node.GetDisplayNode().SetSegmentVisibility(segment_id, bool(visible))
        self.state.segments = self._segment_rows()

    def jump_to_segment(self, segment_id: str) -> None:
        """Move every slice view through a segment's centre, as a click in Slicer's segment list does."""
        if self.result is None:
            return
        center = self.result.segmentation_node.GetSegmentCenterRAS(segment_id)
        if center is not None:
            slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, *center, slicer.vtkMRMLSliceNode.OffsetJumpSlice)

    def _on_display(self, **_) -> None:
        if self.result is None:
            return
        display = self.result.segmentation_node.GetDisplayNode()
        display.SetOpacity(float(self.state.opacity))
        display.SetVisibility3D(bool(self.state.show_3d))

    def apply_preset(self, preset: str) -> None:
        if self.volume is not None:
            self.slicer_app.volumes_logic.ApplyVolumeDisplayPreset(self.volume.GetVolumeDisplayNode(), preset)

    def _on_cursor(self, crosshair, _event) -> None:
        ras = [0.0, 0.0, 0.0]
        if self.volume is None or not crosshair.GetCursorPositionRAS(ras):
            return
        text = probe.describe(self.volume, ras, self.result.labels if self.result else None, self.label_names)
        if text != self.state.probe_text:
            with self.state:
                self.state.probe_text = text

    # ------------------------------------------------------------------ downloads and messages

    async def download(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        path = self.result.downloads.get(kind) if self.result else None
        if path is None or not path.exists():
            return web.Response(status=404, text="Nothing to download yet: run a segmentation first.")
        return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})

    def _fail(self, message: str) -> None:
        """Show an error; whatever was loading has ended (the page set busy_loading itself for an upload)."""
        with self.state:
            self.state.error_message, self.state.status_message = self._for_user(message), ""
            self.state.busy_loading = False

    def _for_user(self, message: str) -> str:
        """The open input by the name the user gave, data-root files by their path there, no other server path."""
        known = {self.opened.source: self.opened.name} if self.opened else {}
        if self.data_root:
            known.update({f"{self.data_root.root}/": "", self.data_root.root: "the data folder"})
        return messages.for_user(message, known)


def _voxel_count(volume: slicer.vtkMRMLScalarVolumeNode) -> int:
    x, y, z = volume.GetImageData().GetDimensions()
    return x * y * z


async def _chunks(part):
    while chunk := await part.read_chunk(inputs.CHUNK_BYTES):
        yield chunk


async def _file_part(request: web.Request) -> Optional[BodyPartReader]:
    """The first part of a multipart/form-data body when it is a file; None for any other body."""
    if request.content_type != "multipart/form-data":
        return None
    try:
        part = await (await request.multipart()).next()
    except (ValueError, AssertionError, KeyError):  # no boundary, a malformed or empty body
        return None
    return part if isinstance(part, BodyPartReader) and part.filename else None


def _answer(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status)


def _upload_failed(name: str, err: Exception) -> web.Response:
    """413 for a file over the limit, 400 for a body cut off or malformed, 507 when the server's disk is full."""
    if isinstance(err, inputs.UploadTooLargeError):
        return _answer(413, str(err))
    if isinstance(err, OSError):
        print(f"upload of {name} failed: {err!r}", file=sys.stderr, flush=True)
        return _answer(507, f"The server could not store '{name}'. Tell the administrator (see the server's log).")
    return _answer(400, f"The upload of '{name}' was cut off or malformed. Upload it again.")


def main() -> int:
    # SIGTERM comes from the launcher, or from the kernel when the launcher died: leave through the cleanup below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    options = SessionSettings.from_line(sys.stdin.readline())  # from the launcher: secrets stay off command lines
    sys.argv = sys.argv[:1]  # trame parses the command line too
    server = get_server(name="totalseg_web", client_type="vue3")
    try:
        Session(server, options)
        server.start(port=options.port, host="127.0.0.1", open_browser=False, timeout=options.idle_timeout,
                     show_connection_info=False, disable_logging=True)
    finally:
        cancel_all()
        shutil.rmtree(options.session_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
