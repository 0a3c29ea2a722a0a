"""Loading volumes into a slicer-core MRML scene the way Slicer does (the scene itself: the ``mrml`` fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML without Qt) is not installed")

from totalseg_slicer import segmentation_import as si  # noqa: E402
from totalseg_slicer.volume_export import ijk_to_ras  # noqa: E402


def load_volume(scene, source: Path, name: str = "volume"):
    """Read a file or a DICOM folder with Slicer's archetype storage node (DICOM slices sorted by position)."""
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(source))) if source.is_dir() else [str(source)]
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(files[0])
    if len(files) > 1:
        storage.ResetFileNameList()
        for file in files:
            storage.AddFileName(file)
        storage.SetSingleFile(0)
    assert storage.ReadData(volume)
    return volume


def segment_on_volume(mrml, segmentation_node, segment_id: str, volume) -> np.ndarray:
    """A segment exported by Slicer onto ``volume``'s exact grid, as a boolean x, y, z array."""
    labelmap = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    try:
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, volume)
        assert np.array_equal(ijk_to_ras(labelmap), ijk_to_ras(volume))
        return slicer.util.arrayFromVolume(labelmap).transpose() > 0
    finally:
        mrml.scene.RemoveNode(labelmap)


def segments(segmentation_node) -> list:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetSegment(segment_id) for segment_id in segmentation.GetSegmentIDs()]


def snapshot(mrml, segmentation_node, volume) -> list:
    """Everything a user could see of the segments: IDs, order, names, colours, tags and voxels."""
    segmentation = segmentation_node.GetSegmentation()
    return [
        (segment_id, segment.GetName(), tuple(segment.GetColor()), si.segment_tag(segment, si.CLASS_TAG),
         si.segment_tag(segment, si.TASK_TAG), segment_on_volume(mrml, segmentation_node, segment_id, volume).tobytes())
        for segment_id, segment in zip(segmentation.GetSegmentIDs(), segments(segmentation_node))
    ]
