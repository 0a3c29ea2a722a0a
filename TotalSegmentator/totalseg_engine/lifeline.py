"""A child process that ends with the process that started it, however that one ends (SIGKILL included).

A parent killed by SIGKILL or the out-of-memory killer runs no cleanup, so without help its children run on as
orphans: an engine run would keep a CPU core or the GPU busy for minutes with nobody to read its result.

- **Linux**: the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG)``), set in the child between fork and
  exec. The kernel sends it the moment the parent's *thread* that started the child ends, so it is used only for
  a child started from the main thread (which lives as long as the process). A parent that died before the tie
  was made is noticed in the child (its parent PID changed), which then signals itself.
- **Elsewhere** (macOS, Windows), and for a child started from another thread: a watchdog, a small Python process
  that blocks reading a pipe whose only writer is the parent. When the parent dies, however it dies, the kernel
  closes that end, the read returns end-of-file and the watchdog signals the child (its whole process group when
  the child leads one; ``taskkill /T`` of its tree on Windows). A child that ends normally stands it down first.

Standard library only (``ctypes`` for prctl), like the runner that uses it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Callable, Optional

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
USE_KERNEL = True  # False: the watchdog on Linux too (the tests check the fallback that way)
STAND_DOWN_WAIT_S = 5.0
KILL = getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows has no SIGKILL; its watchdog uses taskkill /F anyway

# Reads one byte: a byte means "the child ended, stand down"; end-of-file means the parent is gone.
WATCHDOG_SCRIPT = """
import os, subprocess, sys
target, sig = int(sys.argv[1]), int(sys.argv[2])
if not os.read(0, 1):
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(abs(target))], capture_output=True)
    else:
        try:
            os.kill(target, sig)
        except OSError:
            pass
"""


def _find_prctl() -> Optional[Callable[..., int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


class Lifeline:
    """Ties one child to this process. Use: ``Popen(..., **line.popen_options())``, then ``line.attach(pid)``
    once it started, and ``line.release()`` once it ended and was reaped.

    ``group``: the child leads its own process group (``start_new_session``) and the watchdog signals the whole
    group. ``python``: the interpreter that runs the watchdog where one is needed (the child's own, for the engine).
    """

    def __init__(self, sig: int = KILL, group: bool = False, python: str = sys.executable) -> None:
        self.sig = int(sig)
        self.group = group
        self.python = python
        self.kernel = (USE_KERNEL and _PRCTL is not None
                       and threading.current_thread() is threading.main_thread())
        self._pipe: Optional[int] = None
        self._watchdog: Optional[subprocess.Popen] = None

    def popen_options(self) -> dict:
        """Keyword arguments for ``subprocess.Popen`` (also asyncio's): the kernel's tie where it is used."""
        if not self.kernel:
            return {}
        parent, sig, prctl = os.getpid(), self.sig, _PRCTL

        def tie() -> None:  # runs in the child between fork and exec: nothing but two system calls
            prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the tie was made
                os.kill(os.getpid(), sig)

        return {"preexec_fn": tie}

    def attach(self, pid: int) -> None:
        """Start the watchdog for a started child where the kernel does not tie it. Never raises: a watchdog
        that cannot start is reported on stderr and the child runs untied, as it would without this module."""
        if self.kernel or self._pipe is not None:
            return
        read_end, self._pipe = os.pipe()  # not inheritable: only the watchdog gets the read end, nobody the other
        target = -pid if self.group and os.name != "nt" else pid
        try:
            self._watchdog = subprocess.Popen(
                [self.python, "-c", WATCHDOG_SCRIPT, str(target), str(self.sig)], stdin=read_end,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **_detached())
        except OSError as err:
            os.close(self._pipe)
            self._pipe = None
            print(f"WARNING: no watchdog for process {pid} ({err}): it may outlive this one.", file=sys.stderr)
        finally:
            os.close(read_end)

    def release(self) -> None:
        """The child ended: its watchdog exits without signalling anything (a reused PID is never hit)."""
        if self._pipe is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._pipe, b"x")
        os.close(self._pipe)
        self._pipe = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._watchdog.wait(STAND_DOWN_WAIT_S)


def _detached() -> dict:
    """The watchdog outlives a Ctrl-C to the parent's terminal group: that is when it is needed."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}
