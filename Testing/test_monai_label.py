"""MONAI Label's own client (``monailabel.client.MONAILabelClient``, installed with ``pip install --no-deps
monailabel``) against ``totalseg_server``: info, datastore upload and infer, with the server's token as MONAI
Label's login. The label file it receives equals a local run of the same weights, voxel for voxel."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import requests
from server_support import start_server, stop_server
from totalseg_engine import get_task, read_label_map

client_module = pytest.importorskip("monailabel.client.client")
TOKEN = "monai-token-1234"


@pytest.fixture(scope="module")
def server(server_home, tmp_path_factory):
    server = start_server(server_home, tmp_path_factory.mktemp("monai") / "work", env={"TOTALSEG_SERVER_TOKEN": TOKEN},
                          token=TOKEN)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def local_labels(server_home, data_dir, tmp_path_factory) -> nib.Nifti1Image:
    out = tmp_path_factory.mktemp("monai-local") / "local.nii.gz"
    done = subprocess.run([sys.executable, "-m", "totalseg_engine", "-i", str(data_dir / "example_ct_sm.nii.gz"),
                           "-o", str(out), "--ml", "--fast", "-q", "-d", "cpu"], capture_output=True, text=True,
                          env={**os.environ, "TOTALSEG_HOME_DIR": str(server_home)}, timeout=300)
    assert done.returncode == 0, done.stderr
    return nib.load(out)


def logged_in(server, tmp_path):
    """The client as MONAI Label's Slicer module uses it: asks whether login is needed, logs in, keeps the token."""
    client = client_module.MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="test")
    assert requests.get(server.url + "auth/", timeout=10).json()["enabled"] is True
    login = requests.post(server.url + "auth/token", data={"username": "anyone", "password": TOKEN}, timeout=10)
    client.update_auth(login.json())
    return client


def test_without_the_token_monai_labels_client_is_refused(server, tmp_path):
    with pytest.raises(client_module.MONAILabelClientException, match="401"):
        client_module.MONAILabelClient(server.url, tmpdir=str(tmp_path)).info()
    wrong = requests.post(server.url + "auth/token", data={"username": "a", "password": "wrong"}, timeout=10)
    assert wrong.status_code == 401 and "access token as the password" in wrong.json()["error"]


def test_info_lists_the_installed_models_with_their_labels(server, tmp_path):
    info = logged_in(server, tmp_path).info()
    assert list(info["models"]) == ["total_fast"]  # only the installed task and speed
    model = info["models"]["total_fast"]
    assert model["type"] == "segmentation" and model["dimension"] == 3
    classes = get_task("total").classes
    assert model["labels"] == {name: label for label, name in classes.items()}
    assert set(info["labels"]) == set(classes.values())


def test_upload_then_infer_gives_the_local_result_voxel_for_voxel(server, data_dir, local_labels, tmp_path):
    client = logged_in(server, tmp_path)
    ct = str(data_dir / "example_ct_sm.nii.gz")
    assert client.upload_image(ct, image_id="case-1") == {"image": "case-1"}
    label_file, params = client.infer("total_fast", "case-1", {})
    received = nib.load(label_file)
    assert np.array_equal(np.asarray(received.dataobj), np.asarray(local_labels.dataobj))
    assert np.allclose(received.affine, local_labels.affine)
    assert read_label_map(received) == read_label_map(local_labels)
    assert params["label_names"]["liver"] == next(k for k, v in get_task("total").classes.items() if v == "liver")

    # the image sent with the request itself (MONAI Label's "file"), without the datastore
    label_file, _ = client.infer("total_fast", "direct", {}, file=ct)
    refused = client_module.MONAILabelClientException
    assert np.array_equal(np.asarray(nib.load(label_file).dataobj), np.asarray(local_labels.dataobj))
    with pytest.raises(refused, match="404.*No image .*never-uploaded.* upload it first"):
        client.infer("total_fast", "never-uploaded", {})
    with pytest.raises(refused, match="404.*No model .*deepedit"):
        client.infer("deepedit", "case-1", {})


def test_a_client_that_gives_up_during_infer_ends_its_job(data_dir, tmp_path):
    """MONAI Label's infer is one long request: a client that disconnects (a timeout, a closed Slicer) must not
    leave its segmentation running on the server's engine until the end."""
    import time

    from model_factory import NNUNET_DEFAULT_CT, write_task_models

    home = tmp_path / "home"  # nnU-Net's default CT network: about 9 s a window here, long enough to leave it
    write_task_models(home / "nnunet" / "results", "total", "fast", NNUNET_DEFAULT_CT, seed=5)
    server = start_server(home, tmp_path / "work")
    try:
        server.slots()
        image = (data_dir / "example_ct_sm.nii.gz").read_bytes()
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(server.url + "infer/total_fast", files={"file": ("ct.nii.gz", image)}, timeout=(5, 4))
        assert server.get("api/v1/info").json()["queue"]["running"] == 1  # it was segmenting when the client left
        left = time.monotonic()
        while server.get("api/v1/info").json()["queue"]["running"] and time.monotonic() - left < 3:
            time.sleep(0.1)
        assert server.get("api/v1/info").json()["queue"] == {"queued": 0, "running": 0}, server.log()[-3000:]
    finally:
        stop_server(server)
