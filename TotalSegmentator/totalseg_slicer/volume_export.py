"""Write a scalar volume node to a file for the engine, with the voxels exactly where Slicer shows them.

Writing goes through MRML's own ``vtkMRMLVolumeArchetypeStorageNode`` (Slicer's ITK writers), so the file
is what Slicer's "Save" would produce: voxel type and values unchanged, geometry (IJK to RAS: origin,
spacing, oblique directions) converted to the file's LPS convention by the same code Slicer uses. NRRD keeps
the geometry to double precision; NIfTI headers hold the affine in float32 (about 1e-5 mm at 300 mm from the
origin), so NRRD is the format to hand the engine when exactness matters.

A linear parent transform is hardened into the file's geometry (the node itself is left as it is): the
model must see the anatomy oriented as the user sees it. A non-linear transform, or a linear one that
shears the voxel grid, cannot be written as an image header without resampling, so it is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import slicer
import vtk
from totalseg_engine import InvalidInputError, atomic_output

PathLike = Union[str, os.PathLike]

SUFFIXES = (".nrrd", ".nii.gz", ".nii")
"""File types written; NRRD first because only it keeps the geometry exactly."""

_ORTHOGONALITY_TOLERANCE = 1e-6


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a 4x4 float64 numpy array (a copy)."""
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)], dtype=float)


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 array as a new vtkMatrix4x4."""
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(array[row][col]))
    return matrix


def ijk_to_ras(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The node's own voxel-to-RAS matrix (parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def to_world(node: slicer.vtkMRMLTransformableNode) -> np.ndarray:
    """Matrix from the node's local coordinates to world: its parent transforms, which must be linear.

    Raises InvalidInputError for a non-linear (warping) transform, which no image header can express.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InvalidInputError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}'. Harden the transform "
            "(Data module: right-click the volume, 'Harden transform') or remove it, then try again."
        )
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return matrix_to_array(matrix)


def ijk_to_world(volume_node: slicer.vtkMRMLVolumeNode,
                 transform_source: Optional[slicer.vtkMRMLTransformableNode] = None) -> np.ndarray:
    """Voxel-to-world matrix: the node's IJK to RAS under the parent transforms of ``transform_source``.

    ``transform_source`` defaults to the volume itself; a sequence frame's data node has no parent
    transform of its own, so pass the proxy node that the browser shows it through.
    """
    return to_world(transform_source or volume_node) @ ijk_to_ras(volume_node)


def check_scalar_volume(volume_node: slicer.vtkMRMLNode) -> None:
    """Refuse anything but a single-component scalar volume with voxels, saying what to do instead."""
    name = volume_node.GetName() if volume_node is not None else None
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        kind = volume_node.GetClassName() if volume_node is not None else "nothing"
        raise InvalidInputError(f"Expected a scalar volume node, got {kind}.")
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise InvalidInputError(f"Volume '{name}' has no voxels.")
    components = image.GetNumberOfScalarComponents()
    if components != 1 or volume_node.IsA("vtkMRMLTensorVolumeNode") or volume_node.IsA(
            "vtkMRMLDiffusionWeightedVolumeNode"):
        raise InvalidInputError(
            f"Volume '{name}' is a {volume_node.GetClassName()} with {components} components per voxel "
            "(vector, RGB or diffusion data). TotalSegmentator needs a single-channel grayscale volume: convert "
            "it first (e.g. with the 'Vector to Scalar Volume' module)."
        )


def _check_grid(matrix: np.ndarray, name: str) -> None:
    """Refuse a voxel grid whose axes are not perpendicular (a shearing or anisotropically scaling transform)."""
    axes = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
    if not np.allclose(axes.T @ axes, np.eye(3), rtol=0, atol=_ORTHOGONALITY_TOLERANCE):
        raise InvalidInputError(
            f"The transform of '{name}' shears its voxel grid, which an image file cannot store. Harden the "
            "transform (Data module: right-click the volume, 'Harden transform') to resample it, then try again."
        )


def _check_suffix(path: Path) -> None:
    if not path.name.lower().endswith(SUFFIXES):
        raise ValueError(f"Volumes are exported as {', '.join(SUFFIXES)}; got {path}.")


def _placed_copy(volume_node: slicer.vtkMRMLScalarVolumeNode, matrix: np.ndarray) -> slicer.vtkMRMLScalarVolumeNode:
    """A scene-less volume node sharing the voxels (no copy) but placed by ``matrix``."""
    copy = slicer.vtkMRMLScalarVolumeNode()
    copy.SetName(volume_node.GetName())
    copy.SetAndObserveImageData(volume_node.GetImageData())
    copy.SetIJKToRASMatrix(array_to_matrix(matrix))
    return copy


def _write(volume_node: slicer.vtkMRMLScalarVolumeNode, path: Path, compress: bool) -> None:
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(int(compress))
    if not storage.WriteData(volume_node):
        details = storage.GetUserMessages().GetAllMessagesAsString().strip()
        raise OSError(f"Could not write volume '{volume_node.GetName()}' to {path}. {details}".strip())


def export_volume(volume_node: slicer.vtkMRMLScalarVolumeNode, path: PathLike, overwrite: bool = False,
                  compress: bool = True,
                  transform_source: Optional[slicer.vtkMRMLTransformableNode] = None) -> Path:
    """Write ``volume_node`` to ``path`` (.nrrd, .nii.gz or .nii) with its world geometry; return the path.

    The file appears complete or not at all (written beside it, then renamed). ``compress`` applies to
    NRRD (gzip); leaving it off makes large temporary exports much faster. See the module docstring for
    transforms and ``ijk_to_world`` for ``transform_source``.
    """
    path = Path(path)
    _check_suffix(path)
    check_scalar_volume(volume_node)
    matrix = ijk_to_world(volume_node, transform_source)
    _check_grid(matrix, volume_node.GetName())
    with atomic_output(path, overwrite) as temp:
        _write(_placed_copy(volume_node, matrix), temp, compress)
    return path
