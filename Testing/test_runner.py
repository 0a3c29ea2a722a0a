"""The background runner with real child processes: engine runs, cancel of process trees, failures, argv.

Nothing is mocked: every test starts real processes (the engine itself, or small scripts that misbehave
on purpose) because what matters here is how real processes, pipes and signals behave.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
from model_factory import NetworkSize, write_task_models
from process_support import group_members, process_alive, seconds_until_gone
from totalseg_engine.cli import main as cli
from totalseg_engine.request import SegmentationRequest
from totalseg_engine.runner import (
    ENGINE_ROOT,
    EngineProcess,
    FinishedMessage,
    LogMessage,
    Message,
    ProgressMessage,
    State,
    engine_command,
)
from totalseg_engine.weights import paths

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process-group behaviour is tested on POSIX")

FAST_CPU_OFFLINE = SegmentationRequest(speed="fast", device="cpu", download=False, multilabel=True)
TINY_3MM = NetworkSize(features=(2, 4, 8), patch_size=(64, 64, 64))
SLOW_3MM = NetworkSize(features=(16, 32, 64, 128), patch_size=(32, 32, 32))  # ~20 tiles, a few seconds on a CPU
ORPHAN_BOUND_S = 5.0  # an engine whose parent was SIGKILLed is gone within this (measured: well under 0.1 s)

# Ignores SIGTERM, starts a grandchild that sleeps (and inherits the ignored SIGTERM), records both pids.
STUBBORN_CHILD = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1] + ".part", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.replace(sys.argv[1] + ".part", sys.argv[1])
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private weights cache; the child inherits it through the environment."""
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    return tmp_path / "home"


def script(tmp_path: Path, source: str, name: str = "child.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def collect(process: EngineProcess, until: Callable[[Message], bool], timeout: float = 120.0) -> list[Message]:
    """Poll like the panel's timer does until a message matches (or the run finished)."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in process.poll():
            messages.append(message)
            if until(message) or isinstance(message, FinishedMessage):
                return messages
        time.sleep(0.02)
    pytest.fail(f"no matching message within {timeout} s; got {messages[-5:]}")


def read_pids(pid_file: Path, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while not pid_file.exists():
        assert time.monotonic() < deadline, "child did not write its pids"
        time.sleep(0.02)
    return [int(p) for p in pid_file.read_text().split()]


def test_engine_run_reports_progress_and_succeeds(home, data_dir, tmp_path):
    write_task_models(paths.weights_dir(), "total", "fast", TINY_3MM, seed=5)
    output = tmp_path / "seg.nii.gz"
    command = engine_command(data_dir / "example_ct_sm.nii.gz", output, FAST_CPU_OFFLINE)
    process = EngineProcess(command).start()
    messages = collect(process, lambda m: False)
    assert process.wait(5) is State.SUCCEEDED, process.last_lines()
    assert process.returncode == 0 and output.is_file()
    assert messages[-1] == FinishedMessage(State.SUCCEEDED, 0)
    events = [m.event for m in messages if isinstance(m, ProgressMessage)]
    assert events[0].stage == "read" and events[-1].stage == "done" and events[-1].fraction == 1.0
    fractions = [e.fraction for e in events if e.stage == "predict" and e.fraction is not None]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert not any(isinstance(m, LogMessage) and m.text.startswith("{") for m in messages)
    assert 0 < process.elapsed_s < 120 and process.error_summary() == ""


def test_cancel_kills_a_stubborn_child_and_its_grandchild(tmp_path):
    pid_file = tmp_path / "pids"
    process = EngineProcess([sys.executable, str(script(tmp_path, STUBBORN_CHILD)), str(pid_file)]).start()
    collect(process, lambda m: isinstance(m, LogMessage) and m.text == "ready", timeout=20)
    child, grandchild = read_pids(pid_file)
    assert child == process.pid and process_alive(grandchild)
    started = time.monotonic()
    assert process.cancel() is State.CANCELLED
    assert time.monotonic() - started < 2.0
    assert not process_alive(child) and not process_alive(grandchild)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # reaped by the runner, not only dead
    assert process.returncode == -9 and process.state is State.CANCELLED
    started = time.monotonic()
    assert process.cancel() is State.CANCELLED and time.monotonic() - started < 0.1  # idempotent
    assert process.poll()[-1] == FinishedMessage(State.CANCELLED, -9)


def test_cancel_engine_mid_prediction_leaves_nothing(home, data_dir, tmp_path):
    write_task_models(paths.weights_dir(), "total", "fast", SLOW_3MM, seed=5)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "seg.nii.gz"
    process = EngineProcess(engine_command(data_dir / "example_ct_sm.nii.gz", output, FAST_CPU_OFFLINE)).start()
    messages = collect(process, lambda m: isinstance(m, ProgressMessage) and m.event.stage == "predict"
                       and m.event.fraction is not None)
    assert isinstance(messages[-1], ProgressMessage) and messages[-1].event.fraction < 1.0, process.last_lines()
    started = time.monotonic()
    assert process.cancel() is State.CANCELLED
    assert time.monotonic() - started < 2.0
    assert not process_alive(process.pid) and group_members(process.pid) == []
    assert not output.exists() and list(out_dir.iterdir()) == []


def test_failing_engine_surfaces_its_error(home, tmp_path):
    missing = tmp_path / "missing.nii.gz"
    process = EngineProcess(engine_command(missing, tmp_path / "seg.nii.gz", FAST_CPU_OFFLINE)).start()
    assert process.wait(60) is State.FAILED
    assert process.returncode == 1
    summary = process.error_summary()
    assert summary.startswith("ERROR: ") and "not found" in summary and str(missing) in summary
    assert "Traceback" not in "\n".join(process.last_lines())
    assert process.poll()[-1] == FinishedMessage(State.FAILED, 1)


def test_engine_command_is_the_request_on_the_engines_command_line(tmp_path):
    """The child's argv: Slicer's Python, the engine module, input and output, the request's own flags, JSON
    progress; the command line reads the same request back (every field: see test_request.py)."""
    request = SegmentationRequest(task="total_mr", speed="fast", roi_subset=["liver"], multilabel=True,
                                  output_types=["nifti", "dicom_seg"], overwrite="always", download=False)
    argv = engine_command(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz", request, python="/opt/py")
    assert argv[:3] == ["/opt/py", "-m", "totalseg_engine"] and argv[-1] == "--progress-json"
    args, parsed = cli.parse(argv[3:])
    assert (args.input, args.output, args.progress_json) == (tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz", True)
    assert parsed == request
    assert engine_command("ct", "out", SegmentationRequest())[0] == sys.executable


def test_poll_never_blocks_and_keeps_order(tmp_path):
    child = script(tmp_path, """
        import json, sys, time
        for i in range(40):
            print(json.dumps({"stage": "predict", "fraction": i / 40}))
            print(f"line {i}")
        print("to stderr", file=sys.stderr)
        time.sleep(30)
    """)
    process = EngineProcess([sys.executable, str(child)])
    assert process.poll() == [] and process.state is State.NOT_STARTED
    process.start()
    stdout: list[Message] = []
    slowest = 0.0
    deadline = time.monotonic() + 20
    while len(stdout) < 80 and time.monotonic() < deadline:
        started = time.monotonic()
        got = process.poll()
        slowest = max(slowest, time.monotonic() - started)
        stdout += [m for m in got if not (isinstance(m, LogMessage) and m.stream == "stderr")]
        time.sleep(0.005)
    rest: list[Message] = []
    for _ in range(20):  # the child now sleeps: polls return at once with nothing (or its stderr line)
        started = time.monotonic()
        rest += process.poll()
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.005)
    assert all(isinstance(m, LogMessage) and m.stream == "stderr" for m in rest)
    assert slowest < 0.05 and process.state is State.RUNNING
    expected = [x for i in range(40) for x in (("p", i / 40), ("l", f"line {i}"))]
    got = [("p", m.event.fraction) if isinstance(m, ProgressMessage) else ("l", m.text) for m in stdout]
    assert got == expected
    assert process.cancel() is State.CANCELLED
    # the two streams are read by separate threads, so the stderr line may land among the last stdout lines
    assert "to stderr" in process.last_lines(100)


def test_child_exiting_130_on_sigterm_is_cancelled_and_context_manager_cancels(tmp_path):
    graceful = script(tmp_path, """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *args: sys.exit(130))
        print("ready", flush=True)
        time.sleep(30)
    """)
    with EngineProcess([sys.executable, str(graceful)]) as process:
        collect(process, lambda m: isinstance(m, LogMessage) and m.text == "ready", timeout=20)
    assert process.state is State.CANCELLED and process.returncode == 130
    assert not process_alive(process.pid)


def test_not_started_cancel_and_double_start(tmp_path):
    process = EngineProcess([sys.executable, "-c", "pass"])
    assert process.cancel() is State.CANCELLED and process.wait() is State.CANCELLED
    with pytest.raises(RuntimeError):
        process.start()
    with pytest.raises(OSError):
        EngineProcess([str(tmp_path / "no-such-python")]).start()


def test_child_environment_finds_the_engine(tmp_path):
    process = EngineProcess([sys.executable, "-c", "import os, totalseg_engine; print(totalseg_engine.__file__); "
                             "print(os.environ['PYTHONUNBUFFERED'])"], env={"PATH": os.environ.get("PATH", "")},
                            cwd=tmp_path)
    assert process.start().wait(30) is State.SUCCEEDED
    lines = process.last_lines()
    assert Path(lines[0]).parent.parent == ENGINE_ROOT and lines[1] == "1"


def test_exit_of_the_parent_cancels_running_children(tmp_path):
    pid_file = tmp_path / "pids"
    child = script(tmp_path, STUBBORN_CHILD)
    parent = script(tmp_path, f"""
        import sys, time
        sys.path.insert(0, {str(ENGINE_ROOT)!r})
        from totalseg_engine.runner import EngineProcess
        process = EngineProcess([sys.executable, {str(child)!r}, {str(pid_file)!r}]).start()
        while not any(getattr(m, "text", "") == "ready" for m in process.poll()):
            time.sleep(0.01)
        print(process.pid)
    """, "parent.py")
    done = subprocess.run([sys.executable, str(parent)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    pids = read_pids(pid_file)
    assert pids[0] == int(done.stdout)
    assert not any(process_alive(pid) for pid in pids)


# A parent that starts a run (from its main thread, from a thread that then ends, or with the kernel's tie switched
# off so the watchdog does it), says so, and waits to be killed: the Slicer panel, a web session, a remote server.
DOOMED_PARENT = """
import sys, threading, time
sys.path.insert(0, sys.argv[4])
from totalseg_engine import lifeline
from totalseg_engine import runner
mode, child, pid_file = sys.argv[1:4]
lifeline.USE_KERNEL = mode != "watchdog"
started = []
def start():
    started.append(runner.EngineProcess([sys.executable, child, pid_file]).start())
if mode == "thread":
    worker = threading.Thread(target=start)
    worker.start()
    worker.join()  # the starting thread is gone; the run must go on as long as this process lives
else:
    start()
while not any(isinstance(m, (runner.FinishedMessage, runner.LogMessage)) for m in started[0].poll()):
    time.sleep(0.01)
time.sleep(0.5)
print("running" if started[0].state is runner.State.RUNNING else started[0].state.name, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["main", "thread", "watchdog"])
def test_a_run_ends_when_its_parent_is_killed(tmp_path, mode):
    """SIGKILL of whatever started a run (no cleanup runs in it) ends the run: the kernel's parent-death signal
    for a run started from the main thread, the watchdog otherwise (and where the kernel has no such signal)."""
    pid_file = tmp_path / "pids"
    parent = subprocess.Popen([sys.executable, str(script(tmp_path, DOOMED_PARENT, "parent.py")), mode,
                               str(script(tmp_path, STUBBORN_CHILD)), str(pid_file), str(ENGINE_ROOT)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "running"
        child, grandchild = read_pids(pid_file)
        assert process_alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        # the watchdog signals the run's whole process group; the kernel's signal reaches the run itself (the
        # engine starts no processes of its own)
        ended = [child, grandchild] if mode != "main" else [child]
        assert seconds_until_gone(ended, ORPHAN_BOUND_S) <= ORPHAN_BOUND_S, "the run outlived its killed parent"
    finally:
        parent.kill()
        for pid in read_pids(pid_file) if pid_file.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
