"""``totalseg_batch``: cohorts on a real Dask cluster, resumable, nothing lost.

The clusters are real: distributed's ``LocalCluster`` with two worker processes, and a ``dask scheduler`` plus
``dask worker`` started as programs on 127.0.0.1. The cases are the shared CTs (cropped into distinct images,
one truncated as an interrupted copy leaves it) and the shared DICOM series; the models are release-layout
folders with small networks. Every batch output is compared with the single-case command's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from model_factory import SMALL_3MM, write_task_models
from process_support import group_left_after
from totalseg_batch import cases as batch_cases
from totalseg_batch import cli as batch_cli
from totalseg_batch import manifest as batch_manifest
from totalseg_batch import space as batch_space
from totalseg_batch import warm as batch_process
from totalseg_batch import worker as batch_worker
from totalseg_batch.cases import Case
from totalseg_engine import imageio, request_from_args
from totalseg_engine.cli import main as cli
from totalseg_engine.errors import InvalidInputError, InvalidOptionError
from totalseg_engine.request import request_fields

pytest.importorskip("distributed", reason="totalseg_batch runs on Dask distributed (pip install '.[batch]')")

FAST = ["--fast", "-d", "cpu", "--offline"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    write_task_models(home / "nnunet" / "results", "total", "fast", SMALL_3MM, seed=5)
    return home


@pytest.fixture
def home(models, monkeypatch) -> Path:
    """The model folders as the weights home of this process and of every worker it starts."""
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(models))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", "http://127.0.0.1:9/{version}/{folder}.zip")  # nothing listens
    return models


def write_ct(path: Path, data_dir: Path, crop: int) -> Path:
    """example_ct_sm with ``crop`` slices taken off the top: a distinct CT of the same patient."""
    image = nib.load(data_dir / "example_ct_sm.nii.gz")
    data = np.asanyarray(image.dataobj)[..., : image.shape[2] - crop]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, image.affine, image.header), path)
    return path


def truncate_copy(source: Path, target: Path) -> Path:
    """What an interrupted copy leaves: the first part of a .nii.gz."""
    target.write_bytes(source.read_bytes()[:3000])
    return target


def records(outdir: Path) -> dict[str, dict]:
    return batch_manifest.Manifest(outdir).load()


def manifest_lines(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / "manifest.jsonl").read_text().splitlines()]


def single_case(case: Path, output: Path, *options: str) -> Path:
    assert cli.main(["-i", str(case), "-o", str(output), *FAST, "-q", *options]) == 0
    return output


def assert_same_labels(batch_file: Path, single_file: Path) -> None:
    ours, theirs = nib.load(batch_file), nib.load(single_file)
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))
    np.testing.assert_array_equal(ours.affine, theirs.affine)
    assert imageio.read_label_map(ours) == imageio.read_label_map(theirs)


def leftovers(outdir: Path) -> list[str]:
    """Anything a run may leave half-done: staging folders, temporary siblings of outputs."""
    return [str(p) for p in outdir.rglob("*") if ".staging" in p.parts or ".tmp" in p.name or "partial" in p.name]


# --------------------------------------------------------------------------------------------------
# On a local Dask cluster of two worker processes
# --------------------------------------------------------------------------------------------------


def test_a_cohort_on_two_workers_equals_the_single_case_command_and_goes_on_past_a_corrupt_case(
        home, data_dir, tmp_path, capsys):
    cohort = tmp_path / "cohort"
    good = {name: write_ct(cohort / f"{name}.nii.gz", data_dir, crop) for name, crop in (("a_ct", 0), ("c_ct", 4))}
    truncate_copy(good["a_ct"], cohort / "b_corrupt.nii.gz")  # in the middle of the cohort
    out = tmp_path / "out"

    code = batch_cli.main(["-i", str(cohort), "-o", str(out), *FAST, "--ml", "-s", "--workers", "2"])

    err = capsys.readouterr().err
    assert code == 1, err  # one case failed: the exit status says so
    assert err.strip().splitlines()[-1].startswith("2 succeeded, 1 failed, 0 skipped")
    for case_id, source in good.items():
        single = single_case(source, tmp_path / "single" / f"{case_id}.nii.gz", "--ml", "-s")
        assert_same_labels(out / case_id / "segmentation.nii.gz", single)
        assert json.loads((out / case_id / "statistics.json").read_text()) == \
            json.loads((single.parent / "statistics.json").read_text())
    lines = manifest_lines(out)
    assert [line["case_id"] for line in lines] == ["a_ct", "b_corrupt", "c_ct"]  # one line per case
    failed = lines[1]
    assert failed["status"] == "failed" and "b_corrupt.nii.gz" in failed["error"] and "corrupt" in failed["error"]
    assert not (out / "b_corrupt").exists() and leftovers(out) == []
    assert all(line["fingerprint"]["sha256"] for line in lines) and lines[0]["outputs"] == [
        "segmentation.nii.gz", "statistics.json"]
    summary = (out / "manifest.csv").read_text().splitlines()
    assert summary[0].startswith("case_id,status") and [row.split(",")[1] for row in summary[1:]] == \
        ["done", "failed", "done"]
    table = (out / "cohort_statistics.csv").read_text().splitlines()
    liver = json.loads((out / "c_ct" / "statistics.json").read_text())["liver"]
    assert f"c_ct,liver,{liver['volume']},{liver['intensity']}" in table
    import pyarrow.parquet as pq

    assert pq.read_table(out / "cohort_statistics.parquet").num_rows == len(table) - 1

    # the same command again, one input changed: only that case runs; the failed one is not retried
    write_ct(good["c_ct"], data_dir, 6)
    code = batch_cli.main(["-i", str(cohort), "-o", str(out), *FAST, "--ml", "-s", "--workers", "2",
                           "--progress-json"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert [(e["case_id"], e["status"]) for e in events if e["event"] == "case"] == [("c_ct", "done")]
    assert events[0]["skipped"] == 2 and events[-1]["failed_before"] == 1
    assert nib.load(out / "c_ct" / "segmentation.nii.gz").shape[2] == 24

    # the corrupt file replaced by a good copy, --retry-failed: the cohort is complete
    write_ct(cohort / "b_corrupt.nii.gz", data_dir, 2)
    assert batch_cli.main(["-i", str(cohort), "-o", str(out), *FAST, "--ml", "-s", "--workers", "2",
                           "--retry-failed", "-q"]) == 0
    assert {line["case_id"]: line["status"] for line in manifest_lines(out)} == dict.fromkeys(
        ["a_ct", "b_corrupt", "c_ct"], "done")
    assert list(out.glob("manifest.*.jsonl")) == [] and leftovers(out) == []


def test_a_worker_killed_during_a_case_costs_only_that_attempt(home, data_dir, tmp_path, capsys):
    cohort = tmp_path / "cohort"
    for index in range(3):
        write_ct(cohort / f"ct{index}.nii.gz", data_dir, index)
    out = tmp_path / "out"
    killed: dict = {}

    def kill_the_first_worker_that_starts_a_case() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for marker in out.glob(".staging/*/attempt-*/attempt.json"):
                try:
                    pid = json.loads(marker.read_text())["pid"]
                except (OSError, ValueError):
                    continue  # being written
                os.kill(pid, signal.SIGKILL)
                killed.update(case=marker.parent.parent.name, pid=pid)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_first_worker_that_starts_a_case)
    killer.start()
    code = batch_cli.main(["-i", str(cohort), "-o", str(out), *FAST, "--ml", "--workers", "2"])
    killer.join()
    assert killed, "no case started"
    assert code == 0, capsys.readouterr().err
    record = records(out)[killed["case"]]
    assert record["status"] == "done" and record["attempts"] == 2 and record["lost_attempts"] == 1
    assert record["worker"] != f"{socket.gethostname()}:{killed['pid']}"
    single = single_case(cohort / f"{killed['case']}.nii.gz", tmp_path / "single.nii.gz", "--ml")
    assert_same_labels(out / killed["case"] / "segmentation.nii.gz", single)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["ct0", "ct1", "ct2"]
    assert leftovers(out) == []


def test_a_case_whose_workers_all_die_is_recorded_as_failed_and_the_rest_complete(home, data_dir, tmp_path,
                                                                                   capsys):
    cohort = tmp_path / "cohort"
    for name in ("a", "b"):
        write_ct(cohort / f"{name}.nii.gz", data_dir, 0)
    out = tmp_path / "out"
    stop = threading.Event()

    def kill_every_attempt_at_case_a() -> None:
        seen = set()
        while not stop.is_set():
            for marker in out.glob(".staging/a/attempt-*/attempt.json"):
                with_pid = marker.read_text()
                if with_pid and marker not in seen:
                    seen.add(marker)
                    os.kill(json.loads(with_pid)["pid"], signal.SIGKILL)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_every_attempt_at_case_a)
    killer.start()
    try:
        code = batch_cli.main(["-i", str(cohort), "-o", str(out), *FAST, "--ml", "--workers", "2",
                               "--max-attempts", "2"])
    finally:
        stop.set()
        killer.join()
    assert code == 1
    failed = records(out)["a"]
    assert failed["status"] == "failed" and "died 2 times" in failed["error"]
    assert records(out)["b"]["status"] == "done" and not (out / "a").exists() and leftovers(out) == []


class DaskPrograms:
    """A ``dask scheduler`` and ``dask worker`` programs on 127.0.0.1. Each worker program runs in a process group
    of its own (its nanny and the worker process the nanny starts), so that it can be killed whole."""

    def __init__(self, folder: Path) -> None:
        self.dask = Path(sys.executable).parent / "dask"
        if not self.dask.exists():
            pytest.skip("the dask command is not installed beside this Python")
        folder.mkdir(parents=True)
        self.folder = folder
        scheduler_file = folder / "scheduler.json"
        self.log = (folder / "scheduler.log").open("w")
        self.scheduler = subprocess.Popen([str(self.dask), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                           "--scheduler-file", str(scheduler_file), "--no-dashboard"],
                                          stdout=subprocess.DEVNULL, stderr=self.log)
        self.workers: list[subprocess.Popen] = []
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.address = json.loads(scheduler_file.read_text())["address"]
        assert self.address.startswith("tcp://127.0.0.1:")

    def start_workers(self, count: int) -> None:
        """``count`` more worker programs of one thread each; returns once the scheduler has them all."""
        for _ in range(count):
            self.workers.append(subprocess.Popen(
                [str(self.dask), "worker", self.address, "--nworkers", "1", "--nthreads", "1", "--host",
                 "127.0.0.1", "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=dict(os.environ), start_new_session=True))
        self.wait_for_workers(len(self.workers))

    def kill_workers(self) -> None:
        """SIGKILL every worker program, nannies and worker processes; returns once the scheduler has none."""
        for worker in self.workers:
            os.killpg(worker.pid, signal.SIGKILL)
        for worker in self.workers:
            worker.wait(timeout=30)
            assert group_left_after(worker.pid, 30) == []
        self.workers = []
        self.wait_for_workers(0)

    def wait_for_workers(self, count: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            deadline = time.monotonic() + timeout
            while len(client.nthreads()) != count:
                assert time.monotonic() < deadline, f"the scheduler has {len(client.nthreads())} workers, not {count}"
                time.sleep(0.2)

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        self.scheduler.terminate()
        self.scheduler.wait(timeout=30)
        self.log.close()


@pytest.fixture
def dask_programs(home, tmp_path):
    """A scheduler without workers (``start_workers`` adds them), seeing the weights home of ``home``."""
    programs = DaskPrograms(tmp_path / "dask")
    yield programs
    programs.close()


class Driver:
    """``totalseg_batch`` as a program, in a process group of its own, its stderr read line by line as it runs."""

    def __init__(self, *argv: object) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "totalseg_batch.cli", *map(str, argv)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self._reader.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first line matching ``pattern``, waiting up to ``timeout`` s for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            assert self.process.poll() is None or self._reader.is_alive(), \
                f"the driver ended ({self.process.returncode}) without printing {pattern!r}:\n{self.text}"
            time.sleep(0.05)
        raise AssertionError(f"no line matched {pattern!r} in {timeout} s:\n{self.text}")

    def done_cases(self) -> set[str]:
        """The cases the driver has reported done so far."""
        return {m.group(1) for line in list(self.lines) if (m := re.search(r"^\[\d+/\d+\] (\S+) done", line))}

    def finish(self, timeout: float) -> int:
        """The exit status, waiting up to ``timeout`` s for it."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def test_an_existing_scheduler_runs_the_cohort(dask_programs, data_dir, tmp_path):
    """``--scheduler`` against a ``dask scheduler`` and a ``dask worker`` started as programs on 127.0.0.1."""
    dask_programs.start_workers(1)
    case = write_ct(tmp_path / "cohort" / "one.nii.gz", data_dir, 0)
    out = tmp_path / "out"
    assert batch_cli.main(["-i", str(case), "-o", str(out), *FAST, "--ml", "--scheduler", dask_programs.address,
                           "-q"]) == 0
    record = records(out)["one"]
    assert record["status"] == "done" and record["worker"].split(":")[1] != str(os.getpid())
    assert_same_labels(out / "one" / "segmentation.nii.gz", single_case(case, tmp_path / "single.nii.gz", "--ml"))


# --------------------------------------------------------------------------------------------------
# When things go wrong: lost workers, no workers, two runs in one folder, read-only and full disks
# --------------------------------------------------------------------------------------------------


def test_every_finished_case_stays_done_when_every_worker_is_lost(dask_programs, data_dir, tmp_path):
    """All workers SIGKILLed after some cases finished, two new ones started: the scheduler lost the results it held
    (recomputed them on the new workers, which found the case folders and failed); the finished cases stay done."""
    cohort = tmp_path / "cohort"
    for index in range(6):
        write_ct(cohort / f"c{index}.nii.gz", data_dir, index)
    out = tmp_path / "out"
    dask_programs.start_workers(2)
    driver = Driver("-i", cohort, "-o", out, *FAST, "--ml", "--scheduler", dask_programs.address)
    try:
        first = driver.wait_for(r"^\[\d+/6\] (\S+) done", 300).group(1)
        dask_programs.kill_workers()
        done_before = driver.done_cases()
        dask_programs.start_workers(2)
        code = driver.finish(600)
    finally:
        driver.kill()
    assert code == 0 and "6 succeeded, 0 failed, 0 skipped" in driver.text, driver.text
    final = records(out)
    assert {case_id: record["status"] for case_id, record in final.items()} == {
        f"c{index}": "done" for index in range(6)}, driver.text
    for case_id in done_before:  # recorded once, by the worker that finished it before the workers were lost
        assert final[case_id]["attempts"] == 1 and "lost_attempts" not in final[case_id]
    assert len(manifest_lines(out)) == 6 and list(out.glob("manifest.*.jsonl")) == [] and leftovers(out) == []
    assert batch_cli.main(["-i", str(cohort), "-o", str(out), *FAST, "--ml", "--scheduler", dask_programs.address,
                           "-q"]) == 0  # a re-run finds the cohort complete
    assert_same_labels(out / first / "segmentation.nii.gz",
                       single_case(cohort / f"{first}.nii.gz", tmp_path / "single.nii.gz", "--ml"))


def test_a_finished_case_computed_again_returns_its_record_and_touches_nothing(home, data_dir, tmp_path,
                                                                              monkeypatch):
    """What a worker does when Dask computes a case again that this run has finished (the worker holding the result
    was lost before the driver took it): it returns the record, from the run's note of the case or, where the worker
    died before writing the note, from the manifest. Another run still refuses a folder it did not write."""
    monkeypatch.setattr(batch_worker, "WARM", batch_process.WarmModels())
    case = batch_cases.find_cases([write_ct(tmp_path / "ct.nii.gz", data_dir, 0)])[0]
    out = tmp_path / "out"
    parser = batch_cli.build_parser()
    request = request_from_args(parser, parser.parse_args(["-i", "x", "-o", "y", *FAST, "--ml"]))
    this_run = batch_worker.CaseRequest(str(out), request, batch_cli.options_key(request), run_id="run-a")
    first = batch_worker.run_case(case, this_run)
    assert first["status"] == "done" and first["run"] == "run-a"
    published = (out / "ct" / "segmentation.nii.gz").stat()
    assert batch_worker.run_case(case, this_run)["finished"] == first["finished"]  # from the run's note
    shutil.rmtree(batch_worker.run_folder(this_run))
    assert batch_worker.run_case(case, this_run)["finished"] == first["finished"]  # from the manifest
    assert (out / "ct" / "segmentation.nii.gz").stat().st_mtime_ns == published.st_mtime_ns
    assert sum(len(path.read_text().splitlines()) for path in out.glob("manifest.*.jsonl")) == 1
    assert list((out / ".staging").iterdir()) == []  # no attempt was begun
    another_run = batch_worker.CaseRequest(str(out), request, batch_cli.options_key(request), run_id="run-b")
    assert "not in the manifest" in batch_worker.run_case(case, another_run)["error"]


def test_a_finished_case_computed_again_removes_the_attempt_its_killed_worker_left(home, data_dir, tmp_path,
                                                                                   monkeypatch):
    """Defect (seen once in CI, test_every_finished_case_stays_done_when_every_worker_is_lost): a worker SIGKILLed
    after publishing a case but before removing its staging folder left .staging/<case>/attempt-*; the worker that
    computed the case again returned its record and left that folder behind."""
    monkeypatch.setattr(batch_worker, "WARM", batch_process.WarmModels())
    case = batch_cases.find_cases([write_ct(tmp_path / "ct.nii.gz", data_dir, 0)])[0]
    out = tmp_path / "out"
    parser = batch_cli.build_parser()
    request = request_from_args(parser, parser.parse_args(["-i", "x", "-o", "y", *FAST, "--ml"]))
    this_run = batch_worker.CaseRequest(str(out), request, batch_cli.options_key(request), run_id="run-a")
    first = batch_worker.run_case(case, this_run)
    dead = out / batch_worker.STAGING / "ct" / f"{batch_worker.ATTEMPT_PREFIX}killed"
    dead.mkdir(parents=True)
    (dead / "attempt.json").write_text('{"pid": 1, "host": "gone"}')
    assert batch_worker.run_case(case, this_run)["finished"] == first["finished"]
    assert not (out / batch_worker.STAGING / "ct").exists()


def test_with_no_worker_connected_the_run_says_so_and_stops_after_the_bound(dask_programs, data_dir, tmp_path,
                                                                               capsys):
    cohort = tmp_path / "cohort"
    for index in range(4):
        write_ct(cohort / f"n{index}.nii.gz", data_dir, index)
    out = tmp_path / "out"
    dask_programs.start_workers(1)
    driver = Driver("-i", cohort, "-o", out, *FAST, "--ml", "--scheduler", dask_programs.address,
                    "--no-worker-timeout", "5")
    try:
        driver.wait_for(r"^\[\d+/4\] (\S+) done", 300)
        dask_programs.kill_workers()
        killed = time.monotonic()
        told = driver.wait_for(r"No Dask worker is connected", 60)
        code = driver.finish(120)
        stopped_after = time.monotonic() - killed
    finally:
        driver.kill()
    assert told and code == 3, driver.text
    assert stopped_after < 5 + 60, stopped_after  # the bound, and a generous allowance for a loaded machine
    assert re.search(r"no Dask worker .*for 5 s", driver.text, re.IGNORECASE), driver.text
    final = records(out)
    done = {case_id for case_id, record in final.items() if record["status"] == "done"}
    not_run = {case_id for case_id, record in final.items() if record["status"] == "not_run"}
    assert done and not_run and done | not_run == {f"n{index}" for index in range(4)}, final
    assert all("--no-worker-timeout" in final[case_id]["error"] for case_id in not_run)
    assert f"{len(done)} succeeded, 0 failed, {len(not_run)} not run" in driver.text, driver.text
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(done) and leftovers(out) == []

    # the same command once a worker is back runs exactly the cases that were not run
    dask_programs.start_workers(1)
    capsys.readouterr()
    assert batch_cli.main(["-i", str(cohort), "-o", str(out), *FAST, "--ml", "--scheduler", dask_programs.address,
                           "--progress-json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e["case_id"] for e in events if e["event"] == "case"} == not_run
    assert all(record["status"] == "done" for record in records(out).values())


def test_a_run_with_no_worker_at_all_says_so_from_the_start(dask_programs, data_dir, tmp_path):
    case = write_ct(tmp_path / "cohort" / "alone.nii.gz", data_dir, 0)
    out = tmp_path / "out"
    driver = Driver("-i", case, "-o", out, *FAST, "--ml", "--scheduler", dask_programs.address,
                    "--no-worker-timeout", "2")
    try:
        code = driver.finish(120)
    finally:
        driver.kill()
    assert code == 3 and "No Dask worker is connected" in driver.text, driver.text
    assert records(out)["alone"]["status"] == "not_run" and not (out / "alone").exists() and leftovers(out) == []


def test_a_shard_is_refused_while_a_whole_cohort_run_works_in_its_folder(dask_programs, data_dir, tmp_path):
    """Before: the shard computed every case while the whole-cohort run waited for a worker, which then found the
    folders the shard wrote and failed them."""
    cohort = tmp_path / "cohort"
    for index in range(2):
        write_ct(cohort / f"w{index}.nii.gz", data_dir, index)
    out = tmp_path / "out"
    driver = Driver("-i", cohort, "-o", out, *FAST, "--ml", "--scheduler", dask_programs.address)
    try:
        driver.wait_for(r"Dask scheduler .*0 workers", 120)  # it holds the folder, waiting for a worker
        shard = subprocess.run([sys.executable, "-m", "totalseg_batch.cli", "-i", str(cohort), "-o", str(out), *FAST,
                                "--ml", "--shard", "1/1", "-q"], capture_output=True, text=True, timeout=300)
        assert shard.returncode == 2 and "Another totalseg_batch run" in shard.stderr, shard.stderr
        assert not (out / "w0").exists() and list(out.glob("manifest*")) == []
        dask_programs.start_workers(1)
        code = driver.finish(600)
    finally:
        driver.kill()
    assert code == 0, driver.text
    assert all(record["attempts"] == 1 and "lost_attempts" not in record for record in records(out).values())


def test_one_locking_rule_for_whole_cohort_runs_and_shards(home, data_dir, tmp_path, capsys):
    """Runs in one folder never share a case: a shard excludes a whole-cohort run and any slice of another N; slices
    of the same N run side by side."""
    from totalseg_batch import locking as batch_locking

    cohort = tmp_path / "cohort"
    for index in range(2):
        write_ct(cohort / f"s{index}.nii.gz", data_dir, index)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["-i", str(cohort), "-o", str(out), *FAST, "--ml", "-q"]
    with batch_locking.exclusive(out, "1/2"):  # as a --shard 1/2 run holds it
        for extra in ([], ["--shard", "1/3"], ["--shard", "1/2"]):
            assert batch_cli.main(argv + extra) == 2, extra
            assert "Another totalseg_batch run" in capsys.readouterr().err
        assert batch_cli.main(argv + ["--shard", "2/2"]) == 0  # the other slice of the same cohort
    assert set(records(out)) == {"s1"}
    with batch_locking.exclusive(out, None):  # as a whole-cohort run holds it
        assert batch_cli.main(argv + ["--shard", "1/2"]) == 2
        assert "Another totalseg_batch run" in capsys.readouterr().err


@contextlib.contextmanager
def read_only_folder(tmp_path: Path):
    """A folder no run may write to, and how to run totalseg_batch there: a read-only bind mount (as root, with the
    privilege to mount), else a root-owned folder and the command as the unprivileged user nobody."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    (folder / "kept.txt").write_text("x")
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0:
        try:
            remounted = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
            if remounted.returncode == 0:
                yield folder, {}
                return
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    if os.geteuid() != 0:
        pytest.skip("neither a read-only bind mount nor running as another user is possible here")
    shared = Path(tempfile.mkdtemp(prefix="totalseg-readonly-"))  # outside pytest's private (0700) folders
    try:
        shared.chmod(0o755)
        (shared / "kept.txt").write_text("x")
        yield shared, {"user": "nobody"}
    finally:
        shutil.rmtree(shared)


def test_an_unwritable_output_folder_is_a_bad_option(home, data_dir, tmp_path):
    case = data_dir / "example_ct_sm.nii.gz"  # readable by anyone
    with read_only_folder(tmp_path) as (folder, how):
        for outdir in (folder, folder / "out"):
            run = subprocess.run([sys.executable, "-m", "totalseg_batch.cli", "-i", str(case), "-o", str(outdir),
                                  *FAST, "-q"], capture_output=True, text=True, timeout=300, **how)
            assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
            assert f"Cannot write to {outdir}" in run.stderr, run.stderr
        assert sorted(p.name for p in folder.iterdir()) == ["kept.txt"]


@pytest.mark.parametrize("option", [["--max-attempts", "0"], ["--workers", "0"], ["--cases-per-worker", "0"]])
def test_a_bad_cohort_option_leaves_nothing_behind(home, data_dir, tmp_path, option, capsys):
    case = write_ct(tmp_path / "ct.nii.gz", data_dir, 0)
    out = tmp_path / "out"
    assert batch_cli.main(["-i", str(case), "-o", str(out), *FAST, *option]) == 2
    assert option[0] in capsys.readouterr().err and not out.exists()


def test_input_paths_are_stored_normalised(data_dir, tmp_path):
    case = write_ct(tmp_path / "in" / "c1.nii.gz", data_dir, 0)
    (tmp_path / "p2").mkdir()
    assert batch_cases.find_cases([tmp_path / "p2" / ".." / "in" / "c1.nii.gz"])[0].source == str(case)
    listing = tmp_path / "p2" / "list.txt"
    listing.write_text("../p2/../in/c1.nii.gz\n")
    assert batch_cases.find_cases([listing])[0].source == str(case)


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of ``size`` mounted at ``folder`` (skips where mounting is not permitted)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_case_that_the_free_space_cannot_hold_is_not_computed_and_the_run_stops(dask_programs, data_dir,
                                                                                 tmp_path, capsys):

    cohort = tmp_path / "cohort"
    for index in range(2):
        write_ct(cohort / f"a{index}.nii.gz", data_dir, index)
    dask_programs.start_workers(1)
    with small_disk(tmp_path / "disk", "48m") as disk:
        out = disk / "out"
        argv = ["-i", str(cohort), "-o", str(out), *FAST, "--ml", "--scheduler", dask_programs.address]
        assert batch_cli.main(argv + ["-q"]) == 0
        before = records(out)
        for index in range(2, 8):  # the cohort grows; meanwhile the disk filled up
            write_ct(cohort / f"b{index}.nii.gz", data_dir, index)
        filler = disk / "filler"  # leaves 64 KiB: less than any case writes
        filler.write_bytes(bytes(shutil.disk_usage(disk).free - 64 * 1024))
        capsys.readouterr()
        assert batch_cli.main(argv) == 4
        err = capsys.readouterr().err
        assert "not enough free space" in err and "Traceback" not in err, err
        final = records(out)
        assert {case_id: final[case_id] for case_id in before} == before  # the finished cases are kept as they were
        refused = {f"b{index}" for index in range(2, 8)}
        assert {case_id for case_id, r in final.items() if r["status"] == "not_run"} == refused, final
        assert all("free space" in final[case_id]["error"] and "stages" not in final[case_id] for case_id in refused)
        assert not any((out / case_id).exists() for case_id in refused) and leftovers(out) == []

        parser = batch_cli.build_parser()  # the estimate covers what a case really wrote
        request = request_from_args(parser, parser.parse_args(["-i", "x", "-o", "y", *FAST, "--ml"]))
        case = batch_cases.find_cases([cohort / "a0.nii.gz"])[0]
        written = sum(p.stat().st_size for p in (out / "a0").rglob("*") if p.is_file())
        assert batch_space.needed_bytes(case, request) >= written

        filler.unlink()  # space again: the same command runs what was not run
        assert batch_cli.main(argv + ["-q"]) == 0
        assert all(record["status"] == "done" for record in records(out).values())


# --------------------------------------------------------------------------------------------------
# Shards, in-process
# --------------------------------------------------------------------------------------------------


def test_shards_cover_the_cohort_once_on_warm_models_and_a_full_run_then_skips_it_all(home, data_dir, tmp_path):
    cohort = tmp_path / "cohort"
    for index in range(5):
        write_ct(cohort / f"s{index}.nii.gz", data_dir, index)
    out = tmp_path / "out"
    shards = [subprocess.Popen([sys.executable, "-m", "totalseg_batch.cli", "-i", str(cohort), "-o", str(out),
                                *FAST, "--ml", "--shard", part, "-q"], stderr=subprocess.PIPE, text=True)
              for part in ("1/2", "2/2")]  # at the same time, as a Slurm array runs them
    for shard in shards:
        assert shard.wait(timeout=300) == 0, shard.stderr.read()
    shard_files = sorted(out.glob("manifest.*.jsonl"))
    assert len(shard_files) == 2  # one writer each: the two shard processes
    per_shard = [[json.loads(line) for line in path.read_text().splitlines()] for path in shard_files]
    ids = sorted(r["case_id"] for lines in per_shard for r in lines)
    assert ids == [f"s{index}" for index in range(5)]  # every case once
    for lines in per_shard:  # each shard loaded its model once, then reused it
        assert [r["models_loaded"] for r in lines] == [1] + [0] * (len(lines) - 1)
    assert batch_cli.main(["-i", str(cohort), "-o", str(out), *FAST, "--ml", "-q"]) == 0
    assert [line["case_id"] for line in manifest_lines(out)] == ids and list(out.glob("manifest.*.jsonl")) == []


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shard_slices_partition_the_cohort(count):
    cases = [Case(f"case{index:03d}", f"/data/{index}.nii.gz") for index in range(20)]
    slices = [batch_cases.shard(list(reversed(cases)), f"{index}/{count}") for index in range(1, count + 1)]
    flat = [case.case_id for part in slices for case in part]
    assert sorted(flat) == [case.case_id for case in cases] and len(flat) == len(set(flat))


@pytest.mark.parametrize("spec", ["0/2", "3/2", "1", "a/b", ""])
def test_a_bad_shard_says_what_it_expects(spec):
    with pytest.raises(InvalidOptionError, match="I/N"):
        batch_cases.parse_shard(spec)


def test_a_dicom_folder_in_a_cohort_is_written_as_the_single_case_command_writes_it(home, data_dir, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(data_dir / "example_ct_dicom", cohort / "patient1")
    out = tmp_path / "out"
    assert batch_cli.main(["-i", str(cohort), "-o", str(out), *FAST, "--shard", "1/1", "-q"]) == 0
    single = tmp_path / "single"
    single_case(cohort / "patient1", single)
    files = sorted(p.name for p in (out / "patient1").iterdir())
    assert files == sorted(p.name for p in single.iterdir()) and len(files) == 117
    assert_same_labels(out / "patient1" / "liver.nii.gz", single / "liver.nii.gz")


def test_surfaces_of_a_cohort_are_the_single_case_commands(home, data_dir, tmp_path):
    """-ot stl: each case folder holds one surface per structure, byte for byte what the command writes."""
    case = write_ct(tmp_path / "cohort" / "c1.nii.gz", data_dir, 0)
    out = tmp_path / "out"
    assert batch_cli.main(["-i", str(case), "-o", str(out), *FAST, "-ot", "stl", "--shard", "1/1", "-q"]) == 0
    single = single_case(case, tmp_path / "single", "-ot", "stl")
    files = sorted(p.name for p in (out / "c1").iterdir())
    assert files == sorted(p.name for p in single.iterdir()) and len(files) == 117 and files[0].endswith(".stl")
    assert all((out / "c1" / name).read_bytes() == (single / name).read_bytes() for name in files)
    assert records(out)["c1"]["status"] == "done" and not leftovers(out)


@pytest.mark.parametrize("kind", ["stl", "obj"])
def test_the_free_space_estimate_covers_the_surfaces_of_a_real_segmentation(kind, data_dir, tmp_path):
    """The official model's own segmentation of example_ct_sm (3 mm: the most surface per voxel of any grid),
    written as surfaces, against the estimate for that input (the untrained fixture's labels are noise, whose
    surfaces no estimate from the input's size bounds usefully)."""
    from totalseg_engine.outputs import surfaces

    segmentation = nib.load(data_dir / "example_seg.nii.gz")
    labels = np.asanyarray(segmentation.dataobj).astype(np.uint8)
    folder = surfaces.write_surfaces(labels, segmentation, imageio.read_label_map(segmentation), tmp_path / kind, kind)
    written = sum(p.stat().st_size for p in folder.iterdir())
    parser = batch_cli.build_parser()
    request = request_from_args(parser, parser.parse_args(["-i", "x", "-o", "y", *FAST, "-ot", kind]))
    case = batch_cases.find_cases([data_dir / "example_ct_sm.nii.gz"])[0]
    assert written > 5_000_000 and batch_space.needed_bytes(case, request) >= written + batch_space.FIXED_BYTES


def test_a_folder_that_no_run_wrote_is_never_replaced(home, data_dir, tmp_path):
    case = write_ct(tmp_path / "cohort" / "mine.nii.gz", data_dir, 0)
    out = tmp_path / "out"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "notes.txt").write_text("my measurements")
    assert batch_cli.main(["-i", str(case), "-o", str(out), *FAST, "--ml", "--shard", "1/1", "-q"]) == 1
    assert (out / "mine" / "notes.txt").read_text() == "my measurements"
    assert "not in the manifest" in records(out)["mine"]["error"]


def test_bad_options_stop_before_any_case(home, data_dir, tmp_path, capsys):
    case = write_ct(tmp_path / "ct.nii.gz", data_dir, 0)
    with pytest.raises(SystemExit) as stopped:
        batch_cli.main(["-i", str(case), "-o", str(tmp_path / "out"), *FAST, "-s", "stats.json"])
    assert stopped.value.code == 2 and "cohort_statistics.csv" in capsys.readouterr().err
    assert batch_cli.main(["-i", str(case), "-o", str(tmp_path / "out"), *FAST, "-rs", "livr"]) == 2
    assert "livr" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    assert batch_cli.main(["-i", str(case), "-o", str(tmp_path / "file"), *FAST]) == 2
    assert "is a file" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Finding the cases
# --------------------------------------------------------------------------------------------------


def test_cases_come_from_files_folder_trees_dicom_folders_zips_and_lists(data_dir, tmp_path):
    tree = tmp_path / "tree"
    write_ct(tree / "s01" / "ct.nii.gz", data_dir, 0)
    write_ct(tree / "s02.nii.gz", data_dir, 0)
    (tree / "s02.seg.nrrd").write_text("NRRD0004")  # a segmentation beside its image is not a case
    (tree / ".hidden").mkdir()
    write_ct(tree / ".hidden" / "x.nii.gz", data_dir, 0)
    (tree / "s02.json").write_text("{}")
    shutil.copytree(data_dir / "example_ct_dicom", tree / "s03" / "dicom")
    shutil.make_archive(str(tree / "s04"), "zip", data_dir / "example_ct_dicom")
    single = write_ct(tmp_path / "alone.nii.gz", data_dir, 0)
    cases = batch_cases.find_cases([tree, single])
    assert [(c.case_id, Path(c.source).relative_to(tmp_path).as_posix()) for c in cases] == [
        ("alone", "alone.nii.gz"), ("s01__ct", "tree/s01/ct.nii.gz"), ("s02", "tree/s02.nii.gz"),
        ("s03__dicom", "tree/s03/dicom"), ("s04", "tree/s04.zip")]
    assert batch_cases.find_cases([tree / "s03" / "dicom"])[0].case_id == "dicom"

    listing = tmp_path / "lists" / "cohort.csv"
    listing.parent.mkdir()
    listing.write_text("Path,case_id,age\n../tree/s02.nii.gz,patient 7,61\n../tree/s03,P8,70\n\n")
    assert [(c.case_id, Path(c.source).name) for c in batch_cases.find_cases([listing])] == [
        ("P8__dicom", "dicom"), ("patient_7", "s02.nii.gz")]
    text = tmp_path / "lists" / "cohort.txt"
    text.write_text(f"# cohort\n{single}\n../tree/s04.zip\n")
    assert [c.case_id for c in batch_cases.find_cases([text])] == ["alone", "s04"]


def test_a_folder_of_several_dicom_series_gives_one_case_per_series(data_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder = tmp_path / "study"
    shutil.copytree(data_dir / "example_ct_dicom", folder)
    for index, path in enumerate(sorted((data_dir / "example_ct_dicom").iterdir())):
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.99.1"
        dataset.SeriesNumber = 7
        dataset.SOPInstanceUID = f"1.2.826.0.1.3680043.99.1.{index + 1}"
        dataset.save_as(folder / f"second_{index:03d}.dcm")
    cases = batch_cases.find_cases([folder])
    assert len(cases) == 2 and cases[1].case_id == "study__series7" and cases[0].case_id.startswith("study__series")
    assert all(len(case.series_files) == 20 for case in cases)
    with batch_worker._case_input(cases[1], tmp_path) as source:
        assert imageio.read_image(source).shape[2] == 20  # only that series' slices
    assert len(batch_cases.find_cases([folder])[1].files()) == 20


def test_inputs_that_cannot_be_cases_say_what_to_do(data_dir, tmp_path):
    a = write_ct(tmp_path / "one" / "ct.nii.gz", data_dir, 0)
    b = write_ct(tmp_path / "two" / "ct.nii.gz", data_dir, 0)
    with pytest.raises(InvalidInputError, match="case_id column"):
        batch_cases.find_cases([a, b])
    with pytest.raises(InvalidInputError, match="not found"):
        batch_cases.find_cases([tmp_path / "missing"])
    (tmp_path / "scan.dcm").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="Unsupported input"):
        batch_cases.find_cases([tmp_path / "scan.dcm"])
    bad_list = tmp_path / "list.csv"
    bad_list.write_text("filename\nct.nii.gz\n")
    with pytest.raises(InvalidInputError, match="'path' column"):
        batch_cases.find_cases([bad_list])
    bad_list.write_text("path\none/ct.nii.gz\nthree/ct.nii.gz\n")
    with pytest.raises(InvalidInputError, match="line 3"):
        batch_cases.find_cases([bad_list])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="No images"):
        batch_cases.find_cases([tmp_path / "empty"])


# --------------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------------


def test_what_a_rerun_does_with_each_case(data_dir, tmp_path):
    case = Case("c", str(write_ct(tmp_path / "c.nii.gz", data_dir, 0)))
    (tmp_path / "out" / "c").mkdir(parents=True)
    done = {"status": "done", "options_key": "k", "fingerprint": {"stat": batch_manifest.stat_fingerprint(case),
                                                                  "sha256": batch_manifest.content_fingerprint(case)}}
    out = tmp_path / "out"

    def reason(previous, **flags):
        decision = batch_manifest.decide(case, previous, "k", out, **flags)
        return decision.run, decision.reason

    assert reason(None) == (True, "new")
    assert reason(done) == (False, "done")
    assert reason(done, force=True) == (True, "forced (--force)")
    assert reason({**done, "options_key": "other"}) == (True, "options changed")
    assert reason({**done, "status": "failed"}) == (False, "failed before; --retry-failed runs it again")
    assert reason({**done, "status": "failed"}, retry_failed=True) == (True, "failed before (--retry-failed)")
    os.utime(case.source, ns=(0, 0))  # copied elsewhere: other times, same content
    assert reason(done) == (False, "done")
    write_ct(case.path, data_dir, 1)
    assert reason(done) == (True, "input changed")
    shutil.rmtree(out / "c")
    assert reason({**done, "fingerprint": {"stat": batch_manifest.stat_fingerprint(case)}}) == (
        True, "outputs missing")


def test_the_manifest_survives_a_cut_line_and_keeps_the_latest_record(tmp_path):
    manifest = batch_manifest.Manifest(tmp_path)
    manifest.append({"case_id": "a", "status": "failed", "finished": "2026-01-01T00:00:01"}, "w1")
    manifest.append({"case_id": "a", "status": "done", "finished": "2026-01-01T00:00:02"}, "w2")
    manifest.append({"case_id": "b", "status": "done", "finished": "2026-01-01T00:00:03"}, "w1")
    with (tmp_path / "manifest.w1.jsonl").open("a") as handle:
        handle.write('{"case_id": "c", "sta')  # the driver died mid-line
    assert {k: v["status"] for k, v in manifest.load().items()} == {"a": "done", "b": "done"}
    manifest.compact()
    assert [json.loads(line)["case_id"] for line in (tmp_path / "manifest.jsonl").read_text().splitlines()] == \
        ["a", "b"]
    assert list(tmp_path.glob("manifest.*.jsonl")) == []
    assert (tmp_path / "manifest.csv").read_text().splitlines()[1].startswith("a,done")


def test_options_that_do_not_change_the_labels_do_not_redo_a_cohort():
    def key(*argv: str) -> str:
        parser = batch_cli.build_parser()
        return batch_cli.options_key(request_from_args(parser, parser.parse_args(["-i", "x", "-o", "y", *argv])))

    fast = key("--fast", "-d", "cpu", "--workers", "2")
    assert fast == key("--fast", "-d", "gpu:1", "--offline", "-l", "aca_KEY", "--workers", "1")
    assert fast != key("-d", "cpu") and fast != key("--fast", "-rs", "liver") and fast != key("--fast", "-ml")
    assert set(batch_cli.NOT_IN_OPTIONS_KEY) <= {item.name for item in request_fields()}


def test_a_workers_share_of_the_cores_is_kept_when_it_loads_a_model(home, data_dir, tmp_path, monkeypatch):
    """Loading a torch model set torch to every core, so two workers on two cores each ran two threads."""
    import torch

    monkeypatch.setattr(batch_worker, "WARM", batch_process.WarmModels())  # this test's worker loads the model
    threads_after_case = []
    segment = batch_worker._segment

    def segment_and_count(*args, **kwargs):  # torch's thread count belongs to the thread that ran the case
        result = segment(*args, **kwargs)
        threads_after_case.append(torch.get_num_threads())
        return result

    monkeypatch.setattr(batch_worker, "_segment", segment_and_count)
    case = write_ct(tmp_path / "ct.nii.gz", data_dir, 0)
    assert batch_cli.main(["-i", str(case), "-o", str(tmp_path / "out"), *FAST, "--ml", "--shard", "1/1",
                           "--threads-per-worker", "1", "-q"]) == 0
    assert records(tmp_path / "out")["ct"]["models_loaded"] == 1
    assert threads_after_case == [1]


def test_a_worker_running_two_cases_predicts_one_at_a_time_while_the_other_reads_and_writes(home, data_dir,
                                                                                              tmp_path):
    """A GPU worker's setting (--cases-per-worker 2), here on the CPU: one case's prediction holds the device
    while the other case reads, resamples and writes; predictions never overlap."""
    from datetime import datetime

    cohort = tmp_path / "cohort"
    for index in range(4):
        write_ct(cohort / f"ct{index}.nii.gz", data_dir, index)
    out = tmp_path / "out"
    assert batch_cli.main(["-i", str(cohort), "-o", str(out), *FAST, "--ml", "--workers", "1",
                           "--cases-per-worker", "2", "-q"]) == 0
    done = records(out)
    assert len({record["worker"] for record in done.values()}) == 1 and all(r["messages"] == [] for r in done.values())
    turns = sorted(turn for record in done.values() for turn in record["prediction_turns"])
    assert all(first[1] <= second[0] for first, second in zip(turns, turns[1:]))  # one prediction at a time

    def span(record):
        return tuple(datetime.fromisoformat(record[key]).timestamp() for key in ("started", "finished"))

    overlapped = [(case, other) for case, record in done.items() for other, theirs in done.items() if case != other
                  for begin, end in theirs["prediction_turns"] if span(record)[0] < end and begin < span(record)[1]]
    assert overlapped, "no case ran while another predicted"
    assert_same_labels(out / "ct2" / "segmentation.nii.gz",
                       single_case(cohort / "ct2.nii.gz", tmp_path / "single.nii.gz", "--ml"))


@pytest.mark.parametrize("whole_group", [True, False], ids=["ctrl-c", "kill-int-driver"])
def test_an_interrupt_keeps_finished_cases_and_leaves_no_process_and_no_half_done_case(home, data_dir, tmp_path,
                                                                                       whole_group):
    """Ctrl+C reaches the whole foreground process group (driver, nannies, workers); ``kill -INT`` the driver
    alone, whose cluster then stops the workers in the middle of their case."""
    cohort = tmp_path / "cohort"
    for index in range(4):
        write_ct(cohort / f"ct{index}.nii.gz", data_dir, index)
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-m", "totalseg_batch.cli", "-i", str(cohort), "-o", str(out),
                               *FAST, "--ml", "--workers", "1"], stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (
            any(out.glob("manifest.*.jsonl")) and any(out.glob(".staging/*/attempt-*/attempt.json"))):
        time.sleep(0.05)  # one case finished, the next one begun
    if whole_group:
        os.killpg(driver.pid, signal.SIGINT)
    else:
        driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err
    assert "finished cases are kept" in err
    assert group_left_after(driver.pid, 30) == [], "worker processes outlived the interrupted run"
    done = {case_id for case_id, record in records(out).items() if record["status"] == "done"}
    assert done and sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(done)
    assert leftovers(out) == []
    assert batch_cli.main(["-i", str(cohort), "-o", str(out), *FAST, "--ml", "--shard", "1/1", "-q"]) == 0
    assert len(records(out)) == 4 and all(r["status"] == "done" for r in records(out).values())

