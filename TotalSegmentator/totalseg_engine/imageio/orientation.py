"""The single place where SimpleITK's LPS geometry and nibabel's RAS affines meet.

nibabel is imported where a NIfTI image is made: :func:`sitk_to_array` serves Slicer without it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidInputError
from .read_errors import non_scalar_message

if TYPE_CHECKING:
    import nibabel as nib


class _ImportedOnUse:
    """A module imported on its first attribute access: NIfTI runs never pay SimpleITK's import."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str):
        return getattr(importlib.import_module(self._name), attribute)


sitk = _ImportedOnUse("SimpleITK")


# Diagonal of the matrix that turns LPS coordinates into RAS ones and back (its own inverse).
LPS_RAS = np.array([-1.0, -1.0, 1.0])


def _sitk_spatial_geometry(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direction (3x3), spacing and origin of the first three axes, padding 2-D images with a unit axis.

    Extra axes (time of a 4-D image) carry no world geometry a NIfTI affine could express.
    """
    dim = image.GetDimension()
    n = min(dim, 3)
    direction, spacing, origin = np.eye(3), np.ones(3), np.zeros(3)
    direction[:n, :n] = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)[:n, :n]
    spacing[:n] = image.GetSpacing()[:n]
    origin[:n] = image.GetOrigin()[:n]
    return direction, spacing, origin


def _affine_from_lps(direction: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """RAS affine of an LPS geometry: flip the first two world axes of direction and origin."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_RAS[:, None] * direction * spacing[None, :]
    affine[:3, 3] = LPS_RAS * origin
    return affine


def _lps_from_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direction, spacing and origin in LPS of a RAS affine (the inverse of :func:`_affine_from_lps`)."""
    matrix = np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = LPS_RAS[:, None] * matrix / spacing[None, :]
    origin = LPS_RAS * np.asarray(affine, dtype=float)[:3, 3]
    return direction, spacing, origin


def _new_nifti(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A fresh NIfTI image with the header the official DICOM conversion produces (mm units).

    nibabel's defaults (sform 'aligned', no qform) plus millimetre units are what dicom2nifti's
    output carries, so headers copied into outputs match the official ones.
    """
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    return img


def sitk_to_array(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """A SimpleITK image as an array in voxel order x, y, z (SimpleITK's index order) and its RAS affine.

    The array is a transposed view of SimpleITK's (z, y, x) copy; 2-D and 4-D images keep their dimensionality.
    """
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InvalidInputError(non_scalar_message(image.GetPixelIDTypeAsString()))
    return sitk.GetArrayFromImage(image).transpose(), _affine_from_lps(*_sitk_spatial_geometry(image))


def sitk_to_nifti(image: sitk.Image) -> nib.Nifti1Image:
    """SimpleITK image as a NIfTI image (see :func:`sitk_to_array`), so :func:`validate_image` can judge it."""
    return _new_nifti(*sitk_to_array(image))


def _sitk_array(array: np.ndarray) -> np.ndarray:
    """The array in a pixel type SimpleITK supports (no bool, no float16)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def _array_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A 3-D x, y, z array on a RAS affine as a SimpleITK image on the same grid."""
    if array.ndim != 3:
        raise ValueError(f"Expected a 3-D array, got shape {array.shape}.")
    image = sitk.GetImageFromArray(np.ascontiguousarray(_sitk_array(array).transpose()), isVector=False)
    direction, spacing, origin = _lps_from_affine(affine)
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(origin.tolist())
    return image


def nifti_to_sitk(img: nib.Nifti1Image) -> sitk.Image:
    """A 3-D NIfTI image as a SimpleITK image on the same voxels (LPS geometry); inverse of sitk_to_nifti."""
    return _array_to_sitk(np.asanyarray(img.dataobj), img.affine)

