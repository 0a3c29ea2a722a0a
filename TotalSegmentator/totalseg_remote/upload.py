"""The body of a job submission: a multipart stream of the request, the formats and the image, never all in memory.

Images stored uncompressed (``.nii``, ``.mha``, a raw ``.nrrd``) are gzip-compressed on the way (fast level: on
a network the bytes saved cost less than they take to send; on loopback little is lost) and sent with
``Content-Encoding: gzip`` on their part, which the server unpacks while it writes; ``.nii.gz``, a gzip-encoded
NRRD and zips are sent as they are. A DICOM folder is zipped first (into a temporary file). The stream checks
``should_cancel`` between chunks, so an upload stops within one chunk of being cancelled.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator, Optional

CHUNK_BYTES = 1 << 20
GZIP_LEVEL = 1
ALREADY_COMPRESSED = (".nii.gz", ".zip", ".gz")
NRRD_HEADER_BYTES = 64 * 1024


class UploadCancelled(Exception):
    """Raised inside the body stream when ``should_cancel`` says so (requests then drops the connection)."""


def compresses(path: Path) -> bool:
    """Whether gzip on the way saves anything: not for compressed files, nor for NRRD already gzip-encoded."""
    name = path.name.lower()
    if name.endswith(ALREADY_COMPRESSED):
        return False
    if name.endswith(".nrrd"):
        with open(path, "rb") as f:
            header = f.read(NRRD_HEADER_BYTES).split(b"\n\n", 1)[0].lower()
        return not re.search(rb"^encoding:\s*(gz|gzip|bz2|bzip2)\s*$", header, re.MULTILINE)
    return True


def unpacked_size(path: Path) -> int:
    """Bytes the server will hold once the upload is unpacked (a zip's content counts unpacked)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as zipped:
            return sum(member.file_size for member in zipped.infolist())
    return path.stat().st_size


@contextlib.contextmanager
def uploadable(path: Path) -> Iterator[Path]:
    """The file to send: the image itself, or a DICOM folder zipped into a temporary file (removed after)."""
    if not path.is_dir():
        yield path
        return
    handle, name = tempfile.mkstemp(prefix=f"{_ascii(path.name)}-", suffix=".zip")
    os.close(handle)
    try:
        with zipfile.ZipFile(name, "w", zipfile.ZIP_DEFLATED, compresslevel=GZIP_LEVEL) as archive:
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                archive.write(file, file.relative_to(path).as_posix())
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def multipart_body(fields: dict[str, object], image: Path, name: str,
                   should_cancel: Callable[[], bool] = lambda: False,
                   on_sent: Optional[Callable[[int], None]] = None) -> tuple[Iterator[bytes], str, bool]:
    """The body as a stream of chunks, its content type, and whether the image is gzipped on the way."""
    boundary = secrets.token_hex(16)
    gzipped = compresses(image)

    def chunks() -> Iterator[bytes]:
        for field, value in fields.items():
            yield (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n'
                   f"Content-Type: application/json\r\n\r\n{json.dumps(value)}\r\n").encode()
        encoding = "Content-Encoding: gzip\r\n" if gzipped else ""
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{_ascii(name)}"\r\n'
               f"Content-Type: application/octet-stream\r\n{encoding}\r\n").encode()
        sent = 0
        for chunk in _file_chunks(image, gzipped):
            if should_cancel():
                raise UploadCancelled()
            sent += len(chunk)
            if on_sent is not None:
                on_sent(sent)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    return chunks(), f"multipart/form-data; boundary={boundary}", gzipped


def _file_chunks(path: Path, gzipped: bool) -> Iterator[bytes]:
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31) if gzipped else None
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            data = packer.compress(chunk) if packer else chunk
            if data:
                yield data
    if packer:
        yield packer.flush()


def _ascii(name: str) -> str:
    """A file name safe inside a quoted header value: ASCII, no quotes, slashes or line breaks."""
    cleaned = re.sub(r'[^A-Za-z0-9._ -]', "_", name.replace("\\", "/").split("/")[-1])
    return cleaned.strip() or "image"
