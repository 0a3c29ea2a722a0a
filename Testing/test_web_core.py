"""The web app's plain-Python parts: data-root confinement, the cross-session run queue, caps, secrets, input
checks and the messages users see.

They need no trame, so they run in the main test environment; the browser tests (Testing/web) drive the
whole app in Chromium in the web extra's environment.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from process_support import process_alive
from totalseg_engine.errors import InvalidInputError
from totalseg_web import inputs, messages
from totalseg_web.capacity import Capacity
from totalseg_web.data_root import DataRoot, OutsideDataRootError
from totalseg_web.protocol import same_secret
from totalseg_web.run_queue import RunQueue

ENGINE_GONE_S = 5.0  # a dropped session's engine is killed and its ticket released within this
DAMAGED_ZIP_S = 5.0  # a zip of damaged DICOM files is refused within this (GDCM took 15 s for 20 slices)


@pytest.fixture
def root(tmp_path):
    data = tmp_path / "data"
    (data / "cohort" / "s01").mkdir(parents=True)
    (data / "cohort" / "s01" / "ct.nii.gz").write_bytes(b"x")
    (data / "notes.txt").write_text("not an image")
    (data / ".hidden.nii.gz").write_bytes(b"x")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "patient.nii.gz").write_bytes(b"x")
    (data / "escape").symlink_to(secret, target_is_directory=True)
    (data / "cohort" / "link.nii.gz").symlink_to(secret / "patient.nii.gz")
    (data / "inside.nii.gz").symlink_to(data / "cohort" / "s01" / "ct.nii.gz")
    return data


@pytest.mark.parametrize("path", ["../secret/patient.nii.gz", "cohort/../../secret", "/etc/passwd", "~root",
                                  "escape/patient.nii.gz", "cohort/link.nii.gz", "escape", "cohort\\..\\..\\secret"])
def test_nothing_outside_the_data_root_is_reachable(root, path):
    with pytest.raises(OutsideDataRootError):
        DataRoot(root).resolve(path)


def test_links_inside_the_root_and_plain_paths_resolve(root):
    data = DataRoot(root)
    assert data.resolve("inside.nii.gz") == (root / "cohort" / "s01" / "ct.nii.gz").resolve()
    assert data.resolve("cohort/s01/ct.nii.gz").is_file() and data.resolve("") == root.resolve()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.resolve("cohort/missing.nii.gz")


def test_listing_shows_folders_and_images_only_and_hides_escaping_links(root, data_dir):
    (root / "dicom").symlink_to(data_dir / "example_ct_dicom", target_is_directory=True)
    data = DataRoot(root)
    with pytest.raises(OutsideDataRootError):  # the DICOM folder lies outside this root: not listed
        data.resolve("dicom")
    assert [(e.name, e.kind) for e in data.listing("")] == [("cohort", "folder"), ("inside.nii.gz", "image")]
    assert [(e.path, e.kind) for e in data.listing("cohort")] == [("cohort/s01", "folder")]
    assert [(e.name, e.kind) for e in DataRoot(data_dir).listing("") if e.name == "example_ct_dicom"] == [
        ("example_ct_dicom", "dicom")]  # slices without a .dcm suffix are recognised by their DICM marker
    with pytest.raises(NotADirectoryError):
        data.listing("inside.nii.gz")


# ------------------------------------------------------------------------------------------------ run queue


def _hold_ticket(folder: str, joined, release) -> None:
    RunQueue(folder).join("other")
    joined.set()
    release.wait(30)


def test_runs_take_turns_in_order_across_processes(tmp_path):
    queue = RunQueue(tmp_path / "queue", slots=1)
    context = multiprocessing.get_context("spawn")
    joined, release = context.Event(), context.Event()
    other = context.Process(target=_hold_ticket, args=(str(queue.folder), joined, release))
    other.start()
    try:
        assert joined.wait(60)
        mine, later = queue.join("me"), queue.join("me")
        assert (mine.ahead(), later.ahead()) == (1, 2)  # the other process's ticket came first
        release.set()
        other.join(30)
        assert (mine.ahead(), later.ahead()) == (0, 1)  # its process is gone: its ticket no longer counts
        mine.leave()
        assert later.ahead() == 0 and queue.length() == 1
    finally:
        release.set()
        other.join(30)


def _start_run_and_wait(folder: str, pid_file: str, started) -> None:
    """A session that takes its turn and starts an engine (a process group of its own), then waits to be killed
    (asleep, not on a shared Event: a process killed while waiting on one would hang the next ``set``)."""
    ticket = RunQueue(folder).join("doomed")
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    ticket.engine_started(engine.pid)
    Path(pid_file).write_text(str(engine.pid))
    started.set()
    time.sleep(120)


def test_a_killed_sessions_turn_is_released_only_once_its_engine_is_gone(tmp_path):
    """The launcher drops a dead session's tickets; one whose engine still runs counts until the engine is gone,
    so the next run never starts beside it (the launcher kills that engine's process group)."""
    queue = RunQueue(tmp_path / "queue", slots=1)
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    session = context.Process(target=_start_run_and_wait, args=(str(queue.folder), str(tmp_path / "engine"),
                                                                 started))
    session.start()
    engine = 0
    try:
        assert started.wait(60)
        engine = int((tmp_path / "engine").read_text())
        os.kill(session.pid, signal.SIGKILL)  # no cleanup runs in the session; its engine (untied here) runs on
        session.join(10)
        mine = queue.join("next")
        assert mine.ahead() == 1 and process_alive(engine)  # a dead session's running engine still holds the slot
        queue.drop_owner("doomed")
        deadline = time.monotonic() + ENGINE_GONE_S
        while mine.ahead() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mine.ahead() == 0 and not process_alive(engine)
    finally:
        session.kill()
        session.join(10)
        if engine and process_alive(engine):
            os.kill(engine, signal.SIGKILL)


def test_slots_and_dropping_an_ended_sessions_tickets(tmp_path):
    queue = RunQueue(tmp_path / "queue", slots=2)
    first, second, third = (queue.join(owner) for owner in ("a", "b", "c"))
    assert [t.ahead() for t in (first, second, third)] == [0, 0, 1]
    queue.drop_owner("a")
    assert third.ahead() == 0
    with pytest.raises(RuntimeError, match="left the queue"):
        first.ahead()
    with pytest.raises(ValueError, match="at least one slot"):
        RunQueue(tmp_path / "q2", slots=0)


# ------------------------------------------------------------------------------------------------ inputs


async def _stream(*chunks: bytes):
    for chunk in chunks:
        yield chunk


def test_an_upload_over_the_limit_is_refused_and_nothing_of_it_kept(tmp_path):
    target = tmp_path / "big.nii.gz"
    with pytest.raises(inputs.UploadTooLargeError, match="limit of 1 MB"):
        asyncio.run(inputs.save_stream(_stream(b"x" * 600_000, b"x" * 600_000), target, 2**20))
    assert not target.exists()
    assert asyncio.run(inputs.save_stream(_stream(b"ab", b"c"), target, 2**20)) == 3 and target.read_bytes() == b"abc"


def test_file_names_from_the_browser_are_reduced_to_one_harmless_component():
    assert inputs.safe_name("../../etc/passwd") == "passwd"
    assert inputs.safe_name("C:\\Users\\me\\scan 1.nii.gz") == "scan 1.nii.gz"
    assert inputs.safe_name("..") == "upload" and inputs.safe_name("a;b$.nrrd") == "a_b_.nrrd"


def test_a_corrupt_or_foreign_file_gets_the_engines_message(tmp_path, data_dir):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes((data_dir / "example_ct.nii.gz").read_bytes()[:3000])
    with pytest.raises(InvalidInputError, match="broken.nii.gz"):
        inputs.open_input(broken, tmp_path, 2**30)
    text = tmp_path / "report.pdf"
    text.write_bytes(b"%PDF")
    with pytest.raises(inputs.UnsupportedInputError, match="NIfTI"):
        inputs.open_input(text, tmp_path, 2**30)


def test_a_dicom_zip_is_unpacked_and_its_series_given_to_the_viewer(tmp_path, data_dir):
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((data_dir / "example_ct_dicom").iterdir()):
            zipped.write(path, f"study/{path.name}")
    opened = inputs.open_input(archive, tmp_path / "work", 2**30, name="series.zip")
    assert opened.is_dicom and opened.source.is_dir() and opened.name == "series.zip"
    assert len(opened.viewer_files) == len(os.listdir(data_dir / "example_ct_dicom"))
    assert all(path.startswith(str(opened.source)) for path in opened.viewer_files)
    with pytest.raises(inputs.UploadTooLargeError, match="unpacks to"):  # a zip bomb is refused unread
        inputs.unpack_zip(archive, tmp_path / "small", 1000)
    assert not (tmp_path / "small").exists()


def test_a_zip_that_is_not_one_is_refused_with_a_message(tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"PK not really")
    with pytest.raises(inputs.UnsupportedInputError, match="not a readable zip"):
        inputs.open_input(fake, tmp_path, 2**30)


def test_an_upload_is_staged_and_a_refused_one_never_touches_the_open_input(tmp_path):
    area = inputs.UploadArea(tmp_path / "uploads")
    first = area.stage()
    (first / "mine.nii.gz").write_bytes(b"open input")
    area.keep(first)
    second = area.stage()
    with pytest.raises(inputs.UploadTooLargeError):
        asyncio.run(inputs.save_stream(_stream(b"x" * 600_000, b"x" * 600_000), second / "big.nii.gz", 2**20))
    area.discard(second)
    assert (first / "mine.nii.gz").read_bytes() == b"open input" and not second.exists()
    third = area.stage()
    assert area.find(third.name) == third and area.find("../uploads") is None and area.find("") is None
    area.keep(third)  # a new input replaces the open one only once it is kept (opened and shown)
    assert not first.exists() and third.is_dir()


def test_a_long_file_name_is_shortened_keeping_its_type():
    name = inputs.safe_name("n" * 5000 + ".nii.gz")
    assert len(name) <= inputs.MAX_NAME_CHARS and name.endswith(".nii.gz") and inputs.is_image_name(name)


def test_a_zip_of_damaged_dicom_files_is_refused_at_once(tmp_path, data_dir):
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((data_dir / "example_ct_dicom").iterdir()):
            zipped.writestr(f"study/{path.name}", path.read_bytes()[:80_000])  # every slice cut short
    work = tmp_path / "work" / "sessions" / "s1"
    started = time.monotonic()
    with pytest.raises(InvalidInputError) as refused:
        inputs.open_input(archive, work, 2**30, name="series.zip")
    assert time.monotonic() - started < DAMAGED_ZIP_S
    assert "series.zip" in str(refused.value) and str(tmp_path) not in str(refused.value)


# ------------------------------------------------------------------------------------------------ access


def test_a_cap_holds_when_many_ask_at_once():
    capacity, racers = Capacity(1), 8
    barrier = threading.Barrier(racers)

    def take(_):
        barrier.wait()
        return capacity.take()

    with ThreadPoolExecutor(racers) as pool:
        taken = [slot for slot in pool.map(take, range(racers)) if slot is not None]
    assert len(taken) == 1 and capacity.in_use == 1
    taken[0].release()
    taken[0].release()  # once only
    assert capacity.in_use == 0 and capacity.take() is not None


def test_secrets_compare_whatever_the_client_sends():
    assert same_secret("s3cret", "s3cret") and not same_secret("s3cre", "s3cret")
    assert not same_secret("\u00e9", "s3cret") and not same_secret("\udcff\x00", "s3cret")
    assert same_secret("\u00e9t\u00e9", "\u00e9t\u00e9")


@pytest.mark.parametrize("path", ["ct\x00.nii.gz", 5, None, ["a"]])
def test_a_path_that_is_no_path_is_refused_with_a_message(root, path):
    with pytest.raises(OutsideDataRootError, match="not a valid path"):
        DataRoot(root).resolve(path)


def test_messages_name_files_as_the_user_named_them(tmp_path):
    upload = tmp_path / "work" / "sessions" / "a1" / "uploads" / "3" / "mine.nii.gz"
    shown = messages.for_user(f"ERROR: Input not found: {upload}; see {tmp_path}/work/sessions/a1/results/x.log",
                              {upload: "mine.nii.gz"})
    assert shown == "ERROR: Input not found: mine.nii.gz; see x.log"
    assert messages.for_user("Open http://host:8080/s/ or 'a/b'", {}) == "Open http://host:8080/s/ or 'a/b'"
