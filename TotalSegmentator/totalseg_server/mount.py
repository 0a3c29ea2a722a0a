"""The API as a part of an aiohttp application: its options, its service (slots, queue, jobs), its routes and its
start and stop. ``totalseg_server`` mounts it alone; ``totalseg_web --api`` mounts it beside the browser app, on
the launcher's token and run queue."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from aiohttp import web
from totalseg_web.run_queue import RunQueue

from .api import Access, Api
from .monai import MonaiLabel
from .service import SegmentationService
from .slots import SlotSpec, parse_gpus, slot_specs

API_DEFAULTS = {"gpus": None, "slots": None, "max_jobs": 16, "keep_results": 3600, "download_weights": False}


def add_api_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the API's slots and jobs (both commands)."""
    p.add_argument("--gpus", metavar="LIST", help="one warm engine slot per GPU listed (such as 0,1); each slot "
                   "sees only its GPU. Default: --slots CPU slots")
    p.add_argument("--slots", type=int, metavar="N", help="warm engine slots on the CPU (default 1), sharing its cores")
    p.add_argument("--max-jobs", type=int, default=API_DEFAULTS["max_jobs"], help="jobs held at once, queued or "
                   "running (default 16); more are refused with 503")
    p.add_argument("--keep-results", type=float, default=API_DEFAULTS["keep_results"], metavar="SECONDS",
                   help="how long a finished job's results stay for download (default 3600); everything is removed "
                   "when the server stops")
    p.add_argument("--download-weights", action="store_true", help="let jobs download missing weights (default: "
                   "only tasks whose weights are installed run; install them with totalseg_download_weights)")


def refuse_api_options(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """``totalseg_web`` without ``--api``: an API option given anyway is a usage error, never silently ignored."""
    for name, default in API_DEFAULTS.items():
        if getattr(options, name) != default:
            parser.error(f"--{name.replace('_', '-')} needs --api: it sets the segmentation API's slots and jobs.")


def check_api_options(parser: argparse.ArgumentParser, options: argparse.Namespace) -> list[SlotSpec]:
    """The slots the options ask for; a usage error (exit status 2) for bad ones."""
    if options.gpus and options.slots:
        parser.error("--gpus and --slots exclude each other: --gpus gives one slot per GPU.")
    for name in ("max_jobs", "keep_results"):
        if getattr(options, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive.")
    if options.slots is not None and options.slots < 1:
        parser.error("--slots must be at least 1.")
    try:
        gpus = parse_gpus(options.gpus) if options.gpus else None
    except ValueError as err:
        parser.error(str(err))
    return slot_specs(gpus, options.slots)


class MountedApi:
    """Service, routes and life cycle of the API inside one application."""

    def __init__(self, options: argparse.Namespace, specs: list[SlotSpec], token: Optional[str], work: Path,
                 queue: RunQueue, cookie: Optional[str] = None) -> None:
        max_upload = int(options.max_upload_mb * 2**20)
        self.service = SegmentationService(work, specs, queue, options.max_jobs, options.keep_results,
                                           download=options.download_weights)
        self.api = Api(self.service, max_upload)
        self.monai = MonaiLabel(self.api, token, work)
        self.access = Access(token, cookie)

    def install(self, app: web.Application) -> None:
        self.api.add_routes(app)
        self.monai.add_routes(app)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._stop)

    async def _start(self, _app: web.Application) -> None:
        await self.service.start()

    async def _stop(self, _app: web.Application) -> None:
        await self.service.stop()
        self.monai.remove_all()
