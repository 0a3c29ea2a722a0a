"""Scripts of the existing TotalSegmentator Slicer extension: its quality names, task table and parameter node."""

from __future__ import annotations

import pytest
from totalseg_engine.tasks import all_tasks
from totalseg_slicer import legacy_api


@pytest.mark.parametrize("quality, fast, fastest, speed", [
    (None, None, False, "normal"), (None, True, False, "fast"), (True, None, False, "fast"),
    (False, None, False, "normal"), ("fast", None, False, "fast"), ("faster", None, False, "fastest"),
    ("normal", True, False, "normal"), ("fastest", None, False, "fastest"), (None, None, True, "fastest"),
])
def test_quality_and_fast_map_onto_our_speeds(quality, fast, fastest, speed):
    assert legacy_api.speed_of(quality, fast, fastest) == speed


def test_an_unknown_quality_is_named():
    with pytest.raises(ValueError, match="quality 'quick'"):
        legacy_api.speed_of("quick")


def test_task_table_in_the_existing_extensions_shape():
    table = legacy_api.task_table()
    assert list(table) == list(all_tasks())
    assert table["total"]["qualityModes"] == ["normal", "fast", "faster"]
    assert table["total_mr"]["title"] == "total_mr (MR)" and table["total_mr"]["modalities"] == ["MR"]
    assert table["lung_vessels"]["qualityModes"] == ["normal"]
    assert table["heartchambers_highres"]["requiresLicense"] and not table["total"]["requiresLicense"]
    assert all(entry["supportsMultiLabel"] for entry in table.values())


def test_parameter_node_of_the_existing_extension_is_carried_over(mrml):
    slicer = pytest.importorskip("slicer")
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    node = slicer.vtkMRMLScriptedModuleNode()
    for name, value in (("Task", "total_mr"), ("Quality", "faster"), ("CPU", "true"),
                        ("UseStandardSegmentNames", "false"), ("RobustCrop", "true")):
        node.SetParameter(name, value)  # as its updateParameterNodeFromGUI wrote them
    node.SetNodeReferenceID("InputVolume", volume.GetID())
    node.SetNodeReferenceID("OutputSegmentation", segmentation.GetID())
    mrml.scene.AddNode(node)
    assert legacy_api.migrate_parameter_node(node)
    assert [node.GetParameter(n) for n in ("task", "speed", "device", "useStandardSegmentNames", "robustCrop")] == [
        "total_mr", "fastest", "cpu", "False", "True"]
    assert node.GetNodeReference("inputVolume") is volume
    assert node.GetNodeReference("outputSegmentation") is segmentation
    assert not legacy_api.migrate_parameter_node(node)  # once only: later changes are ours
