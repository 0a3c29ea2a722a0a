"""Slicer as a client of a remote TotalSegmentator server: the panel's "Remote server" device and the console's
``process(..., server=URL)``.

The server is the real ``totalseg_server`` program on 127.0.0.1 with the model factory's weights; the panel is the
real widget in the stood-in Slicer of ``slicer_app_stand_in`` (PySide6 for PythonQt, slicer-core's scene). What
still differs from a real installation: the network is loopback, and Slicer's own PythonQt and application are
stand-ins (see ``slicer_app_stand_in``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML without Qt) is not installed")
pytest.importorskip("PySide6", reason="PySide6 stands in for PythonQt's Qt")

import requests  # noqa: E402
from mrml_support import load_volume, segments, snapshot  # noqa: E402
from server_support import start_server, stop_server  # noqa: E402
from slicer_app_stand_in import import_module, install, opened_panel  # noqa: E402
from totalseg_engine import State  # noqa: E402
from totalseg_slicer import remote as remote_slicer  # noqa: E402
from totalseg_slicer import segmentation_import as si  # noqa: E402

MODULE = Path(__file__).resolve().parents[1] / "TotalSegmentator" / "TotalSegmentator.py"
PANEL_HINT = "TotalSegmentator panel (Advanced > Remote server > Token)"


@pytest.fixture(scope="module")
def server(server_home, tmp_path_factory):
    running = start_server(server_home, tmp_path_factory.mktemp("remote-slicer") / "work")
    yield running
    stop_server(running)


@pytest.fixture
def app(mrml, monkeypatch, tmp_path, server_home):
    """The stood-in Slicer; local runs use the server's own weights, so both give the same segmentation."""
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(server_home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.delenv(remote_slicer.TOKEN_VARIABLE, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    (tmp_path / "slicer-temp").mkdir()
    harness = install(monkeypatch, mrml.scene, tmp_path / "slicer-temp", MODULE)
    harness.module = import_module(monkeypatch, MODULE)
    harness.scene = mrml.scene
    harness.temporary = tmp_path / "slicer-temp"
    return harness


@pytest.fixture
def panel(app):
    with opened_panel(app.module) as widget:
        yield widget


def ct(app, data_dir):
    return load_volume(app.scene, data_dir / "example_ct_sm.nii.gz", "CT")


def choose_remote(panel, url: str, token: str = "") -> None:
    ui = panel.ui
    ui.speedFastRadioButton.click()  # the weights the test servers have
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.findData("remote")
    ui.remoteUrlLineEdit.text = url
    ui.remoteTokenLineEdit.text = token


def job_folders(app) -> list[Path]:
    return [path for path in app.temporary.iterdir() if path.name.startswith("TotalSegmentator-")]


def nodes(scene, class_name: str) -> list:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


# --------------------------------------------------------------------------------------------------
# The same segmentation as a local run
# --------------------------------------------------------------------------------------------------


def test_console_process_on_a_server_equals_the_local_run(app, mrml, server, data_dir):
    volume = ct(app, data_dir)
    logic = app.module.TotalSegmentatorLogic()
    remote_node = logic.process(volume, None, task="total", fast=True, server=server.url)
    local_node = logic.process(volume, None, task="total", fast=True, device="cpu")
    remote_view, local_view = snapshot(mrml, remote_node, volume), snapshot(mrml, local_node, volume)
    assert len(remote_view) > 5 and remote_view == local_view  # ids, names, colours, tags and every voxel
    terms = [[si.segment_tag(segment, si.TERMINOLOGY_TAG) for segment in segments(node)]
             for node in (remote_node, local_node)]
    assert terms[0] == terms[1] and all(terms[0])  # every segment tagged with its SNOMED-CT entry
    assert not job_folders(app)

    # A re-run into the remote result replaces its segments, exactly as a local re-run does.
    count = remote_node.GetSegmentation().GetNumberOfSegments()
    assert logic.process(volume, remote_node, task="total", fast=True, server=server.url) is remote_node
    assert remote_node.GetSegmentation().GetNumberOfSegments() == count


def test_process_async_on_a_server_reports_the_server_progress(app, server, data_dir):
    volume = ct(app, data_dir)
    logic = app.module.TotalSegmentatorLogic()
    messages, finished = [], []
    job = logic.processAsync(volume, None, task="total", fast=True, server=server.url, statistics=True,
                             onProgress=lambda fraction, message: messages.append(message),
                             onFinished=lambda state, message: finished.append((state, message)))
    assert logic.isRunning
    app.spin(lambda: bool(finished))
    assert finished == [(State.SUCCEEDED, "")], finished
    assert any("Sending the volume" in m for m in messages) and any("Downloading" in m for m in messages)
    assert len(set(messages)) >= 4, messages  # the server's own stages came through
    assert job.table_node is not None and job.table_node.GetNumberOfRows() > 5  # statistics.json from the server


def test_console_arguments_that_cannot_work_remotely_are_refused_before_anything_runs(app, server, data_dir):
    volume = ct(app, data_dir)
    logic = app.module.TotalSegmentatorLogic()
    with pytest.raises(ValueError, match="give server= too"):
        logic.process(volume, None, task="total", fast=True, token="secret")
    with pytest.raises(ValueError, match="sequence is segmented on this computer only"):
        logic.process(volume, None, task="total", fast=True, server=server.url, sequenceBrowserNode=object())
    with pytest.raises(ValueError, match="looks like http"):
        logic.process(volume, None, task="total", fast=True, server="gpu-host:8000")
    assert nodes(app.scene, "vtkMRMLSegmentationNode") == [] and not logic.isRunning


# --------------------------------------------------------------------------------------------------
# The panel
# --------------------------------------------------------------------------------------------------


def test_panel_remote_server_apply_loads_what_a_local_run_loads(app, panel, mrml, server, data_dir):
    volume = ct(app, data_dir)
    ui = panel.ui
    assert ui.remoteServerGroupBox.isHidden()  # only with the Remote server device
    assert ui.deviceComboBox.itemText(ui.deviceComboBox.count - 1) == "Remote server"
    choose_remote(panel, server.url)
    assert not ui.remoteServerGroupBox.isHidden() and panel._parameterNode.device == "remote"
    settings_file = app.module.qt.QSettings().fileName()
    assert settings_file in ui.remoteTokenNoteLabel.text and "unencrypted" in ui.remoteTokenNoteLabel.text
    ui.remoteTestButton.click()
    assert ui.remoteStatusLabel.text.startswith("Connected:") and "total" in ui.remoteStatusLabel.text

    ui.speedFastRadioButton.click()
    ui.statisticsCheckBox.checked = True
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel", app.dialogs.texts()
    app.spin(lambda: ui.applyButton.text == "Apply")
    assert ui.statusLabel.text == "Done.", (app.dialogs.texts(), ui.logTextEdit.toPlainText())
    assert "accepted by " + server.url in ui.logTextEdit.toPlainText()
    output = panel._parameterNode.outputSegmentation
    assert panel._parameterNode.outputStatisticsTable is not None
    local = panel.logic.process(volume, None, task="total", fast=True, device="cpu")
    assert snapshot(mrml, output, volume) == snapshot(mrml, local, volume)
    assert not job_folders(app)

    # The address and token are Slicer settings: the next session (a new logic) finds them.
    ui.remoteTokenLineEdit.text = "kept-token"
    again = app.module.TotalSegmentatorLogic().remoteServerSettings()
    assert (again.url, again.token) == (server.url, "kept-token")
    assert "kept-token" in Path(settings_file).read_text()


def test_panel_remote_run_needs_no_install_and_no_memory_check(app, panel, server, data_dir, monkeypatch):
    """The server has the engine: Apply with Remote server neither installs packages nor asks torch about memory."""
    ct(app, data_dir)
    asked = []
    monkeypatch.setattr(panel.logic, "ensureDependencies", lambda *a, **k: asked.append("install"))
    monkeypatch.setattr(panel.logic, "requireDependencies", lambda *a, **k: asked.append("require"))
    choose_remote(panel, server.url)
    assert panel.logic.checkResources(panel._parameterNode) is None
    panel.ui.speedFastRadioButton.click()
    panel.ui.applyButton.click()
    app.spin(lambda: panel.ui.applyButton.text == "Apply")
    assert panel.ui.statusLabel.text == "Done." and asked == []


def test_a_wrong_token_names_the_setting_to_fix(app, panel, server_home, tmp_path, data_dir):
    guarded = start_server(server_home, tmp_path / "guarded", "--token", "right-token", token="right-token")
    try:
        ct(app, data_dir)
        choose_remote(panel, guarded.url, "wrong-token")
        panel.ui.remoteTestButton.click()
        assert "refused the access token" in panel.ui.remoteStatusLabel.text
        assert PANEL_HINT in panel.ui.remoteStatusLabel.text
        panel.ui.speedFastRadioButton.click()
        panel.ui.applyButton.click()
        app.spin(lambda: panel.ui.applyButton.text == "Apply")
        assert any(PANEL_HINT in text for text in app.dialogs.texts()), app.dialogs.texts()
        assert nodes(app.scene, "vtkMRMLSegmentationNode") == []

        choose_remote(panel, guarded.url, "right-token")
        panel.ui.applyButton.click()
        app.spin(lambda: panel.ui.applyButton.text == "Apply")
        assert panel.ui.statusLabel.text == "Done."
    finally:
        stop_server(guarded)


def test_no_address_is_refused_with_where_to_enter_it(app, panel, data_dir):
    ct(app, data_dir)
    choose_remote(panel, "")
    panel.ui.applyButton.click()
    assert panel.ui.applyButton.text == "Apply"
    assert "Advanced > Remote server" in app.dialogs.texts()[-1]


# --------------------------------------------------------------------------------------------------
# Cancel, and a server that dies
# --------------------------------------------------------------------------------------------------


def wait_for_server_stage(app, panel, words=("Predicting", "Resampling", "Loading", "Preprocess")) -> None:
    app.spin(lambda: any(word in panel.ui.statusLabel.text for word in words)
             or panel.ui.applyButton.text == "Apply", timeout_s=120)
    assert panel.ui.applyButton.text == "Cancel", (panel.ui.statusLabel.text, app.dialogs.texts())


def test_cancel_of_a_remote_run_cancels_the_server_job_and_adds_nothing(app, panel, slow_home, tmp_path, data_dir):
    slow = start_server(slow_home, tmp_path / "slow")
    try:
        ct(app, data_dir)
        choose_remote(panel, slow.url)
        panel.ui.applyButton.click()
        wait_for_server_stage(app, panel)
        job = panel.logic._job
        remote_id = job.remote_job.id
        started = time.monotonic()
        panel.ui.applyButton.click()  # Cancel
        assert time.monotonic() - started < 1.0  # the panel does not wait for the server
        assert panel.ui.applyButton.text == "Apply" and panel.ui.statusLabel.text.startswith("Cancelled")
        assert nodes(app.scene, "vtkMRMLSegmentationNode") == []
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline:
            state = requests.get(f"{slow.url}api/v1/jobs/{remote_id}", timeout=10).json()["state"]
            if state == "cancelled" and not job_folders(app):
                break
            time.sleep(0.2)
        assert state == "cancelled" and not job_folders(app)
    finally:
        stop_server(slow)


def test_a_server_killed_mid_run_gives_a_clear_error_within_seconds(app, panel, slow_home, tmp_path, data_dir):
    slow = start_server(slow_home, tmp_path / "doomed")
    try:
        volume = ct(app, data_dir)
        node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
        panel.ui.outputSegmentationSelector.setCurrentNode(node)
        choose_remote(panel, slow.url)
        panel.ui.applyButton.click()
        wait_for_server_stage(app, panel)
        os.killpg(slow.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        app.spin(lambda: panel.ui.applyButton.text == "Apply", timeout_s=60)
        assert time.monotonic() - killed < 15
        message = app.dialogs.texts()[-1]
        assert "stopped answering" in message and slow.url in message, message
        assert node.GetSegmentation().GetNumberOfSegments() == 0  # nothing half-imported
        assert nodes(app.scene, "vtkMRMLSegmentationNode") == [node] and not job_folders(app)
        assert panel.ui.statusLabel.text == "Failed." and volume.GetImageData() is not None
    finally:
        if slow.process.poll() is None:
            os.killpg(slow.process.pid, signal.SIGKILL)
        slow.process.wait(timeout=30)


# --------------------------------------------------------------------------------------------------
# A Slicer with only the extension
# --------------------------------------------------------------------------------------------------

WITHOUT_ENGINE = """
import importlib.abc, sys, tempfile
from pathlib import Path
sys.path[:0] = [{testing!r}, {module_root!r}]

class NotInstalled(importlib.abc.MetaPathFinder):
    # What a new Slicer has none of: the engine's packages and ours that Slicer does not ship (it ships numpy,
    # scipy, SimpleITK, requests, vtk).
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("nibabel", "nnunetv2", "torch", "portalocker", "dask", "aiohttp", "pyarrow"):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, NotInstalled())
import pytest, slicer
from mrml_support import load_volume
from slicer_app_stand_in import import_module, install

monkeypatch = pytest.MonkeyPatch()
scene = slicer.vtkMRMLScene()
install(monkeypatch, scene, Path(tempfile.mkdtemp()), Path({module_file!r}))
module = import_module(monkeypatch, Path({module_file!r}))
volume = load_volume(scene, Path({image!r}))
node = module.TotalSegmentatorLogic().process(volume, None, task="total", fast=True, server={url!r})
loaded = sorted(name for name in ("nibabel", "torch", "nnunetv2") if name in sys.modules)
print(node.GetSegmentation().GetNumberOfSegments(), loaded or "none")
"""


def test_a_slicer_without_torch_nnunet_or_nibabel_segments_on_a_server(server, data_dir, tmp_path):
    script = WITHOUT_ENGINE.format(testing=str(Path(__file__).parent), module_root=str(MODULE.parent),
                                   module_file=str(MODULE), image=str(data_dir / "example_ct_sm.nii.gz"),
                                   url=server.url)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "TOTALSEG_HOME_DIR": str(tmp_path / "empty-home")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    count, loaded = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) > 5 and loaded == "none"


def test_the_panel_shows_its_place_in_the_server_queue(app, panel, slow_home, tmp_path, data_dir):
    """Two clients, one engine slot: the panel's run waits behind a script's job and says so, then runs."""
    from totalseg_remote import RemoteServer

    busy = start_server(slow_home, tmp_path / "busy")
    try:
        other = RemoteServer(busy.url).submit(data_dir / "example_ct_sm.nii.gz", {"task": "total", "speed": "fast"})
        ct(app, data_dir)
        choose_remote(panel, busy.url)
        panel.ui.applyButton.click()
        app.spin(lambda: "ahead" in panel.ui.statusLabel.text or panel.ui.applyButton.text == "Apply", timeout_s=60)
        assert panel.ui.statusLabel.text == "Waiting on the server: 1 job ahead", panel.ui.logTextEdit.toPlainText()
        assert panel.ui.progressBar.value == 0
        app.spin(lambda: panel.ui.applyButton.text == "Apply", timeout_s=300)
        assert panel.ui.statusLabel.text == "Done." and other.status().state == "succeeded"
    finally:
        stop_server(busy)
