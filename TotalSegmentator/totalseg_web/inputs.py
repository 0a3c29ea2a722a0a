"""What a browser session can open: an uploaded file or one below the data root, checked before it is shown.

An upload is streamed to the session's folder and stopped as soon as it passes the size limit (nothing of it
is kept). A DICOM zip is unpacked there, after checking that its unpacked size also fits the limit (a zip bomb
is refused unread); ``zipfile`` itself keeps every member inside the target folder. Every input is read once
by the engine's own reader and validator, so a corrupt or unsupported file gets the message the command line
would give, before anything reaches the scene.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Optional

from totalseg_engine import NIFTI_SUFFIXES, SITK_SUFFIXES, dicom_series_files, load_image

IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, *SITK_SUFFIXES, ".zip")
CHUNK_BYTES = 1 << 20


class UploadTooLargeError(ValueError):
    """An upload (or a zip's unpacked content) is larger than ``--max-upload-mb``."""


class UnsupportedInputError(ValueError):
    """A file that is not a NIfTI, NRRD, MHA image or a DICOM zip."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def safe_name(name: str) -> str:
    """A browser-given file name reduced to one harmless path component (no folders, no leading dots)."""
    base = re.split(r"[\\/]", name or "")[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")
    return cleaned or "upload"


def check_image_name(name: str) -> None:
    if not is_image_name(name):
        raise UnsupportedInputError(
            f"'{name}' is not an image this app reads. Upload a NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage "
            "(.mha, .mhd) file, or a .zip of one DICOM series.")


def too_large_message(what: str, max_bytes: int) -> str:
    return (f"{what} is larger than this server's limit of {max_bytes / 2**20:.0f} MB (--max-upload-mb). "
            "Ask the administrator to raise it, or open the file from the server's data folder.")


async def save_stream(chunks: AsyncIterator[bytes], target: Path, max_bytes: int) -> int:
    """Write ``chunks`` to ``target``; past ``max_bytes`` the partial file is deleted and the upload refused."""
    written = 0
    try:
        with open(target, "wb") as out:
            async for chunk in chunks:
                written += len(chunk)
                if written > max_bytes:
                    raise UploadTooLargeError(too_large_message("The upload", max_bytes))
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return written


def unpack_zip(archive: Path, folder: Path, max_bytes: int) -> Path:
    """Unpack a DICOM zip into ``folder``; refuse it unread when its content is over ``max_bytes``."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            size = sum(member.file_size for member in zipped.infolist())
            if size > max_bytes:
                raise UploadTooLargeError(
                    f"'{archive.name}' unpacks to {size / 2**20:.0f} MB, over this server's limit of "
                    f"{max_bytes / 2**20:.0f} MB (--max-upload-mb).")
            zipped.extractall(folder)
    except zipfile.BadZipFile as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise UnsupportedInputError(f"'{archive.name}' is not a readable zip file ({err}).") from err
    return folder


@dataclass(frozen=True)
class OpenedInput:
    """An input the engine reads (``source``) and the files the viewer loads to show the same voxels."""

    name: str
    source: Path
    viewer_files: list[str]
    is_dicom: bool


def open_input(path: Path, work_folder: Path, max_bytes: int, name: Optional[str] = None) -> OpenedInput:
    """Check an input with the engine's reader; a DICOM zip is unpacked below ``work_folder`` first.

    Raises the engine's InvalidInputError (with its message) for an unreadable or unusable image.
    Slow (reads the whole image): call it off the event loop.
    """
    name = name or path.name
    if path.is_file() and path.name.lower().endswith(".zip"):
        path = unpack_zip(path, work_folder / (safe_name(path.stem) + "-dicom"), max_bytes)
    elif path.is_file():
        check_image_name(path.name)
    load_image(path)
    if path.is_dir():
        return OpenedInput(name, path, dicom_series_files(path), True)
    return OpenedInput(name, path, [str(path)], False)
