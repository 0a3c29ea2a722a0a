"""DICOM inputs: finding the series in a folder or zip, reading it, and its Modality."""

from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import nibabel as nib

from ..errors import InvalidInputError
from .formats import has_suffix
from .orientation import sitk, sitk_to_nifti
from .read_errors import InputWarning, PathLike, read_errors


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


def read_dicom_dir(folder: Path, source: Optional[PathLike] = None) -> nib.Nifti1Image:
    """Read the largest series below ``folder``; ``source`` is what messages call it (the zip)."""
    source = folder if source is None else source
    with read_errors(source, "a DICOM series"):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(_pick_series(_dicom_series(folder), source))
        return sitk_to_nifti(reader.Execute())


def is_dicom_source(path: PathLike) -> bool:
    """True for what is read as a DICOM series: a folder, or a ``.zip`` of one."""
    path = Path(path).expanduser()
    return path.is_dir() or has_suffix(path, (".zip",))


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
        with read_errors(path, "a zip of DICOM files"), zipfile.ZipFile(path) as archive:
            archive.extractall(tmp)
        yield Path(tmp)


def read_dicom_zip(path: Path) -> nib.Nifti1Image:
    """Extract to a temporary folder that is removed whatever happens, then read it as a DICOM folder."""
    with dicom_series_folder(path) as folder:
        return read_dicom_dir(folder, source=path)




def dicom_modality(source: PathLike) -> Optional[str]:
    """The Modality tag of a DICOM input (folder or zip), read from its first readable file; else None."""
    source = Path(source).expanduser()
    if not source.exists() or not is_dicom_source(source):
        return None
    try:
        if source.is_dir():
            return next(filter(None, map(_file_modality, sorted(p for p in source.rglob("*") if p.is_file()))), None)
        with zipfile.ZipFile(source) as archive, tempfile.TemporaryDirectory() as tmp:
            for name in (n for n in archive.namelist() if not n.endswith("/")):
                modality = _file_modality(Path(archive.extract(name, tmp)))
                if modality:
                    return modality
    except (OSError, RuntimeError, zipfile.BadZipFile):
        return None
    return None


def _file_modality(path: Path) -> Optional[str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader.GetMetaData("0008|0060").strip().upper() if reader.HasMetaDataKey("0008|0060") else None
