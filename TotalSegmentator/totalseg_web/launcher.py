"""``totalseg_web``: the server's one address. Checks the host name and the token, starts one session process per
browser session, proxies the browser to it (HTTP and WebSocket), and removes a session's files when it ends.

A trame server shares one state between all its browsers, so each session is a process of its own
(``session_app``) with its own scene, listening on 127.0.0.1 and answering only requests that carry the
launcher's secret. ``GET /`` makes a new session and redirects to ``/s/<id>/``; the id is an unguessable
capability, known only to the launcher and the browser (the session's folder has another name, as command lines
show folders). Runs from all sessions take turns through one ``RunQueue``.

Whatever ends the launcher, SIGKILL included, ends its sessions (``totalseg_engine.lifeline``: the kernel's
parent-death signal on Linux, a watchdog elsewhere), and each session's engine runs end with it the same way.
Sessions are counted by a ``Capacity``, taken before anything is awaited, so parallel requests cannot pass it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import aiohttp
from aiohttp import web
from totalseg_engine import Lifeline

from . import access
from .access import host_check, is_loopback  # noqa: F401  (is_loopback: part of the launcher's interface)
from .capacity import Capacity, Place
from .protocol import PORT_LINE, PROXY_HEADER, SESSION_MODULE, SessionSettings, same_secret
from .run_queue import RunQueue

TOKEN_COOKIE = "totalseg_web_token"
TOKEN_PARAMETER = "token"
TOKEN_VARIABLE = "TOTALSEG_WEB_TOKEN"
START_TIMEOUT_S = 180.0
HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length"}
NOT_FORWARDED = HOP_HEADERS | {"cookie"}  # the token cookie stays with the launcher; sessions use no cookies


@dataclass
class SessionProcess:
    id: str
    folder: Path
    process: asyncio.subprocess.Process
    place: Place
    lifeline: Lifeline
    port: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Launcher:
    def __init__(self, options: argparse.Namespace, token: Optional[str], api_slots: Optional[list] = None) -> None:
        self.options = options
        self.token = token
        if options.work_dir:
            options.work_dir.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="totalseg_web-", dir=options.work_dir))
        self.queue = RunQueue(self.work / "queue", options.concurrent_runs)
        self.secret = secrets.token_urlsafe(32)
        self.sessions: dict[str, SessionProcess] = {}
        self.session_places = Capacity(options.max_sessions)
        self.client: Optional[aiohttp.ClientSession] = None
        self.api = None
        if api_slots:  # --api: the segmentation API on this token and run queue (its jobs take turns with runs)
            from totalseg_server.mount import MountedApi

            self.api = MountedApi(options, api_slots, token, self.work, self.queue, cookie=TOKEN_COOKIE)

    def app(self) -> web.Application:
        api_checks = []
        if self.api is not None:
            from totalseg_server.api import api_middlewares

            api_checks = api_middlewares(self.api.access)
        app = web.Application(client_max_size=0,
                              middlewares=[host_check(self.options), *api_checks, self._check_token])
        if self.api is not None:  # first, so that the API stops (its slots, its jobs' files) before the rest
            self.api.install(app)
        app.router.add_get("/", self.new_session)
        app.router.add_get("/s/{sid}", self.add_slash)
        app.router.add_route("*", "/s/{sid}/{tail:.*}", self.proxy)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        return app

    # ------------------------------------------------------------------ access

    @web.middleware
    async def _check_token(self, request: web.Request, handler) -> web.StreamResponse:
        """The token from the address (first visit: kept in a cookie, and the address is given again without it,
        so it leaves the address bar and the history) or from the cookie. The API's paths have their own check."""
        if self.token is None or (self.api is not None and _api_path(request.path)):
            return await handler(request)
        given = request.query.get(TOKEN_PARAMETER)
        if given is None:
            given = _cookie(request, TOKEN_COOKIE)
        elif same_secret(given, self.token) and request.method in ("GET", "HEAD"):
            response = web.HTTPFound(str(request.rel_url.without_query_params(TOKEN_PARAMETER)))
            # Lax, not Strict: a Strict cookie is not sent when the address was opened from a link on another site
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Lax")
            return response
        if not same_secret(given, self.token):
            return web.Response(status=401, content_type="text/plain", text=(
                "This TotalSegmentator server needs its access token: open the address printed when it started "
                "(http://host:port/?token=...). Your browser must accept cookies from it."))
        return await handler(request)

    # ------------------------------------------------------------------ sessions

    async def new_session(self, request: web.Request) -> web.StreamResponse:
        place = self.session_places.take()  # before any await: parallel requests cannot all pass
        if place is None:
            return web.Response(status=503, text=(
                f"This server already has {self.session_places.limit} open sessions (--max-sessions). Close a "
                "browser tab of this app, or try again in a few minutes."))
        session = await self._start_session(place)
        return web.HTTPFound(f"/s/{session.id}/")

    async def _start_session(self, place: Place) -> SessionProcess:
        sid = secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")
        session = await self._spawn(sid, self.work / "sessions" / secrets.token_hex(8), place)
        try:
            await asyncio.wait_for(session.ready.wait(), START_TIMEOUT_S)
        except asyncio.TimeoutError as err:
            await self._stop(session)
            raise web.HTTPServiceUnavailable(text="The session did not start in time; see the server's log.") from err
        if not session.port:  # it exited before listening
            raise web.HTTPServiceUnavailable(text=(
                f"The session could not start (exit status {session.process.returncode}); the server's log says "
                "why. Tell the administrator."))
        return session

    async def _spawn(self, sid: str, folder: Path, place: Place) -> SessionProcess:
        """Start a session process tied to this one, in ``folder`` (not named by ``sid``: command lines show
        folders), and give it its settings."""
        settings = SessionSettings(
            session_dir=str(folder), queue_dir=str(self.queue.folder), proxy_secret=self.secret,
            max_upload_mb=self.options.max_upload_mb, concurrent_runs=self.options.concurrent_runs,
            idle_timeout=self.options.session_timeout,
            data_root=str(self.options.data_root) if self.options.data_root else None)
        lifeline = Lifeline(sig=signal.SIGTERM)  # SIGTERM: a session whose launcher died still removes its files
        try:
            folder.mkdir(parents=True)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", SESSION_MODULE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                **lifeline.popen_options())
        except OSError:
            place.release()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        lifeline.attach(process.pid)
        session = SessionProcess(sid, folder, process, place, lifeline)
        self.sessions[sid] = session
        asyncio.get_event_loop().create_task(self._watch(session))
        await _send_settings(process, settings)
        return session

    async def _watch(self, session: SessionProcess) -> None:
        """Read the session's port, pass its other output on, and clean up after it when it exits."""
        async for line in session.process.stdout:
            text = line.decode(errors="replace").rstrip()
            if text.startswith(PORT_LINE):
                session.port = int(text[len(PORT_LINE):])
                session.ready.set()
            elif text:
                print(f"[session {session.folder.name[:6]}] {text}", flush=True)
        await session.process.wait()
        self._forget(session)
        session.ready.set()  # wakes a request still waiting for it to start (port 0: it never listened)

    def _forget(self, session: SessionProcess) -> None:
        """Once its process has exited: its place, its queue tickets (an engine it left is killed first), files."""
        self.sessions.pop(session.id, None)
        session.lifeline.release()
        session.place.release()
        self.queue.drop_owner(session.folder.name)
        shutil.rmtree(session.folder, ignore_errors=True)

    async def _stop(self, session: SessionProcess) -> None:
        if session.process.returncode is None:
            session.process.terminate()
            try:
                await asyncio.wait_for(session.process.wait(), 10)
            except asyncio.TimeoutError:
                session.process.kill()
                await session.process.wait()
        self._forget(session)
        session.ready.set()  # wakes a request still waiting for it to start (port 0: it never listened)

    # ------------------------------------------------------------------ proxy

    async def add_slash(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/s/{request.match_info['sid']}/")

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.match_info["sid"])
        if session is None or not session.ready.is_set():
            return _ended()
        try:
            return await self._forward(request, session)
        except aiohttp.ClientConnectionError:  # the session is exiting: its port is already closed
            return _ended()

    async def _forward(self, request: web.Request, session: SessionProcess) -> web.StreamResponse:
        url = f"http://127.0.0.1:{session.port}/{request.match_info['tail']}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        headers[PROXY_HEADER] = self.secret
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._proxy_websocket(request, url, headers)
        query = request.rel_url.without_query_params(TOKEN_PARAMETER).query
        async with self.client.request(request.method, url, params=query, headers=headers,
                                       data=request.content if request.body_exists else None,
                                       allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS})
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(1 << 16):
                await response.write(chunk)
            await response.write_eof()
            return response

    async def _proxy_websocket(self, request: web.Request, url: str, headers: dict) -> web.WebSocketResponse:
        browser = web.WebSocketResponse(max_msg_size=0)
        await browser.prepare(request)
        headers = {k: v for k, v in headers.items() if not k.lower().startswith("sec-websocket")}
        async with self.client.ws_connect(url, headers=headers, max_msg_size=0) as session_ws:
            await asyncio.gather(_pump(browser, session_ws), _pump(session_ws, browser))
        await browser.close()
        return browser

    # ------------------------------------------------------------------ life cycle

    async def _startup(self, _app) -> None:
        self.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def _shutdown(self, _app) -> None:
        await asyncio.gather(*(self._stop(s) for s in list(self.sessions.values())))
        if self.client is not None:
            await self.client.close()
        shutil.rmtree(self.work, ignore_errors=True)


async def _send_settings(process: asyncio.subprocess.Process, settings: SessionSettings) -> None:
    """Settings and secret through the session's standard input: nothing secret on its command line."""
    with contextlib.suppress(ConnectionError):  # it exited at once: _watch reports that
        process.stdin.write(settings.to_line())
        await process.stdin.drain()
    process.stdin.close()


def _cookie(request: web.Request, name: str) -> str:
    """A cookie's value; '' when the Cookie header cannot be parsed (a client may send any bytes)."""
    try:
        return request.cookies.get(name, "")
    except (ValueError, KeyError, UnicodeError):
        return ""


def _api_path(path: str) -> bool:
    from totalseg_server.api import owns

    return owns(path)


def _ended() -> web.Response:
    return web.Response(status=404, content_type="text/html", text=(
        "This session has ended (its page was closed for too long, or the server restarted). "
        '<a href="/">Start a new one</a>.'))


async def _pump(source, target) -> None:
    async for message in source:
        if message.type == aiohttp.WSMsgType.BINARY:
            await target.send_bytes(message.data)
        elif message.type == aiohttp.WSMsgType.TEXT:
            await target.send_str(message.data)
        else:
            break
    with contextlib.suppress(Exception):
        await target.close()


def build_parser() -> argparse.ArgumentParser:
    from totalseg_server.mount import add_api_arguments

    p = argparse.ArgumentParser(prog="totalseg_web", description=(
        "TotalSegmentator in the browser: segment CT and MR images on this server from any browser on the network."))
    access.add_access_arguments(p, TOKEN_VARIABLE, 8080)
    p.add_argument("--data-root", type=Path, help="a folder whose images users may open from the browser; "
                   "nothing outside it is reachable")
    p.add_argument("--max-upload-mb", type=float, default=2048, help="largest upload, also for a zip's unpacked "
                   "content (default 2048)")
    p.add_argument("--concurrent-runs", type=int, default=1, help="segmentations running at once; the others "
                   "queue (default 1: one GPU)")
    p.add_argument("--max-sessions", type=int, default=8, help="browser sessions open at once (default 8)")
    p.add_argument("--session-timeout", type=int, default=300, help="seconds a session survives without its "
                   "browser before its scene and files are removed (default 300)")
    p.add_argument("--work-dir", type=Path, help="where sessions keep uploads and results (default: the "
                   "system's temporary folder); removed on exit")
    p.add_argument("--api", action="store_true", help="also serve the segmentation API (/api/v1, and MONAI "
                   "Label's routes) on the same token, its jobs taking turns with the browser runs; the options "
                   "below are the API's")
    add_api_arguments(p)
    return p


def access_token(options: argparse.Namespace) -> Optional[str]:
    """The token to require (see :func:`.access.access_token`), from ``TOTALSEG_WEB_TOKEN`` among others."""
    return access.access_token(options, TOKEN_VARIABLE)


def check_options(parser: argparse.ArgumentParser, options: argparse.Namespace) -> list:
    """Refuse bad options (exit status 2); the API's slots (none without --api)."""
    from totalseg_server.mount import check_api_options, refuse_api_options

    if options.data_root and not options.data_root.is_dir():
        parser.error(f"--data-root {options.data_root} is not a folder.")
    for name in ("max_upload_mb", "concurrent_runs", "max_sessions", "session_timeout"):
        if getattr(options, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive.")
    access.check_access_options(parser, options, TOKEN_VARIABLE)
    if not options.api:
        refuse_api_options(parser, options)
        return []
    return check_api_options(parser, options)


def banner(options: argparse.Namespace, token: Optional[str], port: int) -> str:
    shown = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    lines = [f"TotalSegmentator web app: open {url}"]
    if getattr(options, "api", False):
        lines.append(f"API: http://{shown}:{port}/api/v1 (and MONAI Label's /info/)"
                     + (", the same token as 'Authorization: Bearer'" if token else ""))
    warning = access.open_server_warning(options, token)
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    specs = check_options(parser, options)
    access.warn_if_token_on_command_line(options, TOKEN_VARIABLE)
    token = access_token(options)
    launcher = Launcher(options, token, specs)
    print(banner(options, token, options.port), flush=True)
    web.run_app(launcher.app(), host=options.host, port=options.port, print=None, shutdown_timeout=15)
    return 0


def run() -> None:
    """Console script. aiohttp turns SIGINT and SIGTERM into a clean shutdown: sessions stopped, files removed."""
    sys.exit(main())


if __name__ == "__main__":
    run()
