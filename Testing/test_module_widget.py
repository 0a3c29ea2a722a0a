"""The module panel itself: ``TotalSegmentatorWidget`` built from its .ui and clicked through.

Real here: the widget, logic and job classes of ``TotalSegmentator.py``; plain Qt widgets (PySide6, with
PythonQt's attribute rules); Slicer's own ``slicer.util`` and slicer-core's MRML scene; the engine child
process on release-shaped tiny model folders. Stood in for (``slicer_app_stand_in``, each written from
Slicer's source): ``slicer.app``, the module panel that owns the widget, the parameter node wrapper, the
MRML widgets, and the user at the message boxes. What still differs from a real Slicer: rendering, the
Segment Editor, and PythonQt's overload choice for signals with several signatures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML without Qt) is not installed")
pytest.importorskip("PySide6", reason="PySide6 stands in for PythonQt's Qt widgets")

from model_factory import (  # noqa: E402
    NetworkSize,
    release_zip,  # noqa: E402
    write_task_models,
)
from mrml_support import load_volume  # noqa: E402
from slicer_app_stand_in import import_module, install, module_parent, open_panel, opened_panel, qt  # noqa: E402
from slicer_pip_stand_ins import PipRecorder, slicer_58, slicer_512  # noqa: E402
from totalseg_engine.weights import paths  # noqa: E402
from totalseg_slicer import segmentation_import as si  # noqa: E402
from weights_server import serving  # noqa: E402

MODULE = Path(__file__).resolve().parents[1] / "TotalSegmentator" / "TotalSegmentator.py"
QUICK = NetworkSize(features=(2, 4, 8), patch_size=(64, 64, 64))
SLOW = NetworkSize(features=(16, 32, 64, 128), patch_size=(96, 96, 96))


@pytest.fixture
def slicer_app(mrml, monkeypatch, tmp_path):
    """A stood-in Slicer around a real scene; weights and licence hosts answered by a server on 127.0.0.1."""
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("no_proxy", "*")
    (tmp_path / "slicer-temp").mkdir()
    harness = install(monkeypatch, mrml.scene, tmp_path / "slicer-temp", MODULE)
    harness.module = import_module(monkeypatch, MODULE)
    harness.scene = mrml.scene
    with serving(monkeypatch) as server:
        harness.server = server
        yield harness


@pytest.fixture
def panel(slicer_app):
    with opened_panel(slicer_app.module) as widget:
        yield widget


def vtk_strings(getter) -> list[str]:
    import vtk

    array = vtk.vtkStringArray()
    getter(array)
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())]


def ct(app, data_dir, name="CT"):
    return load_volume(app.scene, data_dir / "example_ct_sm.nii.gz", name)


def nodes(scene, class_name: str) -> list:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def choose(combo, text: str) -> None:
    combo.currentIndex = combo.findText(text)


def run_to_end(app, widget) -> None:
    widget.ui.applyButton.click()
    app.spin(lambda: widget.ui.applyButton.text == "Apply")


# --------------------------------------------------------------------------------------------------
# Opening the panel
# --------------------------------------------------------------------------------------------------


def test_module_registers_itself_and_its_terminology_at_startup(slicer_app):
    parent = module_parent(MODULE)
    slicer_app.module.TotalSegmentator(parent)
    assert parent.title == "TotalSegmentator" and parent.categories == ["Segmentation"]
    [(signal, slot)] = slicer_app.app.connections
    assert signal == "startupCompleted()"
    slot()
    names = vtk_strings(slicer_app.terminologies.GetLoadedTerminologyNames)
    assert "Segmentation category and type - TotalSegmentator engine" in names, names


def test_opening_the_panel_picks_the_loaded_volume(slicer_app, data_dir):
    volume = ct(slicer_app, data_dir)
    widget, module_panel = open_panel(slicer_app.module)
    try:
        assert widget._parameterNode.inputVolume is volume and widget.ui.applyButton.enabled
    finally:
        module_panel.exit()
        widget.cleanup()


def test_panel_opens_without_connection_warnings(slicer_app, panel):
    """Defect 7: the .ui connected mrmlSceneChanged to a slot qMRMLSegmentationShow3DButton does not have."""
    assert slicer_app.connect_warnings == []
    assert panel.ui.inputVolumeSelector.mrmlScene() is slicer_app.scene


def test_task_list_speeds_and_devices(panel):
    ui = panel.ui
    assert ui.taskComboBox.count == 53 and ui.taskComboBox.currentData == "total"
    labels = [ui.taskComboBox.itemText(i) for i in range(ui.taskComboBox.count)]
    assert any("licence" in label and label.startswith("heartchambers_highres") for label in labels)
    assert "117 structures" in ui.taskComboBox.itemData(0, qt.Qt.ToolTipRole)
    assert [ui.deviceComboBox.itemData(i) for i in (0, ui.deviceComboBox.count - 2, ui.deviceComboBox.count - 1)] \
        == ["auto", "cpu", "remote"]
    ui.speedFastRadioButton.click()
    assert panel._parameterNode.speed == "fast"
    choose(ui.taskComboBox, "lung_vessels  (CT)")  # a task with one speed: fast falls back to normal
    assert panel._parameterNode.task == "lung_vessels" and panel._parameterNode.speed == "normal"
    assert not ui.speedFastRadioButton.enabled and ui.speedNormalRadioButton.checked
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.count - 2
    assert panel._parameterNode.device == "cpu"


def test_mr_filter_lists_mr_tasks_and_stays(panel):
    """Defect 4: choosing MR while the task was 'total' snapped the filter back to All."""
    ui = panel.ui
    choose(ui.modalityFilterComboBox, "MR")
    assert ui.modalityFilterComboBox.currentText == "MR"
    assert panel._parameterNode.task == "total_mr" and ui.taskComboBox.currentData == "total_mr"
    names = [ui.taskComboBox.itemData(i) for i in range(ui.taskComboBox.count)]
    assert names and all(name.endswith("_mr") or name == "brain_aneurysm" for name in names)
    choose(ui.taskComboBox, ui.taskComboBox.itemText(names.index("vertebrae_mr")))
    assert ui.modalityFilterComboBox.currentText == "MR" and panel._parameterNode.task == "vertebrae_mr"
    choose(ui.modalityFilterComboBox, "CT")
    assert panel._parameterNode.task == "total"  # no vertebrae CT counterpart by that name: the first CT task
    panel._parameterNode.task = "face_mr"  # set from the console: the filter widens to show it
    assert ui.modalityFilterComboBox.currentText == "All" and ui.taskComboBox.currentData == "face_mr"


def test_roi_subset_picker(panel):
    ui = panel.ui
    assert not ui.roiSubsetListWidget.isHidden()
    ui.roiSubsetFilterLineEdit.text = "kidney"
    visible = [ui.roiSubsetListWidget.item(r) for r in range(ui.roiSubsetListWidget.count)
               if not ui.roiSubsetListWidget.item(r).isHidden()]
    assert {item.data(qt.Qt.UserRole) for item in visible} >= {"kidney_left", "kidney_right"}
    for item in visible[:2]:
        item.setCheckState(qt.Qt.Checked)
    assert list(panel._parameterNode.roiSubset) == [item.data(qt.Qt.UserRole) for item in visible[:2]]
    assert ui.roiSubsetSummaryLabel.text == "2 selected"
    choose(ui.taskComboBox, "lung_vessels  (CT)")
    assert ui.roiSubsetListWidget.isHidden() and list(panel._parameterNode.roiSubset) == []


def test_saved_weights_folder_applies_after_restart(slicer_app, tmp_path):
    """Defect 5: the saved folder was put into the line edit before its signal was connected."""
    folder = tmp_path / "my weights"
    write_task_models(folder, "total", "fast", QUICK, seed=5)
    qt.QSettings().setValue("TotalSegmentator/WeightsFolder", str(folder))
    widget, module_panel = open_panel(slicer_app.module)
    try:
        assert widget.ui.weightsFolderPathLineEdit.currentPath == str(folder)
        assert os.environ["TOTALSEG_WEIGHTS_PATH"] == str(folder)
        assert paths.weights_dir() == folder
        widget.ui.speedFastRadioButton.click()
        assert widget.ui.weightsStatusLabel.text.startswith("1 of 7")
    finally:
        module_panel.exit()
        widget.cleanup()
    os.environ.pop("TOTALSEG_WEIGHTS_PATH")
    slicer_app.module.TotalSegmentatorLogic()  # a console logic reads the same setting
    assert os.environ["TOTALSEG_WEIGHTS_PATH"] == str(folder)


def test_choosing_a_weights_folder_is_remembered(panel, tmp_path):
    panel.ui.weightsFolderPathLineEdit.currentPath = str(tmp_path / "w")
    assert qt.QSettings().value("TotalSegmentator/WeightsFolder") == str(tmp_path / "w")
    assert os.environ["TOTALSEG_WEIGHTS_PATH"] == str(tmp_path / "w")
    panel.ui.weightsFolderPathLineEdit.currentPath = ""
    assert "TOTALSEG_WEIGHTS_PATH" not in os.environ


@pytest.mark.parametrize("slicer_5_8", [False, True])
def test_enter_and_exit_keep_one_gui_connection(mrml, monkeypatch, tmp_path, slicer_5_8):
    """Defect 6: on Slicer 5.8 connectGui returns None, so every enter() added another set of connections."""
    app = install(monkeypatch, mrml.scene, tmp_path, MODULE, slicer_5_8=slicer_5_8)
    widget, module_panel = open_panel(import_module(monkeypatch, MODULE))
    wrappers = [widget._parameterNode]  # the logic hands out a new wrapper of the same node on every enter()
    for _ in range(3):
        module_panel.exit()
        assert sum(len(w._parameterGUIs) for w in wrappers) == 0
        module_panel.enter()
        wrappers.append(widget._parameterNode)
        assert sum(len(w._parameterGUIs) for w in wrappers) == 1
    widget.ui.statisticsCheckBox.checked = True
    assert widget._parameterNode.computeStatistics
    module_panel.exit()
    widget.cleanup()
    assert app.connect_warnings == []


def test_licence_key_is_stored(slicer_app, panel):
    slicer_app.server.serve_json("/is_valid_license_number", {"status": "valid_license"})
    panel.ui.licenseKeyLineEdit.text = "aca_12345678910"
    panel.ui.setLicenseButton.click()
    assert panel.ui.statusLabel.text == "Licence key stored."
    assert panel.logic.licenseKey() == "aca_12345678910"


def test_a_bad_licence_key_is_shown_and_not_stored(slicer_app, panel):
    slicer_app.server.serve_json("/is_valid_license_number", {"status": "invalid_license"}, 403)
    panel.ui.licenseKeyLineEdit.text = "not a key"
    panel.ui.setLicenseButton.click()
    assert panel.logic.licenseKey() is None
    assert any("licence key was not stored" in text for text in slicer_app.dialogs.texts())


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def test_apply_runs_and_loads_the_segmentation(slicer_app, panel, data_dir):
    """Defect 1: Apply failed on every click with "no attribute '_startTime'"."""
    write_task_models(paths.weights_dir(), "total", "fast", QUICK, seed=5)
    volume = ct(slicer_app, data_dir)
    ui = panel.ui
    assert ui.inputVolumeSelector.currentNode() is volume and ui.applyButton.enabled
    ui.speedFastRadioButton.click()
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.findData("cpu")
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel", slicer_app.dialogs.texts()
    temporary = Path(slicer_app.app.temporaryPath)
    assert [p.name for p in temporary.iterdir() if p.name.startswith("TotalSegmentator-")]  # Slicer's temp folder
    slicer_app.spin(lambda: ui.applyButton.text == "Apply")
    assert ui.statusLabel.text == "Done." and ui.progressBar.value == 100, ui.logTextEdit.toPlainText()
    output = panel._parameterNode.outputSegmentation
    assert output is not None and ui.outputSegmentationSelector.currentNode() is output
    assert ui.segmentationShow3DButton.segmentation_node is output
    segmentation = output.GetSegmentation()
    assert segmentation.GetNumberOfSegments() > 5
    segment = segmentation.GetNthSegment(0)
    assert si.segment_tag(segment, "DICOM.SegmentAlgorithmType") == "AUTOMATIC"
    assert si.segment_tag(segment, "DICOM.SegmentAlgorithmName") == "TotalSegmentator"
    assert not [p for p in temporary.iterdir() if p.name.startswith("TotalSegmentator-")]

    # Run again into the same node: the user is asked once, and segments are replaced, not doubled.
    count = segmentation.GetNumberOfSegments()
    before = len(slicer_app.dialogs.shown)
    run_to_end(slicer_app, panel)
    assert "Replace them?" in slicer_app.dialogs.texts()[before]
    assert segmentation.GetNumberOfSegments() == count and len(nodes(slicer_app.scene, "vtkMRMLSegmentationNode")) == 1

    slicer_app.dialogs.answers = [False]  # declined: nothing runs
    ui.applyButton.click()
    assert ui.applyButton.text == "Apply" and not panel.logic.isRunning


def test_cancel_of_a_first_run_adds_no_node(slicer_app, panel, data_dir):
    """Defect 9: Cancel left a new, empty segmentation (and statistics table) in the scene."""
    write_task_models(paths.weights_dir(), "total", "normal", SLOW, seed=5)
    ct(slicer_app, data_dir)
    ui = panel.ui
    ui.statisticsCheckBox.checked = True
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.findData("cpu")
    ui.applyButton.click()
    slicer_app.spin(lambda: "Predicting" in ui.statusLabel.text or ui.applyButton.text == "Apply")
    assert ui.applyButton.text == "Cancel"
    ui.applyButton.click()
    assert ui.applyButton.text == "Apply" and ui.statusLabel.text.startswith("Cancelled")
    assert nodes(slicer_app.scene, "vtkMRMLSegmentationNode") == []
    assert nodes(slicer_app.scene, "vtkMRMLTableNode") == []
    assert panel._parameterNode.outputSegmentation is None


def test_failure_offers_the_weights_and_adds_no_node(slicer_app, panel, data_dir, monkeypatch):
    ct(slicer_app, data_dir)
    offered = []
    monkeypatch.setattr(qt.QMessageBox, "exec_", lambda box: offered.append(box.text) or 0)
    monkeypatch.setattr(panel.logic, "downloadWeights", lambda task, onProgress=None: offered.append(task))
    monkeypatch.setattr(qt.QMessageBox, "clickedButton",  # the user clicks "Download"
                        lambda box: next(b for b in box.buttons() if qt.QAbstractButton.text(b) == "Download"))
    panel.ui.speedFastRadioButton.click()
    panel.ui.deviceComboBox.currentIndex = panel.ui.deviceComboBox.findData("cpu")
    run_to_end(slicer_app, panel)
    assert panel.ui.statusLabel.text == "Failed."
    assert offered[0] and offered[1:] == ["total"], panel.ui.logTextEdit.toPlainText()
    assert nodes(slicer_app.scene, "vtkMRMLSegmentationNode") == []


def test_scene_close_during_a_run_cancels_and_resets(slicer_app, panel, data_dir):
    write_task_models(paths.weights_dir(), "total", "normal", SLOW, seed=5)
    ct(slicer_app, data_dir)
    panel.ui.deviceComboBox.currentIndex = panel.ui.deviceComboBox.findData("cpu")
    panel.ui.applyButton.click()
    assert panel.logic.isRunning
    slicer_app.scene.Clear(0)
    assert not panel.logic.isRunning and panel.ui.applyButton.text == "Apply"
    assert panel._parameterNode is not None and panel._parameterNode.task == "total"
    assert not panel.ui.applyButton.enabled  # no input volume any more
    assert nodes(slicer_app.scene, "vtkMRMLSegmentationNode") == []


def test_apply_without_input_is_disabled(panel):
    assert not panel.ui.applyButton.enabled and panel.ui.applyButton.toolTip == "Select an input volume."


def test_install_failure_is_shown_and_the_panel_stays_usable(slicer_app, panel, monkeypatch):
    """Defect 8: a failing pip (CalledProcessError from logProcessOutput) went unnoticed."""
    from totalseg_slicer import dependencies

    def failing_pip(requirements):
        raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", *requirements])

    monkeypatch.setattr(slicer.util, "pip_install", failing_pip, raising=False)
    monkeypatch.setattr(dependencies, "installed_version",
                        lambda name, lookup=None: None if name == "nibabel" else "99.0")
    panel.ui.installDependenciesButton.click()
    assert any("Installing the Python packages failed" in text for text in slicer_app.dialogs.texts())
    assert "nibabel" in panel.ui.dependenciesStatusLabel.text
    assert panel.ui.applyButton.text == "Apply"


# --------------------------------------------------------------------------------------------------
# Weights, licence and packages from the panel
# --------------------------------------------------------------------------------------------------


def test_download_and_import_buttons_install_weights(slicer_app, panel, tmp_path, monkeypatch):
    from totalseg_engine.tasks import models_of_task

    build = tmp_path / "release"
    write_task_models(build, "lung_vessels", "normal", QUICK, seed=3)
    [spec] = models_of_task("lung_vessels")
    slicer_app.server.serve(f"/{spec.release}/{spec.folder}.zip", release_zip(build))
    choose(panel.ui.taskComboBox, "lung_vessels  (CT)")
    assert panel.ui.weightsStatusLabel.text.startswith("0 of 1")
    panel.ui.downloadWeightsButton.click()
    assert panel.ui.weightsStatusLabel.text == "installed", slicer_app.dialogs.texts()

    zip_path = tmp_path / "body.zip"
    write_task_models(tmp_path / "body-release", "body", "fast", QUICK, seed=3)
    zip_path.write_bytes(release_zip(tmp_path / "body-release"))
    monkeypatch.setattr(qt.QFileDialog, "getOpenFileName", lambda *args: str(zip_path))
    choose(panel.ui.taskComboBox, "body  (CT)")
    assert panel.ui.weightsStatusLabel.text.startswith("0 of 2")  # body's normal and fast models
    panel.ui.importWeightsButton.click()
    assert panel.ui.statusLabel.text == "Imported 1 model folder(s)."
    assert panel.ui.weightsStatusLabel.text.startswith("1 of 2")


def test_a_failed_download_is_shown(slicer_app, panel):
    choose(panel.ui.taskComboBox, "lung_vessels  (CT)")
    panel.ui.downloadWeightsButton.click()  # the server answers 404
    assert any("Downloading the weights of 'lung_vessels' failed" in text for text in slicer_app.dialogs.texts())
    assert panel.ui.weightsStatusLabel.text.startswith("0 of 1")


def test_a_missing_licence_is_asked_for_and_stored(slicer_app, panel, data_dir, monkeypatch):
    slicer_app.server.serve_json("/is_valid_license_number", {"status": "valid_license"})
    asked = []
    monkeypatch.setattr(qt.QInputDialog, "getText", lambda *args: asked.append(args[2]) or "aca_ABCDEFGHIJKLMN")
    write_task_models(paths.weights_dir(), "total", "fast", QUICK, seed=5)  # its crop model, open weights
    ct(slicer_app, data_dir)
    choose(panel.ui.taskComboBox, "heartchambers_highres  (CT, licence)")
    panel.ui.deviceComboBox.currentIndex = panel.ui.deviceComboBox.findData("cpu")
    run_to_end(slicer_app, panel)
    assert asked and "licen" in asked[0].lower(), panel.ui.logTextEdit.toPlainText()
    assert panel.logic.licenseKey() == "aca_ABCDEFGHIJKLMN"
    assert panel.ui.licenseKeyLineEdit.text == "aca_ABCDEFGHIJKLMN"


def test_a_broken_model_shows_the_engine_error_with_its_log(slicer_app, panel, data_dir):
    [folder] = write_task_models(paths.weights_dir(), "total", "fast", QUICK, seed=3)
    next(folder.rglob("checkpoint_final.pth")).write_bytes(b"not a checkpoint")
    ct(slicer_app, data_dir)
    panel.ui.speedFastRadioButton.click()
    panel.ui.deviceComboBox.currentIndex = panel.ui.deviceComboBox.findData("cpu")
    run_to_end(slicer_app, panel)
    assert panel.ui.statusLabel.text == "Failed."
    assert any(text.startswith("Segmentation failed:") for text in slicer_app.dialogs.texts()), slicer_app.dialogs.shown
    assert panel.logic.lastLog()


def test_a_request_the_engine_cannot_take_is_refused_before_starting(slicer_app, panel, data_dir):
    ct(slicer_app, data_dir)
    panel._parameterNode.roiSubset = ["not_a_structure"]  # from the console
    panel.ui.applyButton.click()
    assert any(text.startswith("Could not start the segmentation:") and "not_a_structure" in text
               for text in slicer_app.dialogs.texts())
    assert not panel.logic.isRunning and nodes(slicer_app.scene, "vtkMRMLSegmentationNode") == []


@pytest.mark.parametrize("version", ["5.8", "5.12"])
def test_install_button_runs_pip_once_with_constraints(slicer_app, panel, monkeypatch, version):
    """Defect 3: the install ran ``pip install install ...`` (Slicer prepends ``install`` itself)."""
    from totalseg_slicer import dependencies, dependency_install

    installed = {"torch": "2.13.0", "nnunetv2": "2.8.1", "SimpleITK": "2.4.0", "scipy": "1.14.0",
                 "numpy": "2.0.0", "requests": "2.32.0", "vtk": "9.4.0"}
    recorder = PipRecorder(on_run=lambda argv: installed.update(nibabel="5.3.2"))
    util, packaging = (slicer_58 if version == "5.8" else slicer_512)(recorder)
    monkeypatch.setattr(slicer.util, "pip_install", util.pip_install, raising=False)
    if packaging is not None:
        monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
        monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    monkeypatch.setattr(dependencies, "installed_version", lambda name, lookup=None: installed.get(name))
    monkeypatch.setattr(dependency_install, "find_pytorch_utils", lambda: None)  # no PyTorch extension
    panel.ui.installDependenciesButton.click()
    [arguments] = recorder.pip_arguments
    assert arguments[0] == "install" and arguments.count("install") == 1
    assert "nibabel>=5.0" in arguments and arguments[-2] == "-c"
    assert not [a for a in arguments if a.split(">")[0].split("=")[0] in ("numpy", "SimpleITK", "vtk", "requests")]
    assert panel.ui.dependenciesStatusLabel.text == "all installed"


def test_a_scene_saved_with_the_existing_extension_opens_with_its_values(slicer_app, data_dir):
    volume = ct(slicer_app, data_dir)
    legacy = slicer.vtkMRMLScriptedModuleNode()  # what the existing extension's logic saved in the scene
    legacy.SetSingletonTag("TotalSegmentator")
    legacy.SetAttribute("ModuleName", "TotalSegmentator")
    for name, value in (("Task", "total_mr"), ("Quality", "fast"), ("CPU", "true"),
                        ("UseStandardSegmentNames", "false"), ("RemoveSmallBlobs", "true")):
        legacy.SetParameter(name, value)
    legacy.SetNodeReferenceID("InputVolume", volume.GetID())
    slicer_app.scene.AddNode(legacy)
    widget, module_panel = open_panel(slicer_app.module)
    try:
        ui = widget.ui
        assert ui.taskComboBox.currentData == "total_mr" and ui.speedFastRadioButton.checked
        assert ui.deviceComboBox.currentData == "cpu" and ui.inputVolumeSelector.currentNode() is volume
        assert not ui.useStandardSegmentNamesCheckBox.checked and ui.removeSmallBlobsCheckBox.checked
    finally:
        module_panel.exit()
        widget.cleanup()


BEFORE_INSTALL = """
import importlib.abc, sys, tempfile
from pathlib import Path
sys.path[:0] = [{testing!r}, {module_root!r}]

class NotInstalled(importlib.abc.MetaPathFinder):
    # What a new Slicer lacks until the panel's install: the engine's packages (Slicer ships numpy, SimpleITK, vtk).
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("nibabel", "scipy", "nnunetv2", "torch"):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, NotInstalled())
import pytest, slicer
from slicer_app_stand_in import import_module, install, open_panel

monkeypatch = pytest.MonkeyPatch()
temporary = Path(tempfile.mkdtemp())
harness = install(monkeypatch, slicer.vtkMRMLScene(), temporary, Path({module_file!r}))
widget, panel = open_panel(import_module(monkeypatch, Path({module_file!r})))
combo = widget.ui.deviceComboBox
print([combo.itemData(i) for i in range(combo.count)], widget.ui.taskComboBox.count,
      "nibabel" in sys.modules or "scipy" in sys.modules)
"""


def test_the_panel_opens_in_a_slicer_without_the_engines_packages(tmp_path):
    """A new Slicer has none of nibabel, scipy, nnunetv2, torch until the panel installs them: the module loads, its
    panel opens with the tasks and the device list (asked of a child process), nothing needing them is imported."""
    script = BEFORE_INSTALL.format(testing=str(Path(__file__).parent), module_root=str(MODULE.parent),
                                   module_file=str(MODULE))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "TOTALSEG_HOME_DIR": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    devices, tasks, imported = done.stdout.strip().splitlines()[-1].rsplit(" ", 2)
    assert "'auto'" in devices and "'cpu'" in devices and int(tasks) > 40 and imported == "False"


@pytest.mark.parametrize("button, speed, split, starts", [
    ("Fast mode (3 mm)", "fast", False, True), ("Split processing", "normal", True, True),
    ("Run anyway", "normal", False, True), ("Cancel", "normal", False, False)])
def test_apply_offers_fast_mode_or_split_processing_when_the_run_will_not_fit(slicer_app, panel, data_dir, monkeypatch,
                                                                               button, speed, split, starts):
    """As the existing extension asks on a small GPU; here for any device, from the engine's estimate."""
    from totalseg_slicer import resources

    volume = ct(slicer_app, data_dir)
    asked, started = [], []
    shortfall = resources.Shortfall("This run needs about 9.0 GB of RAM, but only 2.0 GB is free: it may fail or be "
                                    "very slow. --fast (3 mm models) needs much less.", ("fast", "force_split"))
    monkeypatch.setattr(resources, "check_resources",
                        lambda python, dims, spacing, request, timeout_s=60: asked.append((dims, request)) or shortfall)
    monkeypatch.setattr(panel.logic, "start", lambda params, **kw: started.append((params.speed, params.forceSplit)))
    monkeypatch.setattr(qt.QMessageBox, "exec_", lambda box: slicer_app.dialogs.modal(box) and 0)
    monkeypatch.setattr(qt.QMessageBox, "clickedButton",
                        lambda box: next(b for b in box.buttons() if qt.QAbstractButton.text(b) == button))
    panel.ui.deviceComboBox.currentIndex = panel.ui.deviceComboBox.findData("cpu")
    panel.ui.applyButton.click()
    assert asked[0][0] == volume.GetImageData().GetDimensions() and asked[0][1].device == "cpu"
    assert slicer_app.dialogs.shown[-1] == ("Not enough memory", shortfall.message)
    assert started == ([(speed, split)] if starts else [])
