"""``totalseg_web``: the server's one address. Checks the token, starts one session process per browser session,
proxies the browser to it (HTTP and WebSocket), and removes a session's files when it ends.

A trame server shares one state between all its browsers, so each session is a process of its own
(``session_app``) with its own scene, listening on 127.0.0.1 and answering only requests that carry the
launcher's secret. ``GET /`` makes a new session and redirects to ``/s/<id>/``; the id is an unguessable
capability. Runs from all sessions take turns through one ``RunQueue``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import aiohttp
from aiohttp import web

from .protocol import PORT_LINE, PROXY_HEADER, SESSION_MODULE
from .run_queue import RunQueue

TOKEN_COOKIE = "totalseg_web_token"
START_TIMEOUT_S = 180.0
HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length"}
LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


@dataclass
class SessionProcess:
    id: str
    folder: Path
    process: asyncio.subprocess.Process
    port: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Launcher:
    def __init__(self, options: argparse.Namespace, token: Optional[str]) -> None:
        self.options = options
        self.token = token
        if options.work_dir:
            options.work_dir.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="totalseg_web-", dir=options.work_dir))
        self.queue = RunQueue(self.work / "queue", options.concurrent_runs)
        self.secret = secrets.token_urlsafe(32)
        self.sessions: dict[str, SessionProcess] = {}
        self.client: Optional[aiohttp.ClientSession] = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=0)
        app.router.add_get("/", self.new_session)
        app.router.add_get("/s/{sid}", self.add_slash)
        app.router.add_route("*", "/s/{sid}/{tail:.*}", self.proxy)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        return app

    # ------------------------------------------------------------------ access

    def _authorised(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        given = request.query.get("token") or request.cookies.get(TOKEN_COOKIE, "")
        return hmac.compare_digest(given, self.token)

    def _refused(self) -> web.Response:
        return web.Response(status=401, content_type="text/plain", text=(
            "This TotalSegmentator server needs its access token: open the address printed when it started "
            "(http://host:port/?token=...)."))

    # ------------------------------------------------------------------ sessions

    async def new_session(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return self._refused()
        if len(self.sessions) >= self.options.max_sessions:
            return web.Response(status=503, text=(
                f"This server already has {len(self.sessions)} open sessions (--max-sessions). Close a browser tab "
                "of this app, or try again in a few minutes."))
        session = await self._start_session()
        response = web.HTTPFound(f"/s/{session.id}/")
        if self.token is not None:
            # Lax, not Strict: a Strict cookie is not sent when the address was opened from a link on another site
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Lax")
        return response

    async def _start_session(self) -> SessionProcess:
        sid = secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")
        folder = self.work / "sessions" / sid
        folder.mkdir(parents=True)
        command = [sys.executable, "-m", SESSION_MODULE, "--session-dir", str(folder),
                   "--queue-dir", str(self.queue.folder), "--max-upload-mb", str(self.options.max_upload_mb),
                   "--concurrent-runs", str(self.options.concurrent_runs), "--idle-timeout",
                   str(self.options.session_timeout), "--proxy-secret", self.secret]
        if self.options.data_root:
            command += ["--data-root", str(self.options.data_root)]
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        session = SessionProcess(sid, folder, process)
        self.sessions[sid] = session
        asyncio.get_event_loop().create_task(self._watch(session))
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

    async def _watch(self, session: SessionProcess) -> None:
        """Read the session's port, pass its other output on, and clean up after it when it exits."""
        async for line in session.process.stdout:
            text = line.decode(errors="replace").rstrip()
            if text.startswith(PORT_LINE):
                session.port = int(text[len(PORT_LINE):])
                session.ready.set()
            elif text:
                print(f"[session {session.id[:6]}] {text}", flush=True)
        await session.process.wait()
        self._forget(session)
        session.ready.set()  # wakes a request still waiting for it to start (port 0: it never listened)

    def _forget(self, session: SessionProcess) -> None:
        self.sessions.pop(session.id, None)
        self.queue.drop_owner(session.id)
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
        if not self._authorised(request):
            return self._refused()
        session = self.sessions.get(request.match_info["sid"])
        if session is None or not session.ready.is_set():
            return _ended()
        try:
            return await self._forward(request, session)
        except aiohttp.ClientConnectionError:  # the session is exiting: its port is already closed
            return _ended()

    async def _forward(self, request: web.Request, session: SessionProcess) -> web.StreamResponse:
        url = f"http://127.0.0.1:{session.port}/{request.match_info['tail']}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        headers[PROXY_HEADER] = self.secret
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._proxy_websocket(request, url, headers)
        async with self.client.request(request.method, url, params=request.query, headers=headers,
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
    p = argparse.ArgumentParser(prog="totalseg_web", description=(
        "TotalSegmentator in the browser: segment CT and MR images on this server from any browser on the network."))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only). Any other address needs the access token printed at start, unless --no-token.")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--data-root", type=Path, help="a folder whose images users may open from the browser; "
                   "nothing outside it is reachable")
    p.add_argument("--max-upload-mb", type=float, default=2048, help="largest upload, also for a zip's unpacked "
                   "content (default 2048)")
    p.add_argument("--token", help="access token to require (default: a random one when --host is not local)")
    p.add_argument("--no-token", action="store_true", help="serve a non-local --host without a token (anyone "
                   "who can reach the port can use the server and see what its users upload)")
    p.add_argument("--concurrent-runs", type=int, default=1, help="segmentations running at once; the others "
                   "queue (default 1: one GPU)")
    p.add_argument("--max-sessions", type=int, default=8, help="browser sessions open at once (default 8)")
    p.add_argument("--session-timeout", type=int, default=300, help="seconds a session survives without its "
                   "browser before its scene and files are removed (default 300)")
    p.add_argument("--work-dir", type=Path, help="where sessions keep uploads and results (default: the "
                   "system's temporary folder); removed on exit")
    return p


def access_token(options: argparse.Namespace) -> Optional[str]:
    """The token to require: the given one, none on localhost or with --no-token, else a new random one."""
    if options.token:
        return options.token
    if is_loopback(options.host) or options.no_token:
        return None
    return secrets.token_urlsafe(16)


def check_options(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    if options.data_root and not options.data_root.is_dir():
        parser.error(f"--data-root {options.data_root} is not a folder.")
    for name in ("max_upload_mb", "concurrent_runs", "max_sessions", "session_timeout"):
        if getattr(options, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive.")
    if options.token and options.no_token:
        parser.error("--token and --no-token exclude each other.")


def banner(options: argparse.Namespace, token: Optional[str], port: int) -> str:
    shown = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    lines = [f"TotalSegmentator web app: open {url}"]
    if token is None and not is_loopback(options.host):
        lines.append("WARNING: this server is OPEN: anyone who can reach this address can use it and see what "
                     "its users upload. Leave out --no-token to require an access token.")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    check_options(parser, options)
    token = access_token(options)
    launcher = Launcher(options, token)
    print(banner(options, token, options.port), flush=True)
    web.run_app(launcher.app(), host=options.host, port=options.port, print=None, shutdown_timeout=15)
    return 0


def run() -> None:
    """Console script. aiohttp turns SIGINT and SIGTERM into a clean shutdown: sessions stopped, files removed."""
    sys.exit(main())


if __name__ == "__main__":
    run()
