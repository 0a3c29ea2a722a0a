"""``totalseg_server``: the segmentation API alone (no browser app, no trame), for a GPU machine that Slicer
workstations, scripts, ``TotalSegmentator --server`` and MONAI Label's clients use.

It listens on 127.0.0.1 unless ``--host`` says otherwise (then a token is required: given, or printed at start),
starts one warm engine slot per ``--gpus`` entry (or ``--slots`` on the CPU), prints one line with its address
once it listens (``--port 0`` picks a free port), and on SIGINT or SIGTERM stops its slots and removes its work
folder. A work folder left by a server that was killed (SIGKILL leaves no chance to clean up) is removed by the
next server started on the same ``--work-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Optional

from aiohttp import web
from totalseg_web import access
from totalseg_web.run_queue import RunQueue

from .api import api_middlewares
from .mount import MountedApi, add_api_arguments, check_api_options
from .slots import SlotSpec

TOKEN_VARIABLE = "TOTALSEG_SERVER_TOKEN"
DEFAULT_PORT = 8000
WORK_PREFIX = "totalseg_server-"
PID_FILE = "server.pid"
SHUTDOWN_TIMEOUT_S = 15.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_server", description=(
        "TotalSegmentator as a server: an HTTP API (and MONAI Label's) that segments images sent by Slicer, "
        "scripts and TotalSegmentator --server, on warm engines that keep their models loaded."))
    access.add_access_arguments(p, TOKEN_VARIABLE, DEFAULT_PORT)
    p.add_argument("--max-upload-mb", type=float, default=2048, help="largest image upload, also for a zip's "
                   "unpacked content (default 2048)")
    p.add_argument("--work-dir", type=Path, help="where uploads and results live (default: the system's "
                   "temporary folder); removed on exit")
    add_api_arguments(p)
    return p


def banner(options: argparse.Namespace, port: int, token: Optional[str], generated: bool,
           specs: list[SlotSpec]) -> str:
    shown = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    host = f"[{shown}]" if ":" in shown else shown
    lines = [f"TotalSegmentator server: http://{host}:{port}/ (API /api/v1, MONAI Label /info/)",
             "slots: " + ", ".join(f"{spec.index}: {spec.device}" for spec in specs)]
    if token is not None:
        lines.append(f"access token: {token} (clients: {TOKEN_VARIABLE})" if generated else
                     "access token: as given (clients send it as Authorization: Bearer)")
    warning = access.open_server_warning(options, token)
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def remove_abandoned_work(parent: Path) -> None:
    """Work folders of servers that were killed before they could remove them (their process is gone)."""
    for folder in parent.glob(f"{WORK_PREFIX}*"):
        try:
            pid = int((folder / PID_FILE).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            continue


def make_work(parent: Optional[Path]) -> Path:
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    root = Path(parent or tempfile.gettempdir())
    remove_abandoned_work(root)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=root))
    (work / PID_FILE).write_text(str(os.getpid()))
    return work


def make_app(options: argparse.Namespace, specs: list[SlotSpec], token: Optional[str], work: Path) -> web.Application:
    mounted = MountedApi(options, specs, token, work, RunQueue(work / "queue", len(specs)))
    app = web.Application(client_max_size=1 << 20,
                          middlewares=[access.host_check(options), *api_middlewares(mounted.access)])
    mounted.install(app)
    return app


async def serve(app: web.Application, options: argparse.Namespace, announce) -> None:
    """Listen until SIGINT or SIGTERM, then shut down cleanly (slots stopped, files removed)."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port)
        await site.start()
        announce(runner.addresses[0][1])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    access.check_access_options(parser, options, TOKEN_VARIABLE)
    specs = check_api_options(parser, options)
    if options.max_upload_mb <= 0:
        parser.error("--max-upload-mb must be positive.")
    access.warn_if_token_on_command_line(options, TOKEN_VARIABLE)
    given = bool(options.token or options.token_file or os.environ.get(TOKEN_VARIABLE, "").strip())
    token = access.access_token(options, TOKEN_VARIABLE)
    work = make_work(options.work_dir)
    try:
        app = make_app(options, specs, token, work)
        asyncio.run(serve(app, options, lambda port: print(banner(options, port, token, not given, specs),
                                                             flush=True)))
    except OSError as err:
        print(f"ERROR: cannot listen on {options.host}:{options.port}: {err.strerror or err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
