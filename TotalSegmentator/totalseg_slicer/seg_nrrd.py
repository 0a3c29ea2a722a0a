"""Save a segmentation node as a Slicer ``.seg.nrrd`` through Slicer's own storage node.

Going through ``vtkMRMLSegmentationStorageNode`` rather than writing the header ourselves means names,
colours, label values, layers and every segment tag (terminology, TotalSegmentator class and task) are
stored exactly as Slicer stores them, so Slicer, slicerio and other readers of Slicer's format get them back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import slicer
from totalseg_engine import atomic_output

SUFFIX = ".seg.nrrd"


def save_seg_nrrd(segmentation_node: slicer.vtkMRMLSegmentationNode, path: Union[str, os.PathLike],
                  overwrite: bool = False, crop_to_minimum_extent: bool = False) -> Path:
    """Write ``segmentation_node`` to ``path`` (``.seg.nrrd``); the file appears complete or not at all.

    By default the file covers the reference geometry (the segmented volume's grid), so it can be opened
    on that volume voxel for voxel; ``crop_to_minimum_extent`` keeps only the segments' bounding box.
    """
    path = Path(path)
    if not path.name.lower().endswith(SUFFIX):
        raise ValueError(f"A Slicer segmentation file needs a {SUFFIX} name, got {path}.")
    with atomic_output(path, overwrite) as temp:
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(temp))
        storage.SetCropToMinimumExtent(crop_to_minimum_extent)
        if not storage.WriteData(segmentation_node):
            details = storage.GetUserMessages().GetAllMessagesAsString().strip()
            raise OSError(f"Could not write segmentation '{segmentation_node.GetName()}' to {path}. {details}".strip())
    return path
