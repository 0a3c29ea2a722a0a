"""The exact path Apply takes, in a slicer-core scene: export → engine child process → import.

Small nnU-Net models in the release layout run for real in the child; the result must land on the input
volume's voxels, named, coloured and tagged; Cancel and failures must leave the output node untouched.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML without Qt) is not installed")

from model_factory import NetworkSize, write_task_models  # noqa: E402
from mrml_support import load_volume, segment_on_volume, snapshot  # noqa: E402
from process_support import group_members  # noqa: E402
from totalseg_engine import terminology  # noqa: E402
from totalseg_engine.core import pipeline
from totalseg_engine.request import SegmentationRequest
from totalseg_engine.runner import State
from totalseg_engine.tasks import get_task  # noqa: E402
from totalseg_engine.weights import paths
from totalseg_slicer import segmentation_import as si  # noqa: E402
from totalseg_slicer.job import SegmentationJob  # noqa: E402
from totalseg_slicer.job_request import job_request  # noqa: E402

QUICK = NetworkSize(features=(2, 4, 8), patch_size=(64, 64, 64))
SLOW = NetworkSize(features=(16, 32, 64, 128), patch_size=(96, 96, 96))  # seconds per tile: time to cancel


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    return tmp_path / "home"


def run_to_end(job: SegmentationJob, timeout_s: float = 300) -> None:
    job.start()
    deadline = time.monotonic() + timeout_s
    while not job.poll():
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.05)


def test_apply_path_loads_named_tagged_segments_on_the_input_voxels(mrml, home, data_dir, tmp_path):
    write_task_models(paths.weights_dir(), "total", "fast", QUICK, seed=5)
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    events = []
    job = SegmentationJob(mrml.scene, volume, None, job_request(task="total", speed="fast", device="cpu",
                                                                 statistics=True), temp_root=tmp_path)
    job.on_progress = lambda fraction, message: events.append((fraction, message))
    run_to_end(job)
    assert job.state is State.SUCCEEDED, job.error_message
    assert any(f == 1.0 for f, _ in events) and any("Predicting" in m for _, m in events)
    assert not list(tmp_path.glob("TotalSegmentator-*")), "temporary folder left behind"

    expected = pipeline.segment(data_dir / "example_ct_sm.nii.gz",
                                SegmentationRequest(task="total", speed="fast", device="cpu")).data
    task = get_task("total")
    present = [label for label in np.unique(expected) if label]
    segmentation = job.segmentation_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(present)
    for label in present[:8]:
        class_name = task.classes[int(label)]
        segment_id = job.segment_ids[present.index(label)]
        segment = segmentation.GetSegment(segment_id)
        name, color, entry = terminology.segment_info(class_name, True)
        assert segment.GetName() == name
        assert si.segment_tag(segment, si.CLASS_TAG) == class_name
        assert si.segment_tag(segment, si.TERMINOLOGY_TAG) == entry
        np.testing.assert_allclose(segment.GetColor(), color, atol=1e-6)
        np.testing.assert_array_equal(segment_on_volume(mrml, job.segmentation_node, segment_id, volume),
                                      expected == label)
    table = job.table_node
    assert table is not None and table.GetNumberOfRows() == len(task.classes)


def test_roi_subset_run_brings_only_those_classes(mrml, home, data_dir, tmp_path):
    for speed in ("fast", "fastest"):
        write_task_models(paths.weights_dir(), "total", speed, QUICK, seed=5)
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    full = pipeline.segment(data_dir / "example_ct_sm.nii.gz",
                            SegmentationRequest(task="total", speed="fastest", device="cpu")).data
    task = get_task("total")
    counts = np.bincount(full.ravel(), minlength=256)
    wanted = [task.classes[label] for label in np.argsort(counts)[::-1] if label and counts[label]][:2]
    job = SegmentationJob(mrml.scene, volume, None,
                          job_request(task="total", speed="fast", roi_subset=wanted, device="cpu"), temp_root=tmp_path)
    run_to_end(job)
    assert job.state is State.SUCCEEDED, job.error_message
    segmentation = job.segmentation_node.GetSegmentation()
    classes = {si.segment_tag(segmentation.GetSegment(i), si.CLASS_TAG) for i in segmentation.GetSegmentIDs()}
    assert classes and classes <= set(wanted)


def test_cancel_kills_the_child_and_leaves_the_segmentation_as_it_was(mrml, home, data_dir, tmp_path):
    write_task_models(paths.weights_dir(), "total", "normal", SLOW, seed=5)
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    user = np.zeros(volume.GetImageData().GetDimensions(), bool)
    user[10:20, 10:20, 5:10] = True
    si.import_segmentation(mrml.scene, user.astype(np.uint8), node, volume, {1: "my_lesion"}, "manual",
                           lambda label, name: ("My lesion", (0.9, 0.8, 0.1), None))
    before = snapshot(mrml, node, volume)
    job = SegmentationJob(mrml.scene, volume, node, job_request(task="total", device="cpu"), temp_root=tmp_path)
    predicting = []
    job.on_progress = lambda fraction, message: predicting.append(message) if "Predicting" in message else None
    job.start()
    pgid = job._process.pid
    deadline = time.monotonic() + 120
    while not predicting:
        assert not job.poll(), f"finished before it could be cancelled: {job.error_message}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < 2.5
    assert job.state is State.CANCELLED
    assert group_members(pgid) == []
    assert snapshot(mrml, node, volume) == before
    assert not list(tmp_path.glob("TotalSegmentator-*"))


def test_a_failing_child_surfaces_its_message_and_changes_nothing(mrml, home, data_dir, tmp_path):
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    job = SegmentationJob(mrml.scene, volume, node, job_request(task="total", speed="fast", device="cpu",
                                                                 offline=True), temp_root=tmp_path)
    run_to_end(job)
    assert job.state is State.FAILED
    assert "not installed" in job.error_message and "totalseg_import_weights" in job.error_message
    assert node.GetSegmentation().GetNumberOfSegments() == 0
    assert not list(tmp_path.glob("TotalSegmentator-*"))


def test_bad_requests_are_refused_before_anything_starts(mrml, data_dir):
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    with pytest.raises(ValueError, match="Unknown task"):
        SegmentationJob(mrml.scene, volume, None, job_request(task="totl"))
    with pytest.raises(ValueError, match="Unknown class"):
        SegmentationJob(mrml.scene, volume, None, job_request(task="total", roi_subset=["lvier"]))
    with pytest.raises(ValueError, match="input volume"):
        SegmentationJob(mrml.scene, None, None, job_request())


def test_every_frame_of_a_sequence_becomes_a_segmentation_sequence(mrml, home, data_dir, tmp_path):
    """Two CT frames in a browser: each frame is segmented by the engine and stored at its index value."""
    import slicer
    from totalseg_slicer import sequences
    from totalseg_slicer.job import SequenceJob

    write_task_models(paths.weights_dir(), "total", "fast", QUICK, seed=5)
    ct = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    array = slicer.util.arrayFromVolume(ct)
    sequence = mrml.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "phases")
    for index_value, shift in (("0", 0), ("1", 200)):
        frame = slicer.vtkMRMLScalarVolumeNode()
        slicer.util.updateVolumeFromArray(frame, (array + shift).astype(array.dtype))
        matrix = vtk_matrix(ct)
        frame.SetIJKToRASMatrix(matrix)
        sequence.SetDataNodeAtValue(frame, index_value)
    browser = mrml.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "phases browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    mrml.sequences.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)

    job = SequenceJob(mrml.scene, proxy, None, job_request(task="total", speed="fast", device="cpu"),
                      temp_root=tmp_path)
    run_to_end(job)
    assert job.state is State.SUCCEEDED, job.error_message
    result = sequences.sequence_of(mrml.scene, job.segmentation_node)
    assert result is not None and result.GetNumberOfDataNodes() == 2
    counts = [result.GetNthDataNode(i).GetSegmentation().GetNumberOfSegments() for i in range(2)]
    assert all(count > 3 for count in counts)
    assert not list(tmp_path.glob("TotalSegmentator-*"))


def vtk_matrix(volume):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix
