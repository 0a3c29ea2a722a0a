"""``totalseg_server`` as a program on 127.0.0.1, used by the command line (``--server``) and the client library:
the same files as a local run, warm slots, the queue, DICOM inputs. (Security and bad input:
test_server_security.py; cancel and a killed server: test_server_cancel.py; MONAI Label: test_monai_label.py.)"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from server_support import environment_of, start_server, stop_server
from totalseg_engine import read_label_map
from totalseg_remote import RemoteServer

FAST = {"task": "total", "speed": "fast", "device": "cpu"}


@pytest.fixture(scope="module")
def server(server_home, tmp_path_factory):
    server = start_server(server_home, tmp_path_factory.mktemp("server") / "work")
    yield server
    stop_server(server)
    assert not server.work.exists() or not any(server.work.iterdir()), "the server left files behind"


def cli(*args, home: Path, env: dict = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TOTALSEG_HOME_DIR": str(home), **(env or {})}
    return subprocess.run([sys.executable, "-m", "totalseg_engine", *map(str, args)], capture_output=True, text=True,
                          env=environment, timeout=300)


def same_tree(left: Path, right: Path) -> list[str]:
    """Files that differ between two output folders (or exist in one only), byte for byte."""
    names = sorted({p.relative_to(left).as_posix() for p in left.rglob("*") if p.is_file()}
                   | {p.relative_to(right).as_posix() for p in right.rglob("*") if p.is_file()})
    return [name for name in names if not ((left / name).is_file() and (right / name).is_file()
                                           and filecmp.cmp(left / name, right / name, shallow=False))]


def test_the_command_line_writes_the_same_files_with_server_as_without(server, server_home, data_dir, tmp_path):
    ct = data_dir / "example_ct_sm.nii.gz"
    options = ["--fast", "-s", "-p", "-d", "cpu"]
    local = cli("-i", ct, "-o", tmp_path / "local", *options, home=server_home)
    assert local.returncode == 0, local.stderr
    # the client machine has no weights at all: an empty home
    remote = cli("-i", ct, "-o", tmp_path / "remote", *options, "--server", server.url, home=tmp_path / "no-home")
    assert remote.returncode == 0, remote.stderr + server.log()
    assert same_tree(tmp_path / "local", tmp_path / "remote") == []
    assert len(list((tmp_path / "remote").glob("*.nii.gz"))) == 117  # every class file, preview and statistics too
    assert (tmp_path / "remote" / "statistics.json").exists() and (tmp_path / "remote" / "preview_total.png").exists()
    assert not (tmp_path / "no-home").exists()  # nothing of the engine's own ran on the client

    multi = ["-ot", "nifti", "seg_nrrd", "--ml", "-v1o", "-q"]
    assert cli("-i", ct, "-o", tmp_path / "local.nii.gz", *multi, "--fast", home=server_home).returncode == 0
    remote = cli("-i", ct, "-o", tmp_path / "remote.nii.gz", *multi, "--fast", "--server", server.url,
                 home=tmp_path / "no-home")
    assert remote.returncode == 0, remote.stderr
    for suffix in (".nii.gz", ".seg.nrrd"):
        assert filecmp.cmp(tmp_path / f"local{suffix}", tmp_path / f"remote{suffix}", shallow=False), suffix


def test_options_that_need_this_machine_are_refused_with_server(server, data_dir, tmp_path):
    for option in (["-sp", str(tmp_path / "p.npz")], ["-rp", str(tmp_path / "r.json")], ["-l", "key"]):
        done = cli("-i", data_dir / "example_ct_sm.nii.gz", "-o", tmp_path / "out", "--server", server.url, *option,
                   home=tmp_path)
        assert done.returncode == 2 and "--server" in done.stderr and option[0] in done.stderr
    done = cli("-i", data_dir / "example_ct_sm.nii.gz", "-o", tmp_path / "out", "--token", "x", home=tmp_path)
    assert done.returncode == 2 and "--server" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_client_library_gets_every_format_and_the_warm_slot_loads_the_model_once(server, server_home, data_dir,
                                                                                      tmp_path):
    ct = data_dir / "example_ct_sm.nii.gz"
    local = cli("-i", ct, "-o", tmp_path / "local.nii.gz", "--ml", "--fast", "-q", home=server_home)
    assert local.returncode == 0, local.stderr
    remote = RemoteServer(server.url)
    info = remote.info()
    assert info["tasks"] == ["total"] and info["devices"] == ["cpu"]
    assert next(t for t in info["all_tasks"] if t["name"] == "total")["installed_speeds"] == ["fast"]

    seen = []
    first = remote.submit(ct, {**FAST, "statistics": True}, formats=("nifti", "seg_nrrd"))
    final = first.wait(on_progress=seen.append, poll_s=0.1)
    assert final.formats == ("nifti", "seg_nrrd", "statistics") and final.device == "cpu"
    assert any(status.stage == "predict" for status in seen)
    nifti = first.download("nifti", tmp_path / "remote.nii.gz")
    expected = nib.load(tmp_path / "local.nii.gz")
    got = nib.load(nifti)
    assert np.array_equal(np.asarray(got.dataobj), np.asarray(expected.dataobj))
    assert np.array_equal(got.affine, expected.affine) and read_label_map(got) == read_label_map(expected)
    assert first.download("seg_nrrd", tmp_path / "seg.seg.nrrd").stat().st_size > 0
    statistics = first.statistics()
    assert set(statistics) == set(read_label_map(expected).values())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]

    second = remote.submit(ct, FAST)
    second.wait(poll_s=0.1)
    assert second.last_status.raw["models_loaded"] == 0  # the warm slot kept the model
    assert second.last_status.raw["slot"] == final.raw["slot"]
    assert remote.info()["slots"][0]["models_loaded"] == 1  # once, over every job this slot has run


def test_an_uncompressed_image_is_sent_compressed_and_segmented_alike(server, data_dir, tmp_path):
    raw = tmp_path / "ct.nii"
    nib.save(nib.load(data_dir / "example_ct_sm.nii.gz"), raw)
    remote = RemoteServer(server.url)
    sent: list[int] = []
    job = remote.submit(raw, FAST, on_upload=sent.append)
    job.wait(poll_s=0.1)
    assert sent[-1] < 0.8 * raw.stat().st_size  # gzip on the way (a CT compresses to about two thirds)
    plain = remote.submit(data_dir / "example_ct_sm.nii.gz", FAST)
    streamed = list(plain.events())  # Server-Sent Events instead of polling
    assert streamed[-1].state == "succeeded" and streamed[-1].fraction == 1.0
    assert any(status.stage == "predict" for status in streamed)
    a = nib.load(job.download("nifti", tmp_path / "a.nii.gz"))
    b = nib.load(plain.download("nifti", tmp_path / "b.nii.gz"))
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_two_clients_with_one_slot_take_turns_and_the_second_sees_its_place(server, data_dir, tmp_path):
    remote = RemoteServer(server.url)
    first = remote.submit(data_dir / "example_ct.nii.gz", FAST)
    while first.status().state == "queued":
        pass
    statuses: dict[str, list] = {"first": [], "second": []}
    second = remote.submit(data_dir / "example_ct_sm.nii.gz", FAST)
    assert (second.last_status.state, second.last_status.position) == ("queued", 1)  # known from the answer on
    threads = [threading.Thread(target=job.wait, kwargs={"on_progress": statuses[name].append, "poll_s": 0.05})
               for name, job in (("first", first), ("second", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert first.last_status.state == second.last_status.state == "succeeded"
    waiting = [s for s in statuses["second"] if s.state == "queued"]
    assert waiting and waiting[0].position == 1 and "1 job ahead" in waiting[0].describe()
    assert statuses["first"][-1].state == "succeeded"


def test_a_dicom_zip_gets_its_dicom_seg(server, data_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((data_dir / "example_ct_dicom").iterdir()):
            zipped.write(path, path.name)
    job = RemoteServer(server.url).submit(archive, FAST, formats=("nifti", "dicom_seg"))
    job.wait(poll_s=0.2)
    seg = pydicom.dcmread(job.download("dicom_seg", tmp_path / "seg.dcm"))
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) > 0
    labels = nib.load(job.download("nifti", tmp_path / "seg.nii.gz"))
    present = set(np.unique(np.asarray(labels.dataobj))) - {0}
    assert len(seg.SegmentSequence) == len(present)
    # the same folder sent by the command line (zipped on the way) gives the same labels as a local run
    folder_run = cli("-i", data_dir / "example_ct_dicom", "-o", tmp_path / "cli.nii.gz", "--ml", "--fast", "-q",
                     "--server", server.url, home=tmp_path / "none")
    assert folder_run.returncode == 0, folder_run.stderr
    assert np.array_equal(np.asarray(nib.load(tmp_path / "cli.nii.gz").dataobj), np.asarray(labels.dataobj))


def test_cpu_slots_share_the_cores_and_gpu_slots_each_see_one_gpu(server_home, tmp_path):
    cpu = start_server(server_home, tmp_path / "cpu", "--slots", "2")
    gpu = start_server(server_home, tmp_path / "gpu", "--gpus", "1,0")
    try:
        cpu_slots = [environment_of(pid) for pid in cpu.slots(2)]
        gpu_slots = [environment_of(pid) for pid in gpu.slots(2)]
        assert [(e["CUDA_VISIBLE_DEVICES"], e["TOTALSEG_SLOT_DEVICE"]) for e in cpu_slots] == [("", "cpu")] * 2
        cores = str(max(1, (os.cpu_count() or 1) // 2))
        assert all(e["TOTALSEG_CPU_THREADS"] == e["OMP_NUM_THREADS"] == cores for e in cpu_slots)
        assert sorted((e["TOTALSEG_SLOT_DEVICE"], e["CUDA_VISIBLE_DEVICES"]) for e in gpu_slots) == [
            ("gpu:0", "0"), ("gpu:1", "1")]
        info = gpu.get("api/v1/info").json()
        assert info["devices"] == ["gpu:1", "gpu:0"] and [s["index"] for s in info["slots"]] == [0, 1]
        assert "1: gpu:0" in gpu.log() and "0: gpu:1" in gpu.log()
    finally:
        stop_server(cpu)
        stop_server(gpu)


def test_a_job_chooses_its_device_only_among_the_servers(server, data_dir):
    remote = RemoteServer(server.url)
    from totalseg_remote import RequestRefusedError

    with pytest.raises(RequestRefusedError, match="not one of this server's: cpu"):
        remote.submit(data_dir / "example_ct_sm.nii.gz", {**FAST, "device": "gpu:3"})
    job = remote.submit(data_dir / "example_ct_sm.nii.gz", {**FAST, "device": "gpu"})  # any slot
    assert job.wait(poll_s=0.1).device == "cpu"



def test_totalseg_web_with_api_serves_the_browser_app_and_the_api_on_one_token(server_home, data_dir, tmp_path):
    web = start_server(server_home, tmp_path / "work", "--api", module="totalseg_web.launcher",
                       env={"TOTALSEG_WEB_TOKEN": "one-token"}, token="one-token")
    try:
        assert "API: http://127.0.0.1:" in web.log()
        assert web.get("api/v1/info", token=None).status_code == 401
        assert web.get("", token=None).status_code == 401  # the browser app keeps its own rule
        job = RemoteServer(web.url, "one-token").submit(data_dir / "example_ct_sm.nii.gz", FAST)
        assert job.wait(poll_s=0.1).state == "succeeded"
        # a browser that has the app's token cookie may use the API too (the app's page calls it)
        cookie = web.get("?token=one-token", token=None, allow_redirects=False).cookies
        assert web.get("api/v1/info", token=None, cookies=cookie).status_code == 200
        assert web.get("info/", token="wrong").status_code == 401
    finally:
        stop_server(web)


def test_totalseg_webs_api_options_without_api_are_refused():
    for option in (["--gpus", "0"], ["--download-weights"]):
        done = subprocess.run([sys.executable, "-m", "totalseg_web.launcher", *option], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and f"{option[0]} needs --api" in done.stderr, done.stderr
