"""Comparing voxel grids, and mapping one onto another by axis order alone (no resampling)."""

from __future__ import annotations

import nibabel as nib
import numpy as np


def grid_corners(img: nib.Nifti1Image) -> np.ndarray:
    """World (RAS, mm) coordinates of the 8 outer corners of the voxel grid, as an (8, 3) array.

    Two readers that disagree on voxel order still agree on these (as a set) when they see the same
    volume, which makes them the reader-independent check of geometry.
    """
    shape = np.asarray(img.shape[:3], dtype=float)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    index = corners * shape - 0.5
    return nib.affines.apply_affine(img.affine, index)


def same_grid(img_a: nib.Nifti1Image, img_b: nib.Nifti1Image, atol: float = 1e-4) -> bool:
    """True when both images have the same spatial shape and affine (within ``atol`` mm)."""
    return img_a.shape[:3] == img_b.shape[:3] and np.allclose(img_a.affine, img_b.affine, rtol=0, atol=atol)


def reorient_to_grid(img: nib.Nifti1Image, ref: nib.Nifti1Image, atol: float = 1e-4) -> nib.Nifti1Image:
    """``img`` with its axes permuted/flipped onto ``ref``'s grid; raises if no such mapping exists.

    Used to put a volume read one way onto the grid another reader produced (e.g. our LPS DICOM
    read onto the official LAS conversion) without any resampling.
    """
    current = nib.orientations.io_orientation(img.affine)
    wanted = nib.orientations.io_orientation(ref.affine)
    moved = img.as_reoriented(nib.orientations.ornt_transform(current, wanted))
    if not same_grid(moved, ref, atol):
        raise ValueError(
            f"The grids differ by more than axis order: shape {moved.shape[:3]} vs {ref.shape[:3]}, "
            f"affine\n{moved.affine}\nvs\n{ref.affine}"
        )
    return moved

