"""The client of a remote TotalSegmentator server: standard library and ``requests`` only (what 3D Slicer ships), so
a workstation without torch or nnU-Net segments through a GPU server.

- ``client``: :class:`RemoteServer` (info, submit) and :class:`RemoteJob` (status, wait, events, cancel, download),
  safe to call from any thread and cancellable.
- ``errors``: every failure as a :class:`RemoteError` whose message says what to do.
- ``upload``: the submission's body, streamed and compressed.
"""

from .client import JobStatus, RemoteJob, RemoteServer
from .errors import (
    AuthenticationError,
    CancelledError,
    JobCancelledError,
    JobFailedError,
    RemoteError,
    RequestRefusedError,
    ServerBusyError,
    ServerError,
    ServerLostError,
    ServerUnreachableError,
    UnknownJobError,
    UploadTooLargeError,
)

__all__ = ["AuthenticationError", "CancelledError", "JobCancelledError", "JobFailedError", "JobStatus", "RemoteError",
           "RemoteJob", "RemoteServer", "RequestRefusedError", "ServerBusyError", "ServerError", "ServerLostError",
           "ServerUnreachableError", "UnknownJobError", "UploadTooLargeError"]
