"""Comparing voxel grids, and mapping one onto another by axis order alone (no resampling).

The mapping itself (:func:`array_onto_grid`) needs numpy only: Slicer imports segmentations with it before, or
without, nibabel (a Slicer that segments on a remote server never installs it). The image-level functions take
nibabel images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import nibabel as nib


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    return index @ affine[:3, :3].T + affine[:3, 3]


def grid_corners(img: nib.Nifti1Image) -> np.ndarray:
    """World (RAS, mm) coordinates of the 8 outer corners of the voxel grid, as an (8, 3) array.

    Two readers that disagree on voxel order still agree on these (as a set) when they see the same
    volume, which makes them the reader-independent check of geometry.
    """
    shape = np.asarray(img.shape[:3], dtype=float)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    return _world(img.affine, corners * shape - 0.5)


def _same(shape_a, affine_a, shape_b, affine_b, atol: float) -> bool:
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(affine_a, affine_b, rtol=0, atol=atol)


def same_grid(img_a: nib.Nifti1Image, img_b: nib.Nifti1Image, atol: float = 1e-4) -> bool:
    """True when both images have the same spatial shape and affine (within ``atol`` mm)."""
    return _same(img_a.shape, img_a.affine, img_b.shape, img_b.affine, atol)


def _axes(affine: np.ndarray) -> list[tuple[int, float]]:
    """(world axis, sign) that each voxel axis runs along most closely; ValueError when two share one."""
    rotation = np.asarray(affine, dtype=float)[:3, :3]
    axes = [(int(np.argmax(np.abs(column))), float(np.sign(column[np.argmax(np.abs(column))])))
            for column in rotation.T]
    if len({axis for axis, _ in axes}) != 3:
        raise ValueError(f"The voxel axes are too oblique to map by axis order:\n{affine}")
    return axes


def array_onto_grid(array: np.ndarray, affine: np.ndarray, ref_affine: np.ndarray, ref_shape,
                    atol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """``array`` (voxel-to-world ``affine``) with its first three axes permuted and flipped onto the reference
    grid (``ref_affine``, ``ref_shape``): the new array and its affine. ValueError if no such mapping exists."""
    affine = np.asarray(affine, dtype=float)
    source, target = _axes(affine), _axes(ref_affine)
    moved, moved_affine = np.asanyarray(array), affine.copy()
    for axis, (world, sign) in enumerate(source):
        if sign != dict(target)[world]:
            moved = np.flip(moved, axis)
            moved_affine[:3, 3] += (array.shape[axis] - 1) * affine[:3, axis]
            moved_affine[:3, axis] = -affine[:3, axis]
    order = [next(axis for axis, (world, _) in enumerate(source) if world == wanted) for wanted, _ in target]
    moved = moved.transpose(order + list(range(3, moved.ndim)))
    moved_affine[:3, :3] = moved_affine[:3, order]
    if not _same(moved.shape, moved_affine, tuple(ref_shape), ref_affine, atol):
        raise ValueError(
            f"The grids differ by more than axis order: shape {moved.shape[:3]} vs {tuple(ref_shape)[:3]}, "
            f"affine\n{moved_affine}\nvs\n{np.asarray(ref_affine)}"
        )
    return moved, moved_affine


def reorient_to_grid(img: nib.Nifti1Image, ref: nib.Nifti1Image, atol: float = 1e-4) -> nib.Nifti1Image:
    """``img`` with its axes permuted/flipped onto ``ref``'s grid; raises if no such mapping exists.

    Used to put a volume read one way onto the grid another reader produced (e.g. our LPS DICOM
    read onto the official LAS conversion) without any resampling.
    """
    if same_grid(img, ref, atol):
        return img
    data, affine = array_onto_grid(np.asanyarray(img.dataobj), img.affine, ref.affine, ref.shape[:3], atol)
    return img.__class__(data, affine, img.header)
