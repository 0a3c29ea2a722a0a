"""TotalSegmentatorLogic, the console API, run for real in a slicer-core scene.

No Slicer application runs here: ``slicer_app_stand_in`` puts Slicer's application pieces around the real
logic (``qt`` from PySide6 with PythonQt's rules, the real ``QTimer`` driven by Qt's event loop,
``slicer.app``, the ``ScriptedLoadableModule`` base classes written from Slicer's source), and the module file
is imported as Slicer imports it. Everything below them — export, the engine child process, import into the
scene — is the real code path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML without Qt) is not installed")
pytest.importorskip("PySide6", reason="PySide6 stands in for PythonQt's Qt")

from model_factory import NetworkSize, write_task_models  # noqa: E402
from mrml_support import load_volume  # noqa: E402
from slicer_app_stand_in import import_module, install  # noqa: E402
from totalseg_engine import State  # noqa: E402
from totalseg_engine.weights import paths  # noqa: E402
from totalseg_slicer import dependencies  # noqa: E402
from totalseg_slicer import segmentation_import as si  # noqa: E402

MODULE = Path(__file__).resolve().parents[1] / "TotalSegmentator" / "TotalSegmentator.py"
QUICK = NetworkSize(features=(2, 4, 8), patch_size=(64, 64, 64))


@pytest.fixture
def app(mrml, monkeypatch, tmp_path):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    return install(monkeypatch, mrml.scene, tmp_path, MODULE)


@pytest.fixture
def module(app, monkeypatch):
    return import_module(monkeypatch, MODULE)


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


def test_process_async_reports_and_finishes_through_the_timer(app, module, mrml, data_dir):
    write_task_models(paths.weights_dir(), "total", "fast", QUICK, seed=5)
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    logic = module.TotalSegmentatorLogic()
    progress, finished = [], []
    job = logic.processAsync(volume, None, task="total", fast=True, device="cpu",
                             onProgress=lambda f, m: progress.append(f), onFinished=lambda s, m: finished.append(s))
    assert logic.isRunning
    app.spin(lambda: bool(finished))
    assert finished == ["succeeded"] and not logic.isRunning
    assert 1.0 in progress
    assert classes_of(job.segmentation_node)


def test_cancel_from_the_logic_reports_cancelled_and_keeps_the_node(app, module, mrml, data_dir):
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
    app.spin(lambda: bool(predicting or finished), timeout_s=120)
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


def test_console_runs_say_what_to_install_when_packages_are_missing(module, mrml, data_dir, monkeypatch):
    """process() checked nothing and stopped with ModuleNotFoundError where nibabel or nnunetv2 were missing."""
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    monkeypatch.setattr(dependencies, "installed_version",
                        lambda name, lookup=None: None if name in ("nibabel", "nnunetv2") else "99.0")
    logic = module.TotalSegmentatorLogic()
    for call in (lambda: logic.process(volume, None, task="total", fast=True),
                 lambda: logic.processAsync(volume, None, task="total", fast=True)):
        with pytest.raises(RuntimeError, match="nibabel.*nnunetv2|nnunetv2.*nibabel") as missing:
            call()
        assert "Install" in str(missing.value) or "install" in str(missing.value)
    assert not logic.isRunning


def test_self_test_skips_with_a_message_without_packages_or_weights(module, monkeypatch):
    shown = []
    test = module.TotalSegmentatorTest()
    monkeypatch.setattr(test, "delayDisplay", shown.append)
    with monkeypatch.context() as without_packages:
        without_packages.setattr(dependencies, "installed_version", lambda name, lookup=None: None)
        test.runTest()
    assert shown[-1].startswith("Skipped:") and "torch" in shown[-1]
    test.test_FastTotalOnSampleCT()
    assert shown[-1].startswith("Skipped: the weights")


def test_existing_extension_calls_run_unchanged(module, mrml, data_dir, tmp_path):
    """``process(inputVolume, outputSegmentation, quality, cpu, task, subset)`` positionally; attributes honoured."""
    write_task_models(paths.weights_dir(), "total", "fast", QUICK, seed=5)
    write_task_models(paths.weights_dir(), "total", "fastest", QUICK, seed=5)  # crops a ROI subset
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    logic = module.TotalSegmentatorLogic()
    lines = []
    logic.logCallback = lines.append
    logic.useStandardSegmentNames = False
    # quality=True is fast (only the fast and fastest weights are installed), cpu=True, task None is total
    node = logic.process(volume, None, True, True, None, ["liver", "spleen"])
    assert classes_of(node) <= {"liver", "spleen"}
    assert lines  # the engine's log reached logCallback
    whole = logic.process(volume, None, "fast", True)
    segmentation = whole.GetSegmentation()
    assert len(classes_of(whole)) > 5
    assert all(segmentation.GetSegment(i).GetName() == i for i in segmentation.GetSegmentIDs())  # class names
    again = logic.process(volume, whole, quality="fast", cpu=True, task="total", interactive=True)
    assert again is whole and classes_of(whole) == {i for i in segmentation.GetSegmentIDs()}
    with pytest.raises(ValueError, match="quality 'quick'"):
        logic.process(volume, node, "quick")


def test_existing_extension_helpers(module, monkeypatch, tmp_path):
    logic = module.TotalSegmentatorLogic()
    assert logic.getSupportedQualityModesForTask("total") == ["normal", "fast", "faster"]
    assert logic.isLicenseRequiredForTask("heartchambers_highres") and not logic.isLicenseRequiredForTask("total")
    assert logic.isMultiLabelSupportedForTask("body") and not logic.isMultiLabelSupportedForTask("no_such_task")
    assert logic.tasks["total"]["title"] == "total"
    logic.totalSegmentatorWeightsPath = str(tmp_path / "weights")
    with monkeypatch.context() as without_packages:
        without_packages.setattr(dependencies, "installed_version", lambda name, lookup=None: None)
        with pytest.raises(RuntimeError, match="torch"):
            logic.process(None, None)  # packages missing: said before anything else
    called = []
    monkeypatch.setattr(logic, "ensureDependencies", lambda askConfirmation, reinstall: called.append(
        (askConfirmation, reinstall)) or True)
    assert logic.setupPythonRequirements(upgrade=True) and called == [(False, True)]


class _RecordedJob:
    """Records what the logic asks for; constructor as SegmentationJob's and SequenceJob's (totalseg_slicer/job.py)."""

    made: list = []

    def __init__(self, scene, input_volume, segmentation_node, request, table_node=None, python=None,
                 temp_root=None) -> None:
        request.validate()
        self.request, self.segmentation_node, self.error_message = request, segmentation_node, ""
        self.state = State.NOT_STARTED
        _RecordedJob.made.append(self)

    def start(self) -> None:
        self.state = State.SUCCEEDED

    def poll(self) -> bool:
        return True

    def cancel(self) -> None:
        self.state = State.CANCELLED


@pytest.mark.parametrize("call, expected", [
    (lambda logic, v: logic.process(v, None), ("SegmentationJob", "total", "normal", "auto", ())),
    (lambda logic, v: logic.process(v, None, "faster", True, "total_mr"),
     ("SegmentationJob", "total_mr", "fastest", "cpu", ())),
    (lambda logic, v: logic.process(v, None, False, False, None, ["liver"]),
     ("SegmentationJob", "total", "normal", "auto", ("liver",))),
    (lambda logic, v: logic.process(v, None, fast=True, cpu=True), ("SegmentationJob", "total", "fast", "cpu", ())),
    (lambda logic, v: logic.process(v, None, quality="fast", subset=["spleen"], sequenceBrowserNode=object()),
     ("SequenceJob", "total", "fast", "auto", ("spleen",))),
    (lambda logic, v: logic.processAsync(v, None, "fast", cpu=True), ("SegmentationJob", "total", "fast", "cpu", ())),
    (lambda logic, v: logic.process(v, None, task="total", fastest=True, roiSubset=["liver"], device="gpu:1"),
     ("SegmentationJob", "total", "fastest", "gpu:1", ("liver",))),
])
def test_existing_extension_calling_styles_reach_the_job(module, mrml, monkeypatch, call, expected):
    from totalseg_slicer import job

    made = {}
    for name in ("SegmentationJob", "SequenceJob"):
        made[name] = type(name, (_RecordedJob,), {})
        monkeypatch.setattr(job, name, made[name])
    _RecordedJob.made = []
    logic = module.TotalSegmentatorLogic()
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    call(logic, volume)
    logic.cancel()
    [recorded] = _RecordedJob.made
    request = recorded.request.segmentation  # "auto": the engine's CUDA, then Apple MPS, then the CPU
    assert (type(recorded).__name__, request.task, request.speed, request.device, request.roi_subset) == expected


def test_existing_extension_attributes_reach_the_job(module, mrml, monkeypatch, tmp_path):
    from totalseg_slicer import job

    monkeypatch.setattr(job, "SegmentationJob", type("SegmentationJob", (_RecordedJob,), {}))
    _RecordedJob.made = []
    logic = module.TotalSegmentatorLogic()
    logic.useStandardSegmentNames, logic.robustCrop = False, True
    logic.removeSmallBlobs, logic.higherOrderResampling = True, True
    logic.totalSegmentatorWeightsPath = str(tmp_path / "weights")
    logic.process(mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT"), None, statistics=True)
    request = _RecordedJob.made[0].request
    segmentation = request.segmentation
    assert (request.use_standard_names, segmentation.robust_crop, segmentation.remove_small_blobs,
            segmentation.higher_order_resampling, segmentation.statistics) == (False, True, 200.0, True, True)
    assert paths.weights_dir() == tmp_path / "weights"
