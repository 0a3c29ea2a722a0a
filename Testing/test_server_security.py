"""``totalseg_server`` reachable from other machines: the token rules, the upload limit, job ids as capabilities,
unknown jobs and bad files, each with the message a user acts on. One server with a token for the module."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import secrets
import subprocess
import sys
from urllib.parse import urlparse

import pytest
import requests
from server_support import start_server, stop_server
from totalseg_remote import (
    AuthenticationError,
    JobFailedError,
    RemoteServer,
    UnknownJobError,
    UploadTooLargeError,
)

TOKEN = "s3cret-" + secrets.token_hex(8)
LIMIT_MB = 1  # example_ct_sm.nii.gz (0.5 MB) passes, example_ct.nii.gz (2.2 MB) does not
FAST = {"task": "total", "speed": "fast", "device": "cpu"}


@pytest.fixture(scope="module")
def server(server_home, tmp_path_factory):
    server = start_server(server_home, tmp_path_factory.mktemp("secure") / "work", "--max-upload-mb", str(LIMIT_MB),
                          env={"TOTALSEG_SERVER_TOKEN": TOKEN}, token=TOKEN)
    yield server
    stop_server(server)


def job_files(server) -> list[str]:
    """Every file below the server's job folders (uploads and results)."""
    return sorted(str(p) for p in (server.work.glob("*/jobs/*/**/*")) if p.is_file())


def test_no_token_or_a_wrong_one_gets_401_and_the_client_names_the_setting(server, data_dir):
    for path in ("api/v1/info", "api/v1/jobs/x", "info/", "datastore/"):
        assert server.get(path, token=None).status_code == 401, path
        refused = server.get(path, token="wrong")
        assert refused.status_code == 401 and "wrong token" in refused.json()["error"], path
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert server.get("api/v1/info").status_code == 200
    posted = requests.post(server.url + "api/v1/jobs", files={"image": ("ct.nii.gz", b"x")}, timeout=30)
    assert posted.status_code == 401
    with pytest.raises(AuthenticationError, match="needs an access token. Set the right token in MY PANEL"):
        RemoteServer(server.url, token_hint="MY PANEL").info()
    with pytest.raises(AuthenticationError, match="refused the access token"):
        RemoteServer(server.url, token="wrong").submit(data_dir / "example_ct_sm.nii.gz", FAST)
    assert job_files(server) == []


def test_a_server_on_another_address_requires_a_token_it_prints(server_home, tmp_path):
    open_server = start_server(server_home, tmp_path / "work", "--host", "0.0.0.0")
    try:
        token = re.search(r"access token: (\S+)", open_server.log()).group(1)
        assert open_server.get("api/v1/info", token=None).status_code == 401
        assert open_server.get("api/v1/info", token=token).json()["devices"] == ["cpu"]
    finally:
        stop_server(open_server)


def test_an_upload_over_the_limit_is_refused_before_it_is_all_read_and_nothing_is_kept(server, data_dir):
    remote = RemoteServer(server.url, TOKEN)
    with pytest.raises(UploadTooLargeError, match=r"over the upload limit .* \(1 MB, its --max-upload-mb\)"):
        remote.submit(data_dir / "example_ct.nii.gz", FAST)  # the client checks first: nothing is sent

    # A client that says how much it sends is refused on the header alone: the server answers before the body.
    address = urlparse(server.url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    conn.putrequest("POST", "/api/v1/jobs")
    for name, value in (("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "multipart/form-data; boundary=b"),
                        ("Content-Length", str(50 * 2**20))):
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(b"--b\r\n")  # 5 of the 50 MB announced
    answer = conn.getresponse()
    assert answer.status == 413 and "larger than" in answer.read().decode()
    conn.close()

    # One that streams without a length is cut off once it passes the limit, counting what gzip unpacks to.
    def body():
        yield (b'--b\r\nContent-Disposition: form-data; name="request"\r\n\r\n'
               b'{"task": "total", "speed": "fast"}\r\n--b\r\nContent-Disposition: form-data; name="image"; '
               b'filename="ct.nii"\r\nContent-Encoding: gzip\r\n\r\n')
        yield gzip.compress(b"\0" * (3 * 2**20))  # 3 kB on the wire, 3 MB unpacked
        yield b"\r\n--b--\r\n"

    streamed = requests.post(server.url + "api/v1/jobs", data=body(), timeout=30, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413 and "larger than" in streamed.json()["error"]
    assert job_files(server) == []
    assert server.get("api/v1/info").json()["queue"] == {"queued": 0, "running": 0}


def test_unknown_jobs_are_named_as_such_and_one_id_never_reaches_another_job(server, data_dir, tmp_path):
    remote = RemoteServer(server.url, TOKEN)
    with pytest.raises(UnknownJobError, match="Unknown job; the server may have restarted"):
        remote.job("no-such-job").status()
    job = remote.submit(data_dir / "example_ct_sm.nii.gz", FAST)
    job.wait(poll_s=0.1)
    assert len(job.id) >= 32  # an unguessable capability
    for other in (job.id[:-1], job.id + "x", job.id.upper(), "..", "%2e%2e%2fjobs", "../" + job.id):
        answer = server.get(f"api/v1/jobs/{other}/result?format=nifti")
        assert answer.status_code == 404, other
        assert str(server.work) not in answer.text and "segmentation" not in answer.text
    assert server.get(f"api/v1/jobs/{job.id}/result?format=nifti").content[:2] == b"\x1f\x8b"
    folder_names = {p.name for p in server.work.glob("*/jobs/*")}
    assert folder_names and job.id not in folder_names  # the folder is named apart from the id
    assert job.id not in server.log()


def test_a_corrupt_file_fails_with_the_readers_message_naming_the_file_as_sent(server, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(b"not an image at all" * 100))
    job = RemoteServer(server.url, TOKEN).submit(broken, FAST)
    with pytest.raises(JobFailedError) as failed:
        job.wait(poll_s=0.1)
    assert "broken.nii.gz" in str(failed.value) and str(server.work) not in str(failed.value)
    answer = requests.post(server.url + "api/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
                           files={"request": (None, json.dumps(FAST)), "image": ("notes.txt", b"hello")})
    assert answer.status_code == 400 and "notes.txt" in answer.json()["error"]


def test_finished_jobs_are_forgotten_and_their_files_removed_after_the_set_time(tmp_path):
    from totalseg_engine import SegmentationRequest
    from totalseg_server.jobs import Job, JobState, JobStore
    from totalseg_server.jobs import UnknownJobError as ServerUnknownJob

    store = JobStore(tmp_path / "jobs", keep_results_s=60)
    jobs = []
    for state in (JobState.SUCCEEDED, JobState.RUNNING):
        folder = store.new_folder()
        (folder / "result").mkdir()
        (folder / "result" / "segmentation.nii.gz").write_bytes(b"x")
        job = Job(id=store.new_id(), folder=folder, input=folder / "in.nii.gz", input_name="in.nii.gz",
                  request=SegmentationRequest(), formats=("nifti",))
        job.update(state=state)
        store.add(job)
        jobs.append(job)
    done, running = jobs
    assert store.expire(done.ended + 59) == [] and done.folder.exists()
    assert store.expire(done.ended + 60) == [done.id]
    assert not done.folder.exists() and running.folder.exists()  # a running job is never expired
    with pytest.raises(ServerUnknownJob, match="may have restarted .* or the job's results expired"):
        store.get(done.id)
    store.remove_all()
    assert not (tmp_path / "jobs").exists()


def test_the_command_line_takes_the_token_from_its_variable_and_names_it_when_refused(server, data_dir, tmp_path):
    def cli(env):
        return subprocess.run([sys.executable, "-m", "totalseg_engine", "-i", str(data_dir / "example_ct_sm.nii.gz"),
                               "-o", str(tmp_path / "seg.nii.gz"), "--ml", "--fast", "-q", "--server", server.url],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TOTALSEG_HOME_DIR": str(tmp_path / "no-weights"), **env})

    refused = cli({"TOTALSEG_SERVER_TOKEN": ""})
    assert refused.returncode != 0 and "needs an access token. Set the right token in TOTALSEG_SERVER_TOKEN " \
        "(or --token)" in refused.stderr, refused.stderr
    assert not (tmp_path / "seg.nii.gz").exists()
    done = cli({"TOTALSEG_SERVER_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "seg.nii.gz").exists()
