"""Run the engine in a child process and watch it without blocking: what the Slicer panel uses.

A segmentation runs for minutes and holds gigabytes, so the panel never runs it in Slicer's own
process: a crash, an out-of-memory kill or a stuck CUDA call must not take Slicer down, and Cancel
must stop it at once. :class:`EngineProcess` starts ``python -m totalseg_engine ... --progress-json``
in its own process group, tied to this process (:mod:`.lifeline`: it ends when this process dies, SIGKILL
included), turns its output into typed messages on a queue (read by two threads, so
neither pipe can fill up and stall the child), and :meth:`EngineProcess.poll` hands them to a GUI
timer without ever blocking. :meth:`EngineProcess.cancel` stops the whole process tree, grandchildren
included. Standard library only (no Qt, no slicer), so it is tested with real processes outside Slicer.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import enum
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping, Optional, Sequence, Union

from .lifeline import Lifeline
from .progress import ProgressEvent, parse_event_line
from .request import SegmentationRequest

ENGINE_MODULE = "totalseg_engine"
# The folder holding the totalseg_engine package: put on the child's PYTHONPATH so that any Python
# (Slicer's PythonSlicer included) finds the engine without it being installed.
ENGINE_ROOT = Path(__file__).resolve().parent.parent
CANCELLED_EXIT_CODE = 130  # what the CLI returns for a cancelled or interrupted run
TAIL_LINES = 200
SUMMARY_LINES = 3
READER_GRACE_S = 2.0  # how long output may keep flowing after the child exited (Windows leftovers)
POLL_INTERVAL_S = 0.02
_WINDOWS = os.name == "nt"


def engine_command(input_path: Union[str, Path], output_path: Union[str, Path], request: SegmentationRequest, *,
                   python: str = sys.executable) -> list[str]:
    """The argv of one engine run of ``request`` reporting JSON progress (the request as its own flags).

    In Slicer pass ``python=shutil.which("PythonSlicer")``: Slicer's ``sys.executable`` is the application.
    """
    return [str(python), "-m", ENGINE_MODULE, "-i", str(input_path), "-o", str(output_path), *request.to_argv(),
            "--progress-json"]


def child_environment(base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """``base`` (default: this process's environment) set up so the child streams output and finds the engine.

    Unbuffered output makes progress arrive when it happens, not when a 4 kB buffer fills; UTF-8 makes
    the bytes decodable whatever the platform's console code page.
    """
    env = dict(os.environ if base is None else base)
    paths = [str(ENGINE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


class State(str, enum.Enum):
    """Life of a run (an engine process, a panel or web job); CANCELLED is distinct from FAILED so the panel says
    'cancelled', not 'error'. A ``str`` too, so that callbacks comparing with "succeeded" keep working."""

    NOT_STARTED = "not_started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


@dataclass(frozen=True)
class ProgressMessage:
    """A ``--progress-json`` line of the child's stdout."""

    event: ProgressEvent


@dataclass(frozen=True)
class LogMessage:
    """Any other output line; ``stream`` is "stdout" or "stderr"."""

    text: str
    stream: str


@dataclass(frozen=True)
class FinishedMessage:
    """Always the last message of a run: all output before it has been delivered."""

    state: State
    returncode: Optional[int]


Message = Union[ProgressMessage, LogMessage, FinishedMessage]


def final_state(returncode: int, cancel_requested: bool) -> State:
    """A run that completed counts as succeeded even if Cancel came too late: its output was written."""
    if returncode == 0:
        return State.SUCCEEDED
    if cancel_requested or returncode == CANCELLED_EXIT_CODE:
        return State.CANCELLED
    return State.FAILED


class EngineProcess:
    """One child process (normally :func:`engine_command`'s argv), watched from a GUI timer.

    ``start()`` launches it; ``poll()`` returns the messages that arrived since the last call;
    ``cancel()`` stops the process tree; ``state``, ``returncode``, ``elapsed_s``, ``error_summary()``
    describe the outcome. Used as a context manager, it is cancelled on exit if still running.
    """

    def __init__(self, command: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
                 cwd: Union[str, Path, None] = None) -> None:
        self.command = [str(part) for part in command]
        self.env = child_environment(env)
        self.cwd = cwd
        self._messages: queue.Queue[Message] = queue.Queue()
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()  # guards _state and _tail
        self._cancel_lock = threading.Lock()  # one cancel at a time; later ones find the run finished
        self._state = State.NOT_STARTED
        self._proc: Optional[subprocess.Popen] = None
        self._lifeline: Optional[Lifeline] = None
        self._cancel_requested = False
        self._exited = threading.Event()  # the child itself has exited and was reaped
        self._finished = threading.Event()  # ... and its output is read, the state final
        self._readers: list[threading.Thread] = []
        self._started_at: Optional[float] = None
        self._ended_at: Optional[float] = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> EngineProcess:
        """Launch the child in its own process group; returns self. Raises OSError if it cannot start.

        The child dies with this process (Linux: when started from the main thread, by the kernel; else a watchdog
        running under the child's own Python, ``command[0]``).
        """
        if self._state is not State.NOT_STARTED:
            raise RuntimeError(f"This process was already started or cancelled (state {self._state.name}).")
        self._started_at = time.monotonic()
        self._lifeline = Lifeline(group=not _WINDOWS, python=self.command[0])
        try:
            self._proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, encoding="utf-8", errors="replace", bufsize=1, env=self.env, cwd=self.cwd,
                **_group_options(), **self._lifeline.popen_options())
        except OSError as err:
            self._remember(f"ERROR: Could not start {self.command[0]}: {err}")
            self._finish(State.FAILED)
            raise
        self._lifeline.attach(self._proc.pid)
        self._set_state(State.RUNNING)
        _register(self)
        self._readers = [self._thread(self._read, self._proc.stdout, "stdout"),
                         self._thread(self._read, self._proc.stderr, "stderr")]
        self._thread(self._watch)
        return self

    def cancel(self, timeout_s: float = 2.0) -> State:
        """Stop the whole process tree within ``timeout_s``: SIGTERM, then SIGKILL for whatever ignores it.

        Idempotent, and harmless on a finished run. Blocks at most ``timeout_s`` (half of it is the grace
        period for SIGTERM) because the caller must know the tree is gone before touching its output.
        """
        with self._cancel_lock:
            if self._proc is None:
                if self._state is State.NOT_STARTED:
                    self._finish(State.CANCELLED)
                return self.state
            if self._finished.is_set():
                return self.state
            deadline = time.monotonic() + timeout_s
            self._cancel_requested = True
            _signal_tree(self._proc, force=False)
            if not self._tree_gone_by(time.monotonic() + timeout_s / 2):
                _signal_tree(self._proc, force=True)
                self._tree_gone_by(deadline)
            self._finished.wait(max(0.0, deadline - time.monotonic()))
            return self.state

    def wait(self, timeout: Optional[float] = None) -> State:
        """Block until the run is finished (or ``timeout`` passed); returns the state then."""
        if self._proc is not None:
            self._finished.wait(timeout)
        return self.state

    def poll(self) -> list[Message]:
        """All messages that arrived since the last call, in order; never blocks (call it from a timer)."""
        messages: list[Message] = []
        while True:
            try:
                messages.append(self._messages.get_nowait())
            except queue.Empty:
                return messages

    def __enter__(self) -> EngineProcess:
        if self._state is State.NOT_STARTED:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.state is State.RUNNING:
            self.cancel()

    # ------------------------------------------------------------ outcome

    @property
    def state(self) -> State:
        with self._lock:
            return self._state

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> Optional[int]:
        """The child's exit status once it exited (negative: killed by that signal on POSIX)."""
        return self._proc.returncode if self._exited.is_set() and self._proc is not None else None

    @property
    def elapsed_s(self) -> float:
        """Seconds since start, up to the child's exit once it exited."""
        if self._started_at is None:
            return 0.0
        end = self._ended_at if self._ended_at is not None else time.monotonic()
        return end - self._started_at

    def last_lines(self, n: int = 20) -> list[str]:
        """The last ``n`` lines of stderr and non-progress stdout (for error reports and the log view)."""
        with self._lock:
            lines = list(self._tail)
        return lines[-n:] if n > 0 else []

    def error_summary(self) -> str:
        """A short message for the user: the engine's ``ERROR:`` text when it gave one, else what is known."""
        lines = self.last_lines(TAIL_LINES)
        errors = [i for i, line in enumerate(lines) if line.startswith("ERROR:")]
        if errors:  # the message and its continuation lines (the engine exits right after printing it)
            return "\n".join(line for line in lines[errors[-1]:errors[-1] + SUMMARY_LINES] if line.strip())
        code = self.returncode
        if code is not None and code < 0 and not self._cancel_requested:
            return _signal_description(-code)
        tail = [line for line in lines if line.strip()][-SUMMARY_LINES:]
        if tail and code != 0:
            return "\n".join(tail)
        return "" if code in (0, None) else f"The engine stopped with exit code {code}."

    # ------------------------------------------------------------ internals

    def _thread(self, target, *args) -> threading.Thread:
        """Daemon threads: interpreter exit must not wait for the child (atexit cancels it instead)."""
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"EngineProcess-{target.__name__}")
        thread.start()
        return thread

    def _read(self, stream: IO[str], name: str) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._handle_line(line.rstrip("\r\n"), name)
        except (OSError, ValueError):  # the pipe was closed under us: nothing more to read
            pass
        finally:
            stream.close()

    def _handle_line(self, text: str, stream: str) -> None:
        event = parse_event_line(text) if stream == "stdout" else None
        if event is not None:
            self._messages.put(ProgressMessage(event))
            return
        self._remember(text)
        self._messages.put(LogMessage(text, stream))

    def _remember(self, text: str) -> None:
        with self._lock:
            self._tail.append(text)

    def _watch(self) -> None:
        """Reap the child, clear out anything it left in its group, then publish the final state."""
        assert self._proc is not None
        self._proc.wait()
        self._ended_at = time.monotonic()
        self._exited.set()
        if not _WINDOWS:  # what is left in the group now is an orphan of the engine (it holds our pipes)
            _killpg(self._proc.pid, signal.SIGKILL)
        self._lifeline.release()
        for reader in self._readers:
            reader.join(READER_GRACE_S)
        self._finish(final_state(self._proc.returncode, self._cancel_requested))

    def _finish(self, state: State) -> None:
        self._set_state(state)
        _unregister(self)
        self._messages.put(FinishedMessage(state, self.returncode))
        self._finished.set()

    def _set_state(self, state: State) -> None:
        with self._lock:
            self._state = state

    def _tree_gone_by(self, deadline: float) -> bool:
        """Wait until the child exited and no live process is left in its group, or the deadline passed."""
        assert self._proc is not None
        while True:
            if self._exited.is_set() and not _tree_alive(self._proc.pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_S)


# ---------------------------------------------------------------- process groups


def _group_options() -> dict:
    """A new process group (POSIX: a new session) so that the whole tree can be signalled at once."""
    if _WINDOWS:
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def _signal_tree(proc: subprocess.Popen, force: bool) -> None:
    """POSIX: signal the process group. Windows has no SIGTERM for a console-less child: taskkill the tree."""
    if not _WINDOWS:
        _killpg(proc.pid, signal.SIGKILL if force else signal.SIGTERM)
        return
    subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], stdin=subprocess.DEVNULL,
                   capture_output=True, creationflags=subprocess.CREATE_NO_WINDOW, check=False)
    if force:
        with contextlib.suppress(OSError):
            proc.kill()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # gone (macOS: EPERM if only zombies are left)
        os.killpg(pgid, sig)


def _tree_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (Windows: the child itself, which taskkill took down)."""
    if _WINDOWS:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _live_member_in_proc(pgid)


def _live_member_in_proc(pgid: int) -> bool:
    """killpg also counts zombies, which stay forever under an init that never reaps (containers).

    On Linux, look for a member that is not a zombie; elsewhere trust killpg.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while we looked
            continue
        fields = text[text.rfind(")") + 2:].split()  # state, ppid, pgrp, ... after "pid (comm)"
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def process_group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of group ``pgid`` is left: for those who only know a run's PID."""
    return _tree_alive(pgid)


def kill_process_group(pgid: int) -> None:
    """SIGKILL every process of group ``pgid`` (an engine run's: its PID); nothing if it is gone."""
    _killpg(pgid, signal.SIGKILL)


def _signal_description(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    hint = " (often: out of memory; try --fast or a smaller region)" if name == "SIGKILL" else ""
    return f"The engine was killed by {name}{hint}."


# ---------------------------------------------------------------- no orphans at exit

_RUNNING: set[EngineProcess] = set()
_RUNNING_LOCK = threading.Lock()


def _register(process: EngineProcess) -> None:
    with _RUNNING_LOCK:
        _RUNNING.add(process)


def _unregister(process: EngineProcess) -> None:
    with _RUNNING_LOCK:
        _RUNNING.discard(process)


def cancel_all() -> None:
    """Cancel every run still going; registered with atexit so quitting Slicer leaves no engine behind."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for process in running:
        process.cancel()


atexit.register(cancel_all)
