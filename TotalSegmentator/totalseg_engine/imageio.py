"""Reading, validating and writing images for the engine.

The pipeline works on :class:`nibabel.Nifti1Image` objects: arrays in x, y, z order with a RAS
voxel-to-world affine. NIfTI files are loaded by nibabel untouched, so the outputs can carry the
input header exactly as the official TotalSegmentator's do. Every other format (NRRD, MetaImage,
DICOM) goes through SimpleITK, whose geometry is LPS; :func:`sitk_to_nifti` and
:func:`nifti_to_sitk` are the single place where LPS and RAS meet.

DICOM grid versus the official conversion
-----------------------------------------
The official package converts a DICOM folder with ``dicom2nifti.dicom_series_to_nifti(...,
reorient_nifti=True)`` (``dcm2niix`` only in a legacy path), which hands back the volume in LAS
voxel order. We keep SimpleITK's index order (columns, rows, slices sorted by position), which for
an axial series is LPS. Both grids hold the same voxel centres: for the test series
``example_ct_dicom`` ours is the official ``example_seg_dicom.nii.gz`` grid with the y (row) axis
reversed, and :func:`reorient_to_grid` maps one onto the other exactly (``Testing/test_imageio.py``
pins this). The official reorients every input to the closest canonical (RAS) orientation before
inference and back afterwards, so the row order changes only the voxel order of a DICOM input's
outputs, not what is predicted; map an output onto the official grid with :func:`reorient_to_grid`.

Writers go through :func:`atomic_output`: a result appears complete under its final name or not at
all, and an existing output is only replaced when the caller says so.
"""

from __future__ import annotations

import gzip
import importlib
import os
import secrets
import shutil
import tempfile
import warnings
import xml.etree.ElementTree as ElementTree
import zipfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence, Union

import nibabel as nib
import numpy as np
from scipy import ndimage

from .errors import InvalidInputError, OutputExistsError, TotalSegmentatorError

PathLike = Union[str, os.PathLike]


class _ImportedOnUse:
    """A module imported on its first attribute access: NIfTI runs never pay SimpleITK's import."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str):
        return getattr(importlib.import_module(self._name), attribute)


sitk = _ImportedOnUse("SimpleITK")

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_INPUTS = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM folder or a .zip of one"
)
_COMPOUND_SUFFIXES = (".nii.gz", ".seg.nrrd")

# Diagonal of the matrix that turns LPS coordinates into RAS ones and back (its own inverse).
_LPS_RAS = np.array([-1.0, -1.0, 1.0])

# Label-table header extension of TotalSegmentator's multilabel NIfTI files: a Caret XML document in
# a NIfTI extension with code 0, laid out byte for byte as the official files have it so that tools
# reading those read ours. Colours cycle through a fixed 12-colour palette indexed by label % 12.
_CARET_CODE = 0
_CARET_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <Date><![CDATA[2013-07-14T05:45:09]]></Date>'
    '   <VolumeInformation Index="0">   <LabelTable>\n'
)
_CARET_TAIL = (
    "\n  </LabelTable>  <StudyMetaDataLinkSet>  </StudyMetaDataLinkSet>  <VolumeType><![CDATA[Label]]>"
    "</VolumeType>   </VolumeInformation></CaretExtension>\n              "
)
_CARET_PALETTE = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (255, 128, 0), (255, 0, 128), (128, 255, 128), (0, 128, 255), (128, 128, 128), (185, 170, 155),
)

_NRRD_TYPES = {np.dtype(np.uint8): "unsigned char", np.dtype(np.uint16): "unsigned short"}


class InputWarning(UserWarning):
    """An input that can be segmented but probably not as the user expects (4-D, constant, several series)."""


# --------------------------------------------------------------------------------------------------
# Geometry: SimpleITK (LPS) <-> nibabel (RAS)
# --------------------------------------------------------------------------------------------------


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
    affine[:3, :3] = _LPS_RAS[:, None] * direction * spacing[None, :]
    affine[:3, 3] = _LPS_RAS * origin
    return affine


def _lps_from_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direction, spacing and origin in LPS of a RAS affine (the inverse of :func:`_affine_from_lps`)."""
    matrix = np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = _LPS_RAS[:, None] * matrix / spacing[None, :]
    origin = _LPS_RAS * np.asarray(affine, dtype=float)[:3, 3]
    return direction, spacing, origin


def _non_scalar_message(voxel_type: str) -> str:
    return (
        f"Expected a scalar (grayscale) image, got voxel type {voxel_type}. "
        "Convert RGB, vector or complex images to a single-channel intensity image first."
    )


def _new_nifti(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A fresh NIfTI image with the header the official DICOM conversion produces (mm units).

    nibabel's defaults (sform 'aligned', no qform) plus millimetre units are what dicom2nifti's
    output carries, so headers copied into outputs match the official ones.
    """
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    return img


def sitk_to_nifti(image: sitk.Image) -> nib.Nifti1Image:
    """SimpleITK image as a NIfTI image: voxel order x, y, z = SimpleITK index order, affine in RAS.

    The pixel array is a transposed view of SimpleITK's (z, y, x) copy; 2-D and 4-D images keep
    their dimensionality so :func:`validate_image` can judge them.
    """
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InvalidInputError(_non_scalar_message(image.GetPixelIDTypeAsString()))
    array = sitk.GetArrayFromImage(image).transpose()
    return _new_nifti(array, _affine_from_lps(*_sitk_spatial_geometry(image)))


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


# --------------------------------------------------------------------------------------------------
# Grid comparison
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


@contextmanager
def _read_errors(source: PathLike, what: str) -> Iterator[None]:
    """Turn any library error while reading into an InvalidInputError naming the file."""
    try:
        yield
    except TotalSegmentatorError:
        raise
    except Exception as err:
        raise InvalidInputError(
            f"Could not read {source} as {what}: {err}. Check that it is complete and not corrupt."
        ) from err


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    return path.name.lower().endswith(tuple(suffixes))


def _read_nifti(path: Path) -> nib.Nifti1Image:
    with _read_errors(path, "NIfTI"):
        return nib.load(path)


def _read_sitk_file(path: Path) -> nib.Nifti1Image:
    with _read_errors(path, "an image"):
        return sitk_to_nifti(sitk.ReadImage(str(path)))


def _dicom_series(root: Path) -> list[tuple[str, list[str]]]:
    """Every DICOM series below ``root`` as (SeriesInstanceUID, files sorted by slice position).

    The folder is walked because zips often hold the slices one level down.
    """
    found = []
    for folder, _dirs, _files in os.walk(root):
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder):
            found.append((uid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))))
    return found


def _pick_series(series: list[tuple[str, list[str]]], source: PathLike) -> list[str]:
    """The series with the most slices; several series get a warning, none an error."""
    if not series:
        raise InvalidInputError(
            f"No DICOM series found in {source}. Pass a folder (or .zip) holding the slices of one series."
        )
    uid, files = max(series, key=lambda item: len(item[1]))
    if len(series) > 1:
        warnings.warn(
            f"{source} holds {len(series)} DICOM series; using the one with the most slices "
            f"({len(files)} files, SeriesInstanceUID '{uid}'). Pass a folder with only the series you want.",
            InputWarning,
            stacklevel=4,
        )
    return files


def dicom_series_files(folder: PathLike) -> list[str]:
    """The files of the series the engine segments in a DICOM folder (the one with most slices), in slice order."""
    return _pick_series(_dicom_series(Path(folder)), folder)


def _read_dicom_dir(folder: Path, source: Optional[PathLike] = None) -> nib.Nifti1Image:
    """Read the largest series below ``folder``; ``source`` is what messages call it (the zip)."""
    source = folder if source is None else source
    with _read_errors(source, "a DICOM series"):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(_pick_series(_dicom_series(folder), source))
        return sitk_to_nifti(reader.Execute())


def is_dicom_source(path: PathLike) -> bool:
    """True for what is read as a DICOM series: a folder, or a ``.zip`` of one."""
    path = Path(path).expanduser()
    return path.is_dir() or _has_suffix(path, (".zip",))


@contextmanager
def dicom_series_folder(path: PathLike) -> Iterator[Path]:
    """The folder holding a DICOM input's files: the folder itself, or the zip extracted for the block.

    DICOM outputs reference the source instances, so their writers need the files and not only the
    volume; the extracted copy is removed whatever happens.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="totalseg_dicom_") as tmp:
        with _read_errors(path, "a zip of DICOM files"), zipfile.ZipFile(path) as archive:
            archive.extractall(tmp)
        yield Path(tmp)


def _read_dicom_zip(path: Path) -> nib.Nifti1Image:
    """Extract to a temporary folder that is removed whatever happens, then read it as a DICOM folder."""
    with dicom_series_folder(path) as folder:
        return _read_dicom_dir(folder, source=path)


def _reader_for(path: Path) -> Callable[[Path], nib.Nifti1Image]:
    """The reader function for a path, chosen by what it is (folder) or its suffix."""
    if path.is_dir():
        return _read_dicom_dir
    if _has_suffix(path, NIFTI_SUFFIXES):
        return _read_nifti
    if _has_suffix(path, SITK_SUFFIXES):
        return _read_sitk_file
    if _has_suffix(path, (".zip",)):
        return _read_dicom_zip
    if _has_suffix(path, (".dcm", ".ima")):
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


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _check_voxel_type(img: nib.Nifti1Image) -> None:
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InvalidInputError(_non_scalar_message(str(dtype)))


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
        raise InvalidInputError(_non_scalar_message(f"vector with shape {img.shape}"))
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
    with _read_errors(img.get_filename() or "the image", "image data"):
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


# --------------------------------------------------------------------------------------------------
# Atomic output
# --------------------------------------------------------------------------------------------------


def split_suffix(name: str) -> tuple[str, str]:
    """``(stem, suffix)`` keeping compound suffixes such as ``.nii.gz`` whole, so writers pick the format."""
    for compound in _COMPOUND_SUFFIXES:
        if name.lower().endswith(compound) and len(name) > len(compound):
            return name[: -len(compound)], name[-len(compound):]
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix


def _temp_sibling(target: Path, directory: bool) -> Path:
    """A fresh hidden name next to ``target`` (same file system, so the final rename is atomic)."""
    stem, suffix = (target.name, "") if directory else split_suffix(target.name)
    return target.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{suffix}")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _refuse_existing(target: Path, overwrite: bool, directory: bool) -> None:
    """Raise unless writing ``target`` replaces nothing or replacing was allowed.

    An existing empty folder is not an overwrite for a directory output: nothing in it is lost.
    A kind mismatch (a folder where a file goes, or the reverse) is refused even with overwrite.
    """
    if not _exists(target):
        return
    if target.is_dir() != directory:
        kind = "a folder" if target.is_dir() else "a file"
        raise OutputExistsError(f"{target} exists and is {kind}; choose another output path.")
    if not overwrite and not (directory and not any(target.iterdir())):
        raise OutputExistsError(
            f"{target} already exists. Pass overwrite=True (--overwrite on the command line) to replace it."
        )


def check_output_path(path: PathLike, overwrite: bool = False, directory: Optional[bool] = None) -> None:
    """Refuse an occupied output before hours of computing rather than after.

    ``directory`` None judges an existing target by its own kind. :func:`atomic_output` checks
    again when writing, since the path may be taken in the meantime.
    """
    target = Path(path).expanduser()
    _refuse_existing(target, overwrite, target.is_dir() if directory is None else directory)


def _make_parents(folder: Path) -> list[Path]:
    """Create missing parent folders; return those created (deepest last) so a failure can remove them."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif _exists(path):
        path.unlink()


def _merge_into(source: Path, target: Path) -> None:
    """Move every entry of ``source`` into the existing folder ``target``, replacing same-named ones.

    Replacing a whole existing folder could delete files the caller never wrote (an output path
    pointing at a home folder), so a directory output only ever replaces the files it writes.
    """
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            _merge_into(entry, destination)
        else:
            os.replace(entry, destination)
    shutil.rmtree(source, ignore_errors=True)


def _move_into_place(temp: Path, target: Path) -> None:
    if temp.is_dir() and target.is_dir():
        _merge_into(temp, target)
    else:
        os.replace(temp, target)


@contextmanager
def atomic_output(path: PathLike, overwrite: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; move it into place only on success.

    The temporary keeps the target's suffix (``.nii.gz``, ``.seg.nrrd``) so writers choosing the
    format by name behave as for the target. For ``directory=True`` it is an existing empty folder
    that is renamed into place (merged file by file into an existing target folder). On any exception
    the temporary and any parent folders created for it are removed, so a failed write leaves
    nothing behind. An existing target raises :class:`OutputExistsError` unless ``overwrite``.
    """
    target = Path(path).expanduser()
    _refuse_existing(target, overwrite, directory)
    created = _make_parents(target.parent)
    temp = _temp_sibling(target, directory)
    try:
        if directory:
            temp.mkdir()
        yield temp
        _refuse_existing(target, overwrite, directory)
        _move_into_place(temp, target)
    except BaseException:
        _remove(temp)
        for folder in reversed(created):
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        raise


# --------------------------------------------------------------------------------------------------
# Label data shared by the writers
# --------------------------------------------------------------------------------------------------


def _label_array(data: np.ndarray, ref_img: nib.Nifti1Image, max_label: int) -> np.ndarray:
    """``data`` as the smallest unsigned integer array holding labels up to ``max_label``, on ref's grid."""
    array = np.asanyarray(data)
    if array.shape != tuple(ref_img.shape[:3]):
        raise ValueError(f"Label array shape {array.shape} does not match the reference {ref_img.shape[:3]}.")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"Label array has non-numeric type {array.dtype}.")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ValueError("Label array holds non-integer values.")
    if array.size and (array.min() < 0 or array.max() > max_label):
        raise ValueError(f"Label values must lie in 0..{max_label}, got {array.min()}..{array.max()}.")
    dtype = np.uint8 if max_label <= 255 else np.uint16
    return array.astype(dtype, copy=False)


def _mask_image(mask: np.ndarray, ref_img: nib.Nifti1Image) -> nib.Nifti1Image:
    """A uint8 image on ref's grid with ref's header (qform/sform, units): the official output header.

    Header extensions of the reference are dropped: they describe the input, not the mask, and a
    label table must be the first extension for the official reader to find it.
    """
    header = nib.Nifti1Header.from_header(ref_img.header)
    header.extensions.clear()
    header.set_data_dtype(np.uint8)
    return nib.Nifti1Image(mask, ref_img.affine, header)


def _check_nifti_path(path: PathLike) -> None:
    if not _has_suffix(Path(path), NIFTI_SUFFIXES):
        raise ValueError(f"A NIfTI output needs a .nii or .nii.gz name, got {path}.")


def _check_file_name(name: str) -> None:
    """Refuse class names that would leave the output folder or be no file name at all."""
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"Class name {name!r} cannot be used as a file name.")


def _check_unique(values: Sequence, what: str) -> None:
    duplicates = sorted((v for v, n in Counter(values).items() if n > 1), key=str)
    if duplicates:
        raise ValueError(f"Duplicate {what}: {', '.join(map(str, duplicates))}.")


# --------------------------------------------------------------------------------------------------
# Multilabel NIfTI with the official label table
# --------------------------------------------------------------------------------------------------


def _caret_label(label: int, name: str) -> str:
    red, green, blue = (channel / 255 for channel in _CARET_PALETTE[label % len(_CARET_PALETTE)])
    cdata = name.replace("]]>", "]]]]><![CDATA[>")
    colour = f'Red="{red}" Green="{green}" Blue="{blue}" Alpha="1"'
    return f'<Label Key="{label}" {colour}><![CDATA[{cdata}]]></Label>\n'


def label_table_extension(label_map: Mapping[int, str]) -> nib.nifti1.Nifti1Extension:
    """The NIfTI header extension holding ``label_map`` in TotalSegmentator's format (order kept)."""
    body = "".join(_caret_label(int(label), name) for label, name in label_map.items())
    return nib.nifti1.Nifti1Extension(_CARET_CODE, (_CARET_HEAD + body + _CARET_TAIL).encode("utf-8"))


def _parse_label_table(content: bytes) -> dict[int, str]:
    root = ElementTree.fromstring(content.rstrip(b"\x00").strip())
    return {int(label.get("Key")): label.text or "" for label in root.iter("Label")}


def read_label_map(source: Union[PathLike, nib.Nifti1Image]) -> dict[int, str]:
    """Label id -> class name from a multilabel NIfTI's label-table extension ({} when it has none).

    Reads files written by the official TotalSegmentator and by :func:`write_multilabel_nifti`.
    """
    img = source if isinstance(source, nib.Nifti1Image) else _read_nifti(Path(source))
    for extension in img.header.extensions:
        content = extension.get_content()
        if isinstance(content, bytes) and b"<CaretExtension" in content:
            with _read_errors(img.get_filename() or "the image", "a label table"):
                return _parse_label_table(content)
    return {}


def write_multilabel_nifti(
    data: np.ndarray,
    ref_img: nib.Nifti1Image,
    label_map: Mapping[int, str],
    path: PathLike,
    overwrite: bool = False,
) -> Path:
    """Write a uint8 label volume with ref's header and the label table, like the official output.

    Given the official's inputs the file is byte-identical to the official's (pinned by a test).
    """
    _check_nifti_path(path)
    img = _mask_image(_label_array(data, ref_img, 255), ref_img)
    img.header.extensions.append(label_table_extension(label_map))
    with atomic_output(path, overwrite) as temp:
        nib.save(img, temp)
    return Path(path)


def write_class_files(
    data: np.ndarray,
    ref_img: nib.Nifti1Image,
    label_map: Mapping[int, str],
    out_dir: PathLike,
    overwrite: bool = False,
) -> Path:
    """Write ``<name>.nii.gz`` (uint8 0/1, ref's header) for every class, empty ones included.

    The folder appears complete or not at all (see :func:`atomic_output` for existing folders).
    """
    names = list(label_map.values())
    for name in names:
        _check_file_name(name)
    _check_unique([name.lower() for name in names], "class names (file names ignore case on some systems)")
    labels = _label_array(data, ref_img, 255)
    with atomic_output(out_dir, overwrite, directory=True) as temp:
        for label, name in label_map.items():
            mask = (labels == label).astype(np.uint8)
            nib.save(_mask_image(mask, ref_img), temp / f"{name}.nii.gz")
    return Path(out_dir)


# --------------------------------------------------------------------------------------------------
# Slicer segmentation (.seg.nrrd)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a Slicer segmentation: its label value, name, colour (RGB 0..1) and terminology.

    ``terminology`` is a Slicer TerminologyEntry string (``context~category~type~...``) or None.
    """

    label: int
    name: str
    color: tuple[float, float, float]
    terminology: Optional[str] = None

    def __post_init__(self) -> None:
        if not 0 < self.label <= 65535:
            raise ValueError(f"Segment '{self.name}': label {self.label} is not in 1..65535.")
        if len(self.color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in self.color):
            raise ValueError(f"Segment '{self.name}': colour {self.color} is not three values in 0..1.")
        text = self.name + (self.terminology or "")
        if not self.name or "\n" in text or "\r" in text or "|" in (self.terminology or ""):
            raise ValueError(f"Segment {self.name!r}: name or terminology cannot be stored in a NRRD header.")


def _extents(labels: np.ndarray, max_label: int) -> list[str]:
    """Slicer extents ('imin imax jmin jmax kmin kmax', '0 -1 ...' when empty) of labels 1..max_label.

    One pass over the volume for all labels rather than one per label.
    """
    boxes = ndimage.find_objects(labels, max_label=max_label)
    return [
        "0 -1 0 -1 0 -1" if box is None else " ".join(f"{s.start} {s.stop - 1}" for s in box)
        for box in boxes
    ]


def _segment_fields(index: int, segment: SegmentInfo, extent: str) -> dict[str, str]:
    tags = f"TerminologyEntry:{segment.terminology}|" if segment.terminology else ""
    fields = {
        "ID": segment.name,
        "Name": segment.name,
        "NameAutoGenerated": "0",
        "Color": " ".join(repr(float(c)) for c in segment.color),
        "ColorAutoGenerated": "0",
        "LabelValue": str(segment.label),
        "Layer": "0",
        "Extent": extent,
        "Tags": tags,
    }
    return {f"Segment{index}_{key}": value for key, value in fields.items()}


def seg_nrrd_fields(labels: np.ndarray, segments: Sequence[SegmentInfo]) -> dict[str, str]:
    """The key/value header fields of a one-layer Slicer labelmap segmentation."""
    fields = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    extents = _extents(labels, max(s.label for s in segments)) if segments else []
    for index, segment in enumerate(segments):
        fields.update(_segment_fields(index, segment, extents[segment.label - 1]))
    return fields


def _nrrd_vector(values: np.ndarray) -> str:
    """A NRRD vector with each double written as its shortest exact decimal (repr round-trips)."""
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def _nrrd_header(labels: np.ndarray, affine: np.ndarray, fields: Mapping[str, str]) -> bytes:
    """NRRD header of an x, y, z label array on a RAS affine, its geometry written in LPS."""
    lps = _LPS_RAS[:, None] * np.asarray(affine, dtype=float)[:3, :]
    lines = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        f"type: {_NRRD_TYPES[labels.dtype]}",
        "dimension: 3",
        "space: left-posterior-superior",
        "sizes: " + " ".join(str(n) for n in labels.shape),
        "space directions: " + " ".join(_nrrd_vector(lps[:, axis]) for axis in range(3)),
        "kinds: domain domain domain",
        "endian: little",
        "encoding: gzip",
        "space origin: " + _nrrd_vector(lps[:, 3]),
    ]
    lines += [f"{key}:={value}" for key, value in fields.items()]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _write_nrrd(path: Path, labels: np.ndarray, affine: np.ndarray, fields: Mapping[str, str]) -> None:
    """Header, then the voxels gzip-compressed with x fastest (NRRD's order), little-endian.

    Written directly rather than through SimpleITK: ITK's writer rebuilds 'space directions' from a
    normalised direction and the spacing, which can move oblique geometry by an ulp; here the
    reference affine is written exactly. mtime=0 keeps the output reproducible.
    """
    voxels = labels.astype(labels.dtype.newbyteorder("<"), copy=False).tobytes(order="F")
    with open(path, "wb") as stream:
        stream.write(_nrrd_header(labels, affine, fields))
        with gzip.GzipFile(fileobj=stream, mode="wb", mtime=0) as packed:
            packed.write(voxels)


def write_seg_nrrd(
    data: np.ndarray,
    ref_img: nib.Nifti1Image,
    segments: Sequence[SegmentInfo],
    path: PathLike,
    overwrite: bool = False,
) -> Path:
    """Write a Slicer ``.seg.nrrd`` (labelmap, one layer) on ref's grid, geometry in LPS.

    Voxels are uint8, or uint16 when a segment's label exceeds 255. Segments absent from ``data``
    are still listed (extent ``0 -1 0 -1 0 -1``), so the segmentation shows every requested class.
    """
    if not _has_suffix(Path(path), (".nrrd",)):
        raise ValueError(f"A Slicer segmentation needs a .seg.nrrd name, got {path}.")
    _check_unique([s.label for s in segments], "segment labels")
    _check_unique([s.name for s in segments], "segment names")
    labels = _label_array(data, ref_img, max([255] + [s.label for s in segments]))
    fields = seg_nrrd_fields(labels, segments)
    with atomic_output(path, overwrite) as temp:
        _write_nrrd(temp, labels, ref_img.affine, fields)
    return Path(path)
