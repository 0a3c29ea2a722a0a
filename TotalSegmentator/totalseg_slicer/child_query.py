"""Ask the engine's Python a question in a child process and read its one-line JSON answer.

The panel never imports torch in Slicer's own process (a CUDA context for the whole session; a broken torch would
abort the panel), so what only torch knows — the GPUs, their free memory — is asked of ``PythonSlicer`` this way.
The engine's child-process runner (standard library only: usable before any install) puts the engine on the
child's PYTHONPATH and, on timeout, stops the whole process tree: PythonSlicer may be a launcher whose own child
would otherwise keep running with the pipes open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from totalseg_engine import EngineProcess, LogMessage


@dataclass(frozen=True)
class ChildAnswer:
    """The JSON value on the child's last stdout line, or why there is none (``problem``), and its stderr."""

    value: Any = None
    problem: str = ""
    stderr: str = ""


def ask_child(python: str, module: str, args: Sequence[str], timeout_s: float) -> ChildAnswer:
    """Run ``python -m module args`` and read the JSON value on its last stdout line (a startup script may print
    before it); any failure is an answer with a ``problem``, never an exception."""
    command = f"{python} -m {module}"
    process = EngineProcess([python, "-m", module, *args])
    try:
        process.start()
    except OSError as err:
        return ChildAnswer(problem=f"{command} could not be started: {err}")
    if not process.wait(timeout_s).finished:
        process.cancel()
        return ChildAnswer(problem=f"{command} did not answer within {timeout_s:g} s")
    lines = [m for m in process.poll() if isinstance(m, LogMessage)]
    stdout = "\n".join(m.text for m in lines if m.stream == "stdout")
    stderr = "\n".join(m.text for m in lines if m.stream == "stderr")
    if process.returncode != 0:
        return ChildAnswer(problem=f"{command} exited with status {process.returncode}: {last_line(stderr)}",
                           stderr=stderr)
    text = [line for line in stdout.splitlines() if line.strip()]
    try:
        return ChildAnswer(json.loads(text[-1] if text else ""), stderr=stderr)
    except ValueError as err:
        return ChildAnswer(problem=f"{command} printed unexpected output ({err}): {last_line(stdout)}",
                           stderr=stderr)


def last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(no output)"
