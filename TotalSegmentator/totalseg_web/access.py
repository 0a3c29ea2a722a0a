"""Who may use a server, for the browser launcher (``totalseg_web``) and the API server (``totalseg_server``) alike.

- **Host names**: a server answers only to its own names (loopback names, this machine's names, the listening
  address, every ``--allowed-host``). A page on another site that renames itself to this server's address (DNS
  rebinding) sends its own name, and is refused.
- **The access token**: given with ``--token``, ``--token-file`` or an environment variable (removed once read, so
  that no child inherits it); none on a loopback address unless given; a random one on any other address unless
  ``--no-token`` says loudly that the server is open. Compared in constant time (:func:`.protocol.same_secret`).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Optional

from aiohttp import web

LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
BEARER = "bearer "


def is_loopback(host: str) -> bool:
    """Names and addresses only this machine reaches: localhost, 127.0.0.0/8 (all of it is the loopback
    interface: no packet to it leaves the machine) and ::1."""
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without port or brackets, lower case ('' when there is none)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else ""
    name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".")


def allowed_hosts(options: argparse.Namespace) -> set[str]:
    """Host names the server answers to: loopback names, this machine's names, the listening address and every
    ``--allowed-host``."""
    names = {*LOOPBACK_NAMES, "127.0.0.1", "::1", options.host.lower()}
    names |= {name.lower().rstrip(".") for name in options.allowed_host or []}
    if not is_loopback(options.host):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return names


def host_allowed(name: str, allowed: set[str], listening_host: str) -> bool:
    """A known name (or none: HTTP/1.0); or, on a server listening beyond this machine, any address (not a name: no
    DNS involved, so no rebinding)."""
    if not name or name in allowed:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or not is_loopback(listening_host)


def host_check(options: argparse.Namespace):
    """An aiohttp middleware that refuses every request whose Host header is not one of the server's names."""
    allowed = allowed_hosts(options)

    @web.middleware
    async def check_host(request: web.Request, handler) -> web.StreamResponse:
        name = host_name(request.headers.get("Host", ""))
        if not host_allowed(name, allowed, options.host):
            return web.Response(status=400, text=(
                f"This server does not answer to the name '{name[:100]}'. Open it by its own address; behind a "
                f"reverse proxy, its administrator starts it with --allowed-host {name[:100] or 'NAME'}."))
        return await handler(request)

    return check_host


def bearer_token(request: web.Request) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` header (None without one)."""
    header = request.headers.get("Authorization", "")
    return header[len(BEARER):].strip() if header.lower().startswith(BEARER) else None


# ---------------------------------------------------------------- options


def add_access_arguments(p: argparse.ArgumentParser, variable: str, port: int) -> None:
    """--host, --port and the token options, the same for both servers."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only). Any other address needs the access token printed at start, unless --no-token.")
    p.add_argument("--port", type=int, default=port, help=f"port (default {port}; 0: any free port, printed at start)")
    p.add_argument("--token", help="access token to require (default: a random one when --host is not local). "
                   f"Every user of this machine can read a command line (ps): prefer {variable} or --token-file")
    p.add_argument("--token-file", type=Path, help="read the access token from the first line of this file "
                   "(readable by the server's user only: chmod 600)")
    p.add_argument("--no-token", action="store_true", help="serve a non-local --host without a token (anyone "
                   "who can reach the port can use the server and see what its users upload)")
    p.add_argument("--allowed-host", action="append", metavar="NAME", help="a host name clients may use for "
                   "this server besides its own names (behind a reverse proxy that passes its own name); repeatable")


def check_access_options(parser: argparse.ArgumentParser, options: argparse.Namespace, variable: str) -> None:
    if (options.token or options.token_file or os.environ.get(variable)) and options.no_token:
        parser.error(f"--token/--token-file/{variable} and --no-token exclude each other.")
    if options.token_file and not options.token_file.is_file():
        parser.error(f"--token-file {options.token_file} is not a file.")
    if not 0 <= options.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {options.port}.")


def access_token(options: argparse.Namespace, variable: str) -> Optional[str]:
    """The token to require: the given one (--token, --token-file or ``variable``), none on localhost or with
    --no-token, else a new random one. The variable is removed here, so no child process inherits it."""
    from_environment = os.environ.pop(variable, "").strip()
    given = options.token or _token_from_file(options.token_file) or from_environment
    if given:
        return given
    if is_loopback(options.host) or options.no_token:
        return None
    return secrets.token_urlsafe(16)


def _token_from_file(path: Optional[Path]) -> str:
    if path is None:
        return ""
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0].strip() if lines else ""


def warn_if_token_on_command_line(options: argparse.Namespace, variable: str) -> None:
    if options.token:
        print(f"WARNING: --token is visible to every user of this machine (ps). Set {variable} or use "
              "--token-file instead.", file=sys.stderr, flush=True)


def open_server_warning(options: argparse.Namespace, token: Optional[str]) -> Optional[str]:
    """The banner's warning for a server reachable from other machines without a token (None otherwise)."""
    if token is None and not is_loopback(options.host):
        return ("WARNING: this server is OPEN: anyone who can reach this address can use it and see what "
                "its users upload. Leave out --no-token to require an access token.")
    return None
