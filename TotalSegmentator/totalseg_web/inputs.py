"""What a browser session can open: an uploaded file or one below the data root, checked before it is shown.

An upload is streamed into a folder of its own (``UploadArea``) and stopped as soon as it passes the size limit
(nothing of it is kept); it becomes the session's input only once it has been read and shown, so a refused or
failed upload never touches the input that is open. A DICOM zip is unpacked there, after checking that its
unpacked size also fits the limit (a zip bomb is refused unread); ``zipfile`` itself keeps every member inside
the target folder. Every input is read once by the engine's own reader and validator, so a corrupt or unsupported
file gets the message the command line would give, before anything reaches the scene, with the file named as the
user named it; DICOM slices cut short are found first (GDCM spends most of a second on each before giving up).
"""

from __future__ import annotations

import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Optional

from totalseg_engine import (
    NIFTI_SUFFIXES,
    SITK_SUFFIXES,
    InvalidInputError,
    TotalSegmentatorError,
    dicom_series_files,
    load_image,
    split_suffix,
)

from . import messages

IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, *SITK_SUFFIXES, ".zip")
CHUNK_BYTES = 1 << 20
MAX_NAME_CHARS = 120  # well under a file system's 255 bytes, with room for what the app appends to a name
MAX_SUFFIX_CHARS = 16
DICOM_MARKER = (128, b"DICM")  # DICOM Part 10 files carry it after a 128-byte preamble, whatever their name


class UploadTooLargeError(ValueError):
    """An upload (or a zip's unpacked content) is larger than ``--max-upload-mb``."""


class UnsupportedInputError(ValueError):
    """A file that is not a NIfTI, NRRD, MHA image or a DICOM zip."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def safe_name(name: str) -> str:
    """A browser-given file name reduced to one harmless path component (no folders, no leading dots), short
    enough for any file system, its type suffix kept."""
    base = re.split(r"[\\/]", name if isinstance(name, str) else "")[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")
    if len(cleaned) > MAX_NAME_CHARS:
        stem, suffix = split_suffix(cleaned)
        suffix = suffix if len(suffix) <= MAX_SUFFIX_CHARS else ""
        cleaned = stem[:MAX_NAME_CHARS - len(suffix)].rstrip(" .") + suffix
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


class UploadArea:
    """A session's uploads, each in a numbered folder of its own, so that a new one never touches the open input.

    ``stage()`` gives a new folder for an upload (or a data-root zip to unpack); ``keep()`` makes it the session's
    input once it has been read and shown, removing every other folder (the previous input among them);
    ``discard()`` removes one that was refused. At most one staged folder waits at a time: staging another
    removes those never kept, so a client that uploads without opening cannot fill the disk.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.kept: Optional[Path] = None
        self._count = 0

    def stage(self) -> Path:
        self._remove_all_but(self.kept)
        self._count += 1
        staged = self.folder / str(self._count)
        staged.mkdir()
        return staged

    def find(self, name: object) -> Optional[Path]:
        """The staged folder the page names (it sends back what the upload answered); None for anything else."""
        if not isinstance(name, str) or not name.isdigit():
            return None
        staged = self.folder / name
        return staged if staged.is_dir() else None

    def keep(self, staged: Path) -> None:
        self.kept = staged
        self._remove_all_but(staged)

    def discard(self, staged: Path) -> None:
        if staged != self.kept:
            shutil.rmtree(staged, ignore_errors=True)

    def _remove_all_but(self, kept: Optional[Path]) -> None:
        for folder in self.folder.iterdir():
            if folder != kept:
                shutil.rmtree(folder, ignore_errors=True)


def is_dicom_file(path: Path) -> bool:
    offset, marker = DICOM_MARKER
    try:
        with open(path, "rb") as f:
            return f.read(offset + len(marker))[offset:] == marker
    except OSError:
        return False


def check_dicom_files(folder: Path, name: str) -> None:
    """Refuse a DICOM folder that holds damaged slices, in milliseconds a slice (pydicom) instead of GDCM's second.

    Files without the DICOM marker are left to the engine's reader, which skips what is not a series.
    """
    files = [path for path in sorted(folder.rglob("*")) if path.is_file() and is_dicom_file(path)]
    damaged = [path for path in files if _cut_short(path)]
    if damaged:
        example = damaged[0].relative_to(folder).as_posix()
        raise InvalidInputError(
            f"{len(damaged)} of the {len(files)} DICOM files in '{name}' are damaged (cut short or unreadable), "
            f"for example '{example}'. Export the series again and open the new copy.")


def _cut_short(path: Path) -> bool:
    """Whether pydicom loses elements reading the whole file that it read in the header alone (the file ends
    inside its data), or finds fewer uncompressed pixel bytes than the image needs."""
    import pydicom  # the web extra's; imported here so that the engine never needs it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on a file cut short; the comparison below says so
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            full = pydicom.dcmread(path)
        except Exception:  # pydicom raises many kinds of errors on damaged files
            return True
    if len(full) < len(header):
        return True
    pixels, syntax = full.get("PixelData"), getattr(full.file_meta, "TransferSyntaxUID", None)
    if pixels is None or syntax is None or syntax.is_compressed:
        return False
    needed = (int(full.get("Rows", 0)) * int(full.get("Columns", 0)) * int(full.get("SamplesPerPixel", 1))
              * int(full.get("BitsAllocated", 8)) // 8 * int(full.get("NumberOfFrames", 1) or 1))
    return len(pixels) < needed


@dataclass(frozen=True)
class OpenedInput:
    """An input the engine reads (``source``) and the files the viewer loads to show the same voxels."""

    name: str
    source: Path
    viewer_files: list[str]
    is_dicom: bool


def open_input(path: Path, work_folder: Path, max_bytes: int, name: Optional[str] = None) -> OpenedInput:
    """Check an input with the engine's reader; a DICOM zip is unpacked below ``work_folder`` first.

    Raises the engine's InvalidInputError (with its message, the input named ``name``, no server path) for an
    unreadable or unusable image. Slow (reads the whole image): call it off the event loop.
    """
    name = name or path.name
    source = path
    try:
        if path.is_file() and path.name.lower().endswith(".zip"):
            source = unpack_zip(path, work_folder / (safe_name(path.stem) + "-dicom"), max_bytes)
        elif path.is_file():
            check_image_name(path.name)
        if source.is_dir():
            check_dicom_files(source, name)
        load_image(source)
        files = dicom_series_files(source) if source.is_dir() else [str(source)]
    except TotalSegmentatorError as err:
        raise InvalidInputError(messages.for_user(str(err), {source: name, path: name})) from err
    return OpenedInput(name, source, files, source.is_dir())
