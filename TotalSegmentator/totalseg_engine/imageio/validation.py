"""Whether an image can be segmented: refusing what cannot be, warning on what probably is not meant."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np

from ..errors import InvalidInputError
from .read_errors import InputWarning, PathLike, non_scalar_message, read_errors
from .readers import read_image


def _check_voxel_type(img: nib.Nifti1Image) -> None:
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InvalidInputError(non_scalar_message(str(dtype)))


def _check_shape(shape: tuple[int, ...]) -> None:
    if 0 in shape:
        raise InvalidInputError(
            f"The image is empty: shape {shape} has a zero-length axis. Check that it was exported fully."
        )
    if len(shape) < 3:
        raise InvalidInputError(
            f"Expected a 3-D image, got shape {shape}. TotalSegmentator segments volumes: pass the whole "
            "volume or series, not a single slice."
        )


def _first_volume(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The 3-D volume to segment out of an image with extra axes.

    Trailing axes of length 1 are dropped silently; a 4th axis with several volumes (time series)
    gives its first volume with a warning, as the official does; anything on the 5th axis and beyond
    is NIfTI's place for vector components and is refused as non-scalar.
    """
    extra = img.shape[3:]
    if any(n > 1 for n in extra[1:]):
        raise InvalidInputError(non_scalar_message(f"vector with shape {img.shape}"))
    if extra[0] > 1:
        warnings.warn(
            f"The input has shape {img.shape}; segmenting the first of its {extra[0]} volumes.",
            InputWarning,
            stacklevel=3,
        )
    return img.slicer[(slice(None),) * 3 + (0,) * len(extra)]


def _check_single_slice(shape: tuple[int, ...]) -> None:
    if 1 in shape:
        raise InvalidInputError(
            f"Expected a 3-D image, got a single slice of shape {shape}. TotalSegmentator segments volumes: "
            "pass the whole volume or series."
        )


def _check_affine(img: nib.Nifti1Image) -> None:
    matrix = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise InvalidInputError(
            f"The image geometry is invalid (voxel-to-world matrix\n{matrix}\nis singular or not finite). "
            "Fix the voxel size / orientation in the file header first."
        )


def _check_values(img: nib.Nifti1Image) -> None:
    """Refuse NaN/inf voxels; warn on a constant image.

    A constant image is legal input (the official accepts it) and segments to nothing, so it only
    warns: failing would break batch runs over volumes that are merely blank. Min and max answer
    both questions in one pass without a boolean copy of the volume.
    """
    with read_errors(img.get_filename() or "the image", "image data"):
        data = np.asanyarray(img.dataobj)
    low, high = data.min(), data.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise InvalidInputError(
            f"The image contains {bad} NaN or infinite voxel values. Replace them (e.g. with the background "
            "intensity) before segmenting."
        )
    if low == high:
        warnings.warn(
            f"The image is constant (every voxel is {low}); the segmentation will be empty.",
            InputWarning,
            stacklevel=3,
        )


def validate_image(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Check that an image can be segmented; returns it (its first volume if it is 4-D).

    Raises :class:`InvalidInputError` with what is wrong and what to do. The voxel data is read
    once for the value checks.
    """
    _check_voxel_type(img)
    _check_shape(img.shape)
    if len(img.shape) > 3:
        img = _first_volume(img)
    _check_single_slice(img.shape)
    _check_affine(img)
    _check_values(img)
    return img


def load_image(path: PathLike) -> nib.Nifti1Image:
    """:func:`read_image` followed by :func:`validate_image`: the input as the pipeline needs it."""
    return validate_image(read_image(path))

