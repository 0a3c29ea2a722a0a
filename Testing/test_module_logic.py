"""TotalSegmentatorLogic, the console API, run for real in a slicer-core scene.

No Slicer application runs here: the few application pieces the logic touches (``qt.QTimer``, the
``ScriptedLoadableModule`` base classes, ``slicer.app.processEvents``) are replaced by minimal stand-ins, and
the module file is imported as Slicer would import it. Everything below them — export, the engine child
process, import into the scene — is the real code path.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML without Qt) is not installed")

from model_factory import NetworkSize, write_task_models  # noqa: E402
from mrml_support import load_volume  # noqa: E402
from totalseg_engine import paths  # noqa: E402
from totalseg_slicer import segmentation_import as si  # noqa: E402

MODULE = Path(__file__).resolve().parents[1] / "TotalSegmentator" / "TotalSegmentator.py"
QUICK = NetworkSize(features=(2, 4, 8), patch_size=(64, 64, 64))


class _Signal:
    def __init__(self) -> None:
        self.slots = []

    def connect(self, slot) -> None:
        self.slots.append(slot)


class _Timer:
    """Records the slot; the test drives it by calling ``fire``."""

    def __init__(self) -> None:
        self.timeout = _Signal()
        self.active = False

    def setInterval(self, ms: int) -> None:
        self.interval = ms

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def fire(self) -> None:
        for slot in self.timeout.slots:
            slot()


def _fake_application_modules(monkeypatch) -> None:
    qt = types.SimpleNamespace(QTimer=_Timer, QEventLoop=types.SimpleNamespace(AllEvents=0))
    monkeypatch.setitem(sys.modules, "qt", qt)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class _Base:
        def __init__(self, *args) -> None:
            pass

        def getParameterNode(self):
            return slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")

    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleWidget"):
        setattr(slm, name, type(name, (_Base,), {}))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda *a: None), raising=False)


@pytest.fixture
def module(mrml, monkeypatch, tmp_path):
    _fake_application_modules(monkeypatch)
    monkeypatch.setattr(slicer, "mrmlScene", mrml.scene, raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    spec = importlib.util.spec_from_file_location("TotalSegmentatorModule", MODULE)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def classes_of(node) -> set:
    segmentation = node.GetSegmentation()
    return {si.segment_tag(segmentation.GetSegment(i), si.CLASS_TAG) for i in segmentation.GetSegmentIDs()}


def test_process_blocks_and_returns_a_filled_segmentation(module, mrml, data_dir):
    write_task_models(paths.weights_dir(), "total", "fast", QUICK, seed=5)
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    logic = module.TotalSegmentatorLogic()
    assert logic.weightsStatus("total").startswith("1 of 7")
    node = logic.process(volume, None, task="total", fast=True, device="cpu", use_standard_names=False)
    assert len(classes_of(node)) > 5
    segmentation = node.GetSegmentation()
    first = segmentation.GetSegment(segmentation.GetSegmentIDs()[0])
    assert first.GetName() == si.segment_tag(first, si.CLASS_TAG)  # TotalSegmentator ids, as asked


def test_process_async_reports_and_finishes_through_the_timer(module, mrml, data_dir):
    write_task_models(paths.weights_dir(), "total", "fast", QUICK, seed=5)
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    logic = module.TotalSegmentatorLogic()
    progress, finished = [], []
    job = logic.processAsync(volume, None, task="total", fast=True, device="cpu",
                             onProgress=lambda f, m: progress.append(f), onFinished=lambda s, m: finished.append(s))
    assert logic.isRunning
    deadline = time.monotonic() + 300
    while not finished:
        assert time.monotonic() < deadline
        logic._timer.fire()
        time.sleep(0.05)
    assert finished == ["succeeded"] and not logic.isRunning
    assert 1.0 in progress
    assert classes_of(job.segmentation_node)


def test_cancel_from_the_logic_reports_cancelled_and_keeps_the_node(module, mrml, data_dir):
    write_task_models(paths.weights_dir(), "total", "normal",
                      NetworkSize(features=(16, 32, 64, 128), patch_size=(96, 96, 96)), seed=5)
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "target")
    logic = module.TotalSegmentatorLogic()
    finished = []
    predicting = []
    logic.processAsync(volume, node, task="total", device="cpu",
                       onProgress=lambda f, m: predicting.append(m) if "Predicting" in m else None,
                       onFinished=lambda s, m: finished.append(s))
    deadline = time.monotonic() + 120
    while not predicting:
        assert time.monotonic() < deadline and not finished
        logic._timer.fire()
        time.sleep(0.05)
    logic.cancel()
    assert finished == ["cancelled"]
    assert node.GetSegmentation().GetNumberOfSegments() == 0


def test_failure_messages_are_recognised_for_the_dialogs(module, mrml, data_dir):
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    logic = module.TotalSegmentatorLogic()
    with pytest.raises(RuntimeError) as failure:
        logic.process(volume, None, task="total", fast=True, device="cpu", offline=True)
    assert logic.needsWeights(str(failure.value))
    assert not logic.needsLicense(str(failure.value))
    assert ("CPU", "cpu") in logic.availableDevices() and logic.availableDevices()[0][1] == "auto"
