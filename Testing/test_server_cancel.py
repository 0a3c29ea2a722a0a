"""Ending a job or the server mid-run: cancel leaves no engine process and a fresh slot takes over; a server killed
with SIGKILL takes its slots with it and its client hears so within seconds. Weights slow enough to stop a run
mid-prediction (``slow_home``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from process_support import group_members, process_alive, seconds_until_gone
from server_support import slot_processes, start_server, stop_server
from totalseg_remote import JobCancelledError, RemoteServer, ServerLostError

FAST = {"task": "total", "speed": "fast", "device": "cpu"}


def running(job, timeout: float = 120.0):
    """Wait until the job predicts on its slot (its engine has loaded the model and works)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.status()
        if status.state == "running" and status.stage == "predict":
            return status
        assert not status.finished, status
        time.sleep(0.05)
    raise TimeoutError("the job never started predicting")


def test_cancel_mid_run_ends_the_engines_whole_process_group_and_a_fresh_slot_takes_over(slow_home, data_dir,
                                                                                          tmp_path):
    server = start_server(slow_home, tmp_path / "work")
    try:
        [slot] = server.slots()
        remote = RemoteServer(server.url)
        job = remote.submit(data_dir / "example_ct_sm.nii.gz", FAST)
        running(job)
        assert group_members(slot)  # the slot's process group works on the job
        started = time.monotonic()
        status = job.cancel()  # answers once the process tree is gone
        assert status.state == "cancelled" and time.monotonic() - started < 15
        assert group_members(slot) == [] and not process_alive(slot)
        with pytest.raises(JobCancelledError, match="cancelled on the server"):
            job.wait()
        [fresh] = server.slots()
        assert fresh != slot
        assert remote.info()["queue"] == {"queued": 0, "running": 0}

        # the command line stopped mid-run (SIGTERM, as the panel's Cancel; Ctrl+C alike) cancels its job too
        ct = data_dir / "example_ct_sm.nii.gz"
        command = subprocess.Popen([sys.executable, "-m", "totalseg_engine", "-i", str(ct), "-o",
                                    str(tmp_path / "seg.nii.gz"), "--ml", "--fast", "--server", server.url],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, "TOTALSEG_HOME_DIR": str(tmp_path / "none")})
        deadline = time.monotonic() + 120
        while remote.info()["queue"]["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        command.send_signal(signal.SIGTERM)
        assert command.wait(60) != 0
        assert remote.info()["queue"] == {"queued": 0, "running": 0}  # cancelled, not left to run
        assert group_members(fresh) == [] and not (tmp_path / "seg.nii.gz").exists()
    finally:
        stop_server(server)


def test_a_server_killed_mid_run_takes_its_slots_along_and_the_client_hears_within_seconds(slow_home, data_dir,
                                                                                          tmp_path):
    server = start_server(slow_home, tmp_path / "work")
    [slot] = server.slots()
    job = RemoteServer(server.url, lost_after_s=2.0).submit(data_dir / "example_ct_sm.nii.gz", FAST)
    running(job)
    streamed: list = []  # a second client follows the same job by its event stream

    def follow() -> None:
        try:
            for status in job.server.job(job.id).events():
                streamed.append(status)
        except ServerLostError as err:
            streamed.append(err)

    follower = threading.Thread(target=follow)
    follower.start()
    while not streamed:
        time.sleep(0.05)
    server.process.send_signal(signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(ServerLostError, match="stopped answering during the job") as lost:
        job.wait(poll_s=0.2)
    assert time.monotonic() - started < 6 and "run it again once the server is back" in str(lost.value)
    follower.join(10)
    assert isinstance(streamed[-1], ServerLostError) and "Nothing was written" in str(streamed[-1])
    assert seconds_until_gone([slot], 10) < 10, "the slot outlived its server"
    assert group_members(slot) == []
    assert slot_processes(server.process.pid) == []
    server.process.wait(10)
    # the next server on the same work folder removes what the killed one left
    after = start_server(slow_home, tmp_path / "work")
    try:
        assert not [p for p in (tmp_path / "work").iterdir() if str(after.process.pid) not in p.joinpath(
            "server.pid").read_text()]
    finally:
        stop_server(after)
