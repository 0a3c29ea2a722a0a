"""Segmenting on a remote TotalSegmentator server from Slicer: where its address and token are kept, and the job.

The job is the panel's :class:`~.job.SegmentationJob` with the child process replaced by a thread that talks to the
server through ``totalseg_remote`` (standard library and ``requests``, both shipped with Slicer): export the volume,
upload it, follow the queue and the server's progress, download the multilabel NIfTI (and the statistics), and import
it in the polling thread exactly as a local result is imported (same names, colours, terminology, geometry and
re-run rules). The result is read with SimpleITK, so a Slicer without torch, nnU-Net or nibabel segments this way.

Nothing touches the scene before the download is complete; a failure, a lost server or Cancel leaves the output as
it was and removes the job's temporary folder. Cancel cancels the job on the server too.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Protocol

import slicer
from totalseg_engine import SegmentationRequest, State

from .job import SegmentationJob
from .job_request import REMOTE_DEVICE, JobRequest
from .segmentation_import import LabelImage, read_label_image

REMOTE_LABEL = "Remote server"
URL_SETTING = "TotalSegmentator/RemoteServerURL"
TOKEN_SETTING = "TotalSegmentator/RemoteServerToken"
TOKEN_VARIABLE = "TOTALSEG_SERVER_TOKEN"  # as for the TotalSegmentator command's --server
PANEL_TOKEN_HINT = "the TotalSegmentator panel (Advanced > Remote server > Token)"


__all__ = ["REMOTE_DEVICE", "REMOTE_LABEL", "RemoteSegmentationJob", "ServerSettings", "describe_server",
           "token_storage_note"]


class Settings(Protocol):
    """What is used of Slicer's application settings (``qt.QSettings``)."""

    def value(self, key: str, default: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...

    def fileName(self) -> str: ...


@dataclass(frozen=True)
class ServerSettings:
    """The remote server the panel uses: its address and access token, kept in Slicer's settings."""

    url: str = ""
    token: str = ""

    @classmethod
    def load(cls, settings: Settings) -> ServerSettings:
        return cls(str(settings.value(URL_SETTING, "") or ""), str(settings.value(TOKEN_SETTING, "") or ""))

    def save(self, settings: Settings) -> None:
        settings.setValue(URL_SETTING, self.url.strip())
        settings.setValue(TOKEN_SETTING, self.token.strip())

    def effective_token(self) -> Optional[str]:
        """The token sent: the panel's, else $TOTALSEG_SERVER_TOKEN, else none (a server on this computer)."""
        return self.token.strip() or os.environ.get(TOKEN_VARIABLE) or None

    def server(self, token_hint: str = PANEL_TOKEN_HINT) -> Any:
        """The ``totalseg_remote.RemoteServer`` for these settings; ValueError when no address is set.
        ``token_hint`` names, in a refused token's message, the setting to fix."""
        from totalseg_remote import RemoteServer

        if not self.url.strip():
            raise ValueError("No remote server is set: enter its address under Advanced > Remote server (for "
                             "example http://gpu-host:8000).")
        return RemoteServer(self.url, self.effective_token(), token_hint=token_hint)


def token_storage_note(settings_file: str) -> str:
    """Where the panel keeps the token, said plainly (it is a password to the server)."""
    return (f"The token is kept unencrypted in Slicer's settings file {settings_file}: anyone who can read that file "
            f"can use the server. Leave it empty to use the environment variable {TOKEN_VARIABLE} instead.")


def describe_server(info: dict) -> str:
    """One line about a server for the panel's Test button: version, installed tasks, devices and queue."""
    tasks = [str(name) for name in info.get("tasks") or []]
    devices = ", ".join(str(device) for device in info.get("devices") or []) or "no device listed"
    counts = info.get("queue") if isinstance(info.get("queue"), dict) else {}
    shown = ", ".join(tasks[:8]) + (" ..." if len(tasks) > 8 else "")
    return (f"Connected: TotalSegmentator server {info.get('version', '?')} on {devices}; {len(tasks)} task(s) "
            f"installed ({shown or 'none'}); {counts.get('queued', 0)} job(s) waiting, "
            f"{counts.get('running', 0)} running.")


class RemoteSegmentationJob(SegmentationJob):
    """Export → upload → follow the server → download → import; poll() until it returns True."""

    def __init__(self, scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLScalarVolumeNode,
                 segmentation_node: Optional[slicer.vtkMRMLSegmentationNode], request: JobRequest, server: Any,
                 table_node: Optional[slicer.vtkMRMLTableNode] = None, temp_root: Optional[Path] = None) -> None:
        super().__init__(scene, input_volume, segmentation_node, request, table_node, python="", temp_root=temp_root)
        self.server = server
        self._messages: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._thread_lock = threading.Lock()  # who removes the folder after a cancel: the thread or cancel()
        self._thread_done = False
        self._lines: deque[str] = deque(maxlen=200)
        self._started = 0.0
        self.remote_job: Any = None

    def remote_request(self) -> SegmentationRequest:
        """The request as the server runs it: on any of its engines; the outputs are the server's choice."""
        return replace(self.request.segmentation, device="auto", license_number=None)

    def result_labels(self) -> LabelImage:
        return read_label_image(self.result_path)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Export the input and start talking to the server in a thread; returns at once."""
        source = self._export_into_new_folder()
        self._started = time.monotonic()
        self.state = State.RUNNING
        self._thread = threading.Thread(target=self._talk, args=(source, self._folder), daemon=True,
                                        name="TotalSegmentator remote job")
        self._thread.start()

    def _talk(self, source: Path, folder: Path) -> None:
        """The server conversation, off the main thread: every outcome ends as one ("done", state, message)."""
        from totalseg_remote import CancelledError, RemoteError

        try:
            self._post("progress", 0.0, f"Sending the volume to {self.server.url}")
            formats = ("nifti", "statistics") if self.request.segmentation.statistics else ("nifti",)
            self.remote_job = self.server.submit(source, self.remote_request().to_json(), formats,
                                                 should_cancel=self._stop.is_set)
            self._post("log", f"Job {self.remote_job.id} accepted by {self.server.url}")
            self.remote_job.wait(on_progress=lambda status: self._post("status", status),
                                 should_cancel=self._stop.is_set)
            self._post("progress", None, "Downloading the segmentation")
            self.remote_job.download("nifti", self.result_path, should_cancel=self._stop.is_set)
            if self.request.segmentation.statistics:
                (folder / "statistics.json").write_text(json.dumps(self.remote_job.statistics()), encoding="utf-8")
            self._post("done", State.SUCCEEDED, "")
        except CancelledError:
            self._post("done", State.CANCELLED, "Cancelled.")
        except RemoteError as err:
            self._post("done", State.FAILED, err.message)
        except Exception as err:  # a bug or a full disk: say it, never leave the panel waiting
            self._post("done", State.FAILED, f"{type(err).__name__}: {err}")
        finally:
            with self._thread_lock:
                self._thread_done = True
                if self._stop.is_set():  # cancelled from the main thread, which left the folder to this thread
                    shutil.rmtree(folder, ignore_errors=True)

    def _post(self, kind: str, *values: Any) -> None:
        self._messages.put((kind, *values))

    def poll(self) -> bool:
        """Forward the server's queue position and progress; import the downloaded result. True once finished."""
        if self._thread is None or self.state.finished:
            return self.state.finished
        while True:
            try:
                kind, *values = self._messages.get_nowait()
            except queue.Empty:
                return False
            if kind == "status":
                self._status(values[0])
            elif kind == "progress":
                self.on_progress(*values)
            elif kind == "log":
                self._log(values[0])
            elif kind == "done":
                self._done(*values)
                return True

    def _status(self, status: Any) -> None:
        line = status.describe()
        if not self._lines or self._lines[-1] != line:
            self._log(line)
        fraction = status.fraction if isinstance(status.fraction, (int, float)) and status.state != "queued" else None
        self.on_progress(fraction, line)

    def _log(self, line: str) -> None:
        self._lines.append(line)
        self.on_log(line)

    def _done(self, state: State, message: str) -> None:
        if state is State.SUCCEEDED:
            self._import_and_succeed()
        else:
            self._set_final(state, message)

    def cancel(self) -> None:
        """Stop at once: the thread cancels the job on the server and removes the temporary folder."""
        if self.state is not State.RUNNING:
            return
        self.state, self.error_message = State.CANCELLED, "Cancelled."
        with self._thread_lock:
            self._stop.set()
            if self._thread_done:
                self._cleanup()
            else:
                self._folder = None  # the thread removes it once it has stopped writing there

    def last_lines(self, n: int = 20) -> list[str]:
        return list(self._lines)[-n:]

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started if self._started else 0.0
