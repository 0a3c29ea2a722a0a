"""What the launcher and a session process agree on (kept apart so the launcher need not import trame-slicer).

A session gets its settings, the proxy secret among them, as one JSON line on its standard input: nothing
secret on a command line, where any local user reads it (``ps``, ``/proc/<pid>/cmdline``), and nothing in an
environment that its engine children would inherit.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import asdict, dataclass
from typing import Optional

PORT_LINE = "TOTALSEG_WEB_SESSION_PORT="  # a session prints this and its port once it listens
PROXY_HEADER = "X-TotalSeg-Proxy"  # the launcher's secret, required on every request a session answers
SESSION_MODULE = "totalseg_web.session_app"


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of what a client sent with a secret. Clients send anything (non-ASCII, invalid
    UTF-8 read as surrogates); ``hmac.compare_digest`` raises on non-ASCII strings, so bytes are compared."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class SessionSettings:
    """Everything a session process is told at start (its command line holds nothing but the module's name)."""

    session_dir: str  # its own folder below the launcher's (named apart from the session's address)
    queue_dir: str
    proxy_secret: str
    max_upload_mb: float = 2048
    concurrent_runs: int = 1
    idle_timeout: int = 300
    data_root: Optional[str] = None
    port: int = 0

    def to_line(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def from_line(cls, line: str) -> SessionSettings:
        return cls(**json.loads(line))
