"""What lies under the cursor: the structure and the image value at a RAS point, as Slicer's data probe shows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np
import slicer
import vtk


def voxel_at(volume_node: slicer.vtkMRMLScalarVolumeNode, ras: Sequence[float]) -> Optional[tuple[int, int, int]]:
    """The (i, j, k) voxel holding a RAS point, or None outside the volume."""
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    ijk = ras_to_ijk.MultiplyPoint((*ras, 1.0))[:3]
    voxel = tuple(int(round(c)) for c in ijk)
    dims = volume_node.GetImageData().GetDimensions()
    return voxel if all(0 <= c < d for c, d in zip(voxel, dims)) else None


def describe(volume_node: slicer.vtkMRMLScalarVolumeNode, ras: Sequence[float], labels: Optional[np.ndarray],
             names: Mapping[int, str]) -> str:
    """"liver · 61 at voxel (i, j, k)"; labels are on the volume's voxels (i, j, k), None before a run."""
    voxel = voxel_at(volume_node, ras)
    if voxel is None:
        return ""
    value = volume_node.GetImageData().GetScalarComponentAsDouble(*voxel, 0)
    label = int(labels[voxel]) if labels is not None else 0
    structure = names.get(label, f"label {label}") if label else "no structure"
    return f"{structure} · {value:g} at voxel ({voxel[0]}, {voxel[1]}, {voxel[2]})"
