"""Reading an input image as NIfTI, whatever its format (see the package docstring for the geometry)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import nibabel as nib

from ..errors import InvalidInputError
from .dicom import read_dicom_dir, read_dicom_zip
from .formats import NIFTI_SUFFIXES, SITK_SUFFIXES, SUPPORTED_INPUTS, has_suffix
from .orientation import sitk, sitk_to_nifti
from .read_errors import PathLike, read_errors


def read_nifti(path: Path) -> nib.Nifti1Image:
    with read_errors(path, "NIfTI"):
        return nib.load(path)


def _read_sitk_file(path: Path) -> nib.Nifti1Image:
    with read_errors(path, "an image"):
        return sitk_to_nifti(sitk.ReadImage(str(path)))


def _reader_for(path: Path) -> Callable[[Path], nib.Nifti1Image]:
    """The reader function for a path, chosen by what it is (folder) or its suffix."""
    if path.is_dir():
        return read_dicom_dir
    if has_suffix(path, NIFTI_SUFFIXES):
        return read_nifti
    if has_suffix(path, SITK_SUFFIXES):
        return _read_sitk_file
    if has_suffix(path, (".zip",)):
        return read_dicom_zip
    if has_suffix(path, (".dcm", ".ima")):
        raise InvalidInputError(
            f"{path} is a single DICOM file. Pass the folder holding the whole series (or a .zip of it)."
        )
    raise InvalidInputError(f"Unsupported input format: {path.name}. Supported inputs: {SUPPORTED_INPUTS}.")


def read_image(path: PathLike) -> nib.Nifti1Image:
    """Load an input image as NIfTI (see the module docstring for the geometry of each format).

    NIfTI files are returned as nibabel loads them (lazy, original header and affine). Nothing is
    validated here; call :func:`validate_image` before segmenting.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InvalidInputError(f"Input not found: {path}. Check the path; supported: {SUPPORTED_INPUTS}.")
    return _reader_for(path)(path)
