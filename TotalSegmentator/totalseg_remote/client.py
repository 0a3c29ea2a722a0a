"""The client of a TotalSegmentator server (``totalseg_server``, or ``totalseg_web --api``): submit, follow, cancel,
download. Standard library and ``requests`` only: what Slicer ships, so a workstation without torch can segment.

Made for a GUI that runs it off its main thread: every call may run in any thread (each thread gets its own HTTP
session), every call has a time limit, and the long ones (``submit``, ``wait``, ``events``, ``download``) take a
``should_cancel`` callable that they check at least every half second; cancelling cancels the job on the server
too. A server that dies during a job is reported within a few seconds (``lost_after_s`` without an answer), a
download is written to a temporary file in the target's folder and renamed into place only when complete, so a
failed or cancelled download leaves nothing behind.

    server = RemoteServer("https://seg.example.org", token=os.environ["TOTALSEG_SERVER_TOKEN"])
    job = server.submit("ct.nii.gz", {"task": "total", "speed": "fast"}, formats=("nifti", "seg_nrrd"))
    job.wait(on_progress=lambda status: print(status.describe()))
    job.download("seg_nrrd", "ct.seg.nrrd")
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union
from urllib.parse import urljoin, urlparse

import requests

from . import errors
from .upload import UploadCancelled, multipart_body, unpacked_size, uploadable

DEFAULT_TOKEN_HINT = "TOTALSEG_SERVER_TOKEN (or TotalSegmentator's --token)"
CHUNK_BYTES = 1 << 20
SLEEP_STEP_S = 0.1
CANCEL_TIMEOUT_S = 40.0  # the server answers a cancel once the engine's process tree is gone
HEARTBEAT_S = 2.0  # the server's event stream sends a comment this often
FINISHED = ("succeeded", "failed", "cancelled")
ShouldCancel = Optional[Callable[[], bool]]


@dataclass(frozen=True)
class JobStatus:
    """A job as the server describes it: state, queue position, progress, error, result formats."""

    id: str
    state: str
    position: int = 0
    stage: str = ""
    message: str = ""
    fraction: Optional[float] = None
    error: Optional[str] = None
    formats: tuple[str, ...] = ()
    device: Optional[str] = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> JobStatus:
        progress = data.get("progress") or {}
        return cls(id=str(data.get("id", "")), state=str(data.get("state", "")),
                   position=int(data.get("position") or 0), stage=str(progress.get("stage", "")),
                   message=str(progress.get("message", "")), fraction=progress.get("fraction"), error=data.get("error"),
                   formats=tuple(data.get("formats") or ()), device=data.get("device"), raw=data)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def describe(self) -> str:
        """One line for a status bar: the queue position while waiting, else the server's progress."""
        if self.state == "queued":
            ahead = self.position
            return f"Waiting on the server: {ahead} job{'s' if ahead != 1 else ''} ahead" if ahead else \
                "Waiting on the server for a free engine"
        percent = f" ({100 * self.fraction:.0f} %)" if isinstance(self.fraction, (int, float)) else ""
        return f"{self.message or self.stage or self.state}{percent}"


class RemoteServer:
    """One server: its address, the token, time limits and the setting a user fixes when the token is refused."""

    def __init__(self, url: str, token: Optional[str] = None, *, timeout: float = 60.0,
                 connect_timeout: float = 5.0, poll_timeout: float = 5.0, lost_after_s: float = 2.0,
                 token_hint: str = DEFAULT_TOKEN_HINT, verify: Union[bool, str] = True) -> None:
        parsed = urlparse(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"A server address looks like http://host:port or https://host, not '{url}'.")
        self.url = url.strip().rstrip("/") + "/"
        self.token = token or None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.poll_timeout = poll_timeout
        self.lost_after_s = lost_after_s
        self.token_hint = token_hint
        self.verify = verify
        self._local = threading.local()

    # ------------------------------------------------------------------ HTTP

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "totalseg_remote"
            if self.token:
                session.headers["Authorization"] = f"Bearer {self.token}"
            session.verify = self.verify
            self._local.session = session
        return session

    def request(self, method: str, path: str, *, timeout: Optional[float] = None, **kwargs: Any) -> requests.Response:
        """One call; any failure becomes a :class:`~.errors.RemoteError` with a message for the user."""
        url = urljoin(self.url, path)
        try:
            response = self._session().request(method, url, timeout=(self.connect_timeout, timeout or self.timeout),
                                               **kwargs)
        except requests.exceptions.SSLError as err:
            raise errors.ServerUnreachableError(f"No secure connection to {self.url}: {_reason(err)}. Check the "
                                                "address (http or https) and the server's certificate.") from err
        except requests.exceptions.Timeout as err:
            raise errors.ServerUnreachableError(f"The server at {self.url} did not answer in time "
                                                f"({_reason(err)}).") from err
        except requests.exceptions.ConnectionError as err:
            raise errors.ServerUnreachableError(_connection_message(self.url, err)) from err
        if response.status_code >= 400:
            raise self.error_for(response)
        return response

    def error_for(self, response: requests.Response) -> errors.RemoteError:
        """The error a refused request raises, with the server's message and what to do about it."""
        status = response.status_code
        try:
            message = str(response.json().get("error") or "")
        except (ValueError, AttributeError):
            message = response.text[:300].strip()
        if status == 401:
            what = "refused the access token" if self.token else "needs an access token"
            return errors.AuthenticationError(f"The server at {self.url} {what}. Set the right token in "
                                              f"{self.token_hint}.", status)
        kinds = {404: errors.UnknownJobError if "unknown job" in message.lower() else errors.RequestRefusedError,
                 413: errors.UploadTooLargeError, 503: errors.ServerBusyError}
        kind = kinds.get(status, errors.ServerError if status >= 500 else errors.RequestRefusedError)
        return kind(message or f"The server at {self.url} answered {status} {response.reason}.", status)

    # ------------------------------------------------------------------ calls

    def info(self) -> dict:
        """Version, tasks (and which are installed), devices, queue, upload limit."""
        return self.request("GET", "api/v1/info", timeout=self.poll_timeout).json()

    def submit(self, image_path: Union[str, os.PathLike], request_json: dict, formats=("nifti",), *,
               should_cancel: ShouldCancel = None, on_upload: Optional[Callable[[int], None]] = None) -> RemoteJob:
        """Upload an image (NIfTI, NRRD, MHA, a DICOM zip or folder) with a request (``SegmentationRequest``'s
        JSON); the job, queued. The server's upload limit is checked before anything is sent."""
        path = Path(image_path)
        if not path.exists():
            raise errors.RemoteError(f"The image {path} does not exist.")
        self._check_size(path)
        name = path.name + (".zip" if path.is_dir() else "")
        with uploadable(path) as file:
            body, content_type, _ = multipart_body({"request": request_json, "formats": list(formats)}, file, name,
                                                   should_cancel or (lambda: False), on_upload)
            try:
                response = self.request("POST", "api/v1/jobs", data=body, headers={"Content-Type": content_type})
            except UploadCancelled:
                raise errors.CancelledError("Cancelled during the upload; nothing is left on the server.") from None
        data = response.json()
        return RemoteJob(self, data["id"], JobStatus.from_json(data))

    def _check_size(self, path: Path) -> None:
        limit_mb = self.info().get("max_upload_mb")
        size = unpacked_size(path)
        if limit_mb and size > limit_mb * 2**20:
            raise errors.UploadTooLargeError(
                f"{path.name} is {size / 2**20:.0f} MB, over the upload limit of the server at {self.url} "
                f"({limit_mb:g} MB, its --max-upload-mb). Ask its administrator to raise it, or crop the image.", 413)

    def job(self, job_id: str) -> RemoteJob:
        """A job submitted earlier, by its id."""
        return RemoteJob(self, job_id)

    def close(self) -> None:
        """Close this thread's connections."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None


class RemoteJob:
    """A job on a server: follow it (``status``, ``wait``, ``events``), ``cancel`` it, ``download`` its results."""

    def __init__(self, server: RemoteServer, job_id: str, status: Optional[JobStatus] = None) -> None:
        self.server = server
        self.id = job_id
        self.last_status = status

    def status(self) -> JobStatus:
        data = self.server.request("GET", f"api/v1/jobs/{self.id}", timeout=self.server.poll_timeout).json()
        self.last_status = JobStatus.from_json(data)
        return self.last_status

    def cancel(self) -> JobStatus:
        """Cancel the job; returns once the server has ended the engine's processes."""
        data = self.server.request("DELETE", f"api/v1/jobs/{self.id}", timeout=CANCEL_TIMEOUT_S).json()
        self.last_status = JobStatus.from_json(data)
        return self.last_status

    def wait(self, on_progress: Optional[Callable[[JobStatus], None]] = None, should_cancel: ShouldCancel = None,
             poll_s: float = 0.5) -> JobStatus:
        """Poll until the job has ended; ``on_progress`` gets each new status. Returns the final status of a job
        that succeeded; raises JobFailedError, JobCancelledError, CancelledError (``should_cancel``: the job is
        cancelled on the server too), ServerLostError (no answer for ``lost_after_s``) or UnknownJobError."""
        last: Optional[JobStatus] = None
        while True:
            self._stop_if_asked(should_cancel)
            status = self._poll()
            if status != last and on_progress is not None:
                on_progress(status)
            last = status
            if status.finished:
                return self._outcome(status)
            _sleep(poll_s, should_cancel)

    def _poll(self) -> JobStatus:
        lost_since = None
        while True:
            try:
                return self.status()
            except errors.ServerUnreachableError as err:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since >= self.server.lost_after_s:
                    raise errors.ServerLostError(
                        f"The server at {self.server.url} stopped answering during the job ({err.message}). It may "
                        "have stopped or restarted; the job is lost. Nothing was written: run it again once the "
                        "server is back.") from err
                time.sleep(min(0.5, self.server.lost_after_s / 4))

    def events(self, should_cancel: ShouldCancel = None) -> Iterator[JobStatus]:
        """The job's statuses as the server sends them (Server-Sent Events), until it has ended."""
        response = self.server.request("GET", f"api/v1/jobs/{self.id}/events", stream=True,
                                       timeout=self.server.poll_timeout + HEARTBEAT_S)
        try:
            for line in response.iter_lines(chunk_size=None, decode_unicode=True):
                self._stop_if_asked(should_cancel)
                if line and line.startswith("data:"):
                    status = JobStatus.from_json(json.loads(line[5:]))
                    self.last_status = status
                    yield status
                    if status.finished:
                        return
        except requests.exceptions.RequestException as err:
            raise errors.ServerLostError(f"The server at {self.server.url} stopped during the job ({_reason(err)}). "
                                         "Nothing was written.") from err
        finally:
            response.close()
        raise errors.ServerLostError(f"The server at {self.server.url} closed the job's event stream before the job "
                                     "ended: it may have stopped. Nothing was written.")

    def download(self, kind: str, path: Union[str, os.PathLike], should_cancel: ShouldCancel = None) -> Path:
        """Save one result (nifti, seg_nrrd, dicom_seg, statistics) at ``path``, complete or not at all."""
        target = Path(path)
        response = self.server.request("GET", f"api/v1/jobs/{self.id}/result", params={"format": kind}, stream=True)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as out:
                for chunk in response.iter_content(CHUNK_BYTES):
                    self._stop_if_asked(should_cancel, cancel_job=False)
                    out.write(chunk)
            os.replace(temp, target)
        except requests.exceptions.RequestException as err:
            raise errors.ServerLostError(f"The server at {self.server.url} stopped during the download of the "
                                         f"{kind} result ({_reason(err)}). Nothing was written.") from err
        finally:
            response.close()
            temp.unlink(missing_ok=True)
        return target

    def statistics(self) -> dict:
        """The statistics result (volume and intensity per structure) as the engine's statistics.json holds it."""
        return self.server.request("GET", f"api/v1/jobs/{self.id}/result", params={"format": "statistics"}).json()

    def _stop_if_asked(self, should_cancel: ShouldCancel, cancel_job: bool = True) -> None:
        if should_cancel is None or not should_cancel():
            return
        if cancel_job:
            with contextlib.suppress(errors.RemoteError):
                self.cancel()
        raise errors.CancelledError("Cancelled; the job on the server was cancelled too." if cancel_job else
                                    "Cancelled; nothing was written.")

    @staticmethod
    def _outcome(status: JobStatus) -> JobStatus:
        if status.state == "succeeded":
            return status
        if status.state == "cancelled":
            raise errors.JobCancelledError("The job was cancelled on the server.")
        raise errors.JobFailedError(status.error or "The job failed on the server (it gave no reason).")


def _sleep(seconds: float, should_cancel: ShouldCancel) -> None:
    """Sleep in short steps, so that a cancel is seen within SLEEP_STEP_S."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if should_cancel is not None and should_cancel():
            return
        time.sleep(min(SLEEP_STEP_S, max(0.0, deadline - time.monotonic())))


def _connection_message(url: str, err: Exception) -> str:
    host = urlparse(url).hostname
    chain = _causes(err)
    if any(isinstance(cause, socket.gaierror) for cause in chain) or "NameResolution" in repr(err):
        return f"Cannot reach the server at {url}: the host name '{host}' is not known. Check the address."
    if any(isinstance(cause, ConnectionRefusedError) for cause in chain) or "refused" in str(err).lower():
        return (f"Cannot reach the server at {url}: the connection was refused. Is the server running, and are "
                "the address and port right?")
    return f"Cannot reach the server at {url}: {_reason(err)}."


def _causes(err: BaseException) -> list[BaseException]:
    """The error and what caused it, down to the socket's error (requests and urllib3 wrap it several times)."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        first = err.args[0] if err.args and isinstance(err.args[0], BaseException) else None
        reason = getattr(err, "reason", None)
        err = err.__cause__ or first or (reason if isinstance(reason, BaseException) else None) or err.__context__
    return seen


def _reason(err: BaseException) -> str:
    """The innermost cause of a requests error, shortly."""
    innermost = _causes(err)[-1]
    text = str(innermost) or type(innermost).__name__
    return text[:200]
