"""What can go wrong talking to a remote server, as exceptions whose message a user can act on.

Every error is a :class:`RemoteError`; its ``str()`` is a sentence for a dialog or the command line that says what
happened and what to do (the setting to fix, the address that failed, the limit that was passed). ``status`` is the
HTTP status when the server answered (None when it could not be reached).
"""

from __future__ import annotations

from typing import Optional


class RemoteError(Exception):
    """Anything that stopped a remote segmentation."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class AuthenticationError(RemoteError):
    """401: no token, or a wrong one. The message names the setting that holds it."""


class ServerUnreachableError(RemoteError):
    """The server could not be reached at all: connection refused, unknown host name, no answer in time, TLS."""


class ServerLostError(RemoteError):
    """The server stopped answering while a job of ours was on it (it stopped, crashed or restarted)."""


class UnknownJobError(RemoteError):
    """The server does not know the job: it restarted, or the job's results expired."""


class UploadTooLargeError(RemoteError):
    """413: the image is over the server's upload limit."""


class ServerBusyError(RemoteError):
    """503: the server holds as many jobs as it takes; try again later."""


class RequestRefusedError(RemoteError):
    """Another 4xx: the server refused the request (a bad option, an unreadable image, a task not installed)."""


class ServerError(RemoteError):
    """5xx: the server failed on the request."""


class JobFailedError(RemoteError):
    """The job ran and failed; the message is the engine's."""


class JobCancelledError(RemoteError):
    """The job was cancelled (by this client, or another holding its id)."""


class CancelledError(RemoteError):
    """The caller asked to stop (``should_cancel``); the job on the server was cancelled too."""
