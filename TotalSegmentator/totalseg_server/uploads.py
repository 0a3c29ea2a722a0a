"""Reading an upload: a multipart body whose small text fields come first and whose image is streamed to disk.

The size limit holds while the body is read: a declared ``Content-Length`` over it is refused before a byte is
read, and a body sent in chunks is cut off as soon as what it unpacks to passes the limit; the partial file is
deleted (``totalseg_web.inputs.save_stream``), so nothing of a refused upload is kept. An image part may be sent
gzip-compressed (``Content-Encoding: gzip`` on the part): it is unpacked while it streams, in bounded pieces, so a
small compressed body cannot unpack into a huge block of memory, and the limit counts the unpacked bytes.

Files are named from the client's name reduced to one harmless component (``totalseg_web.inputs.safe_name``),
inside a folder of the job's own: a name such as ``../../etc/passwd`` cannot lead anywhere else. A DICOM zip is
unpacked there (its unpacked size checked first, damaged slices refused at once), as the browser app does.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Optional

from aiohttp import BodyPartReader, web
from totalseg_engine import InvalidInputError
from totalseg_web import inputs

from .errors import ApiError

CHUNK_BYTES = 1 << 20
MAX_FIELD_BYTES = 64 * 1024  # a request's JSON is about 1 kB
MULTIPART_OVERHEAD = 1 << 20  # boundaries, part headers and the text fields, beyond the image itself
SEPARATE_DATA_SUFFIXES = (".mhd", ".nhdr")  # header files whose voxels lie in another file


@dataclass
class Upload:
    """The text fields of a multipart body and where its file part was saved (with the client's name)."""

    fields: dict[str, str] = field(default_factory=dict)
    path: Optional[Path] = None
    name: str = ""


def too_large(max_bytes: int) -> ApiError:
    return ApiError(413, inputs.too_large_message("The upload", max_bytes))


def refuse_declared_size(request: web.Request, max_bytes: int) -> None:
    """Refuse before reading anything when the body says it is over the limit."""
    if request.content_length is not None and request.content_length > max_bytes + MULTIPART_OVERHEAD:
        raise too_large(max_bytes)


async def read_upload(request: web.Request, folder: Path, max_bytes: int, text_fields: tuple[str, ...],
                      file_field: str, on_field: Callable[[str, str], None] = lambda name, value: None) -> Upload:
    """Read a multipart body: each of ``text_fields`` at most once (``on_field`` may refuse one at once, before the
    file is read), and one file part ``file_field`` saved into ``folder``. Unknown or repeated parts are refused."""
    refuse_declared_size(request, max_bytes)
    reader = await _multipart(request)
    upload = Upload()
    while True:
        part = await _next_part(reader)
        if part is None:
            return upload
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "A nested multipart part is not accepted here.")
        name = part.name or ""
        if name in upload.fields or (name == file_field and upload.path is not None):
            raise ApiError(400, f"The upload has the part '{name[:40]}' twice.")
        if name in text_fields:
            upload.fields[name] = await _read_text(part)
            on_field(name, upload.fields[name])
        elif name == file_field:
            upload.name, upload.path = await _save_file(part, folder, max_bytes)
        else:
            raise ApiError(400, f"Unknown part '{name[:40]}' in the upload; expected "
                                f"{', '.join(repr(n) for n in (*text_fields, file_field))}.")


async def _multipart(request: web.Request):
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, f"Send the upload as multipart/form-data, not '{request.content_type[:60]}'.")
    try:
        return await request.multipart()
    except (ValueError, AssertionError, KeyError) as err:
        raise ApiError(400, f"The multipart body cannot be read ({err}).") from err


async def _next_part(reader):
    try:
        return await reader.next()
    except (ValueError, AssertionError, KeyError, RuntimeError) as err:
        raise ApiError(400, f"The multipart body is malformed ({str(err)[:120]}).") from err


async def _read_text(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await _chunk(part):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise ApiError(413, f"The part '{part.name}' is larger than {MAX_FIELD_BYTES // 1024} KiB.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"The part '{part.name}' is not UTF-8 text.") from err


async def _chunk(part: BodyPartReader) -> bytes:
    try:
        return await part.read_chunk(CHUNK_BYTES)
    except (ValueError, AssertionError) as err:
        raise ApiError(400, f"The multipart body is malformed ({str(err)[:120]}).") from err


async def _save_file(part: BodyPartReader, folder: Path, max_bytes: int) -> tuple[str, Path]:
    name = inputs.safe_name(part.filename or "")
    try:
        inputs.check_image_name(name)
    except inputs.UnsupportedInputError as err:
        raise ApiError(400, str(err)) from err
    if name.lower().endswith(SEPARATE_DATA_SUFFIXES):
        raise ApiError(400, f"'{name}' keeps its voxels in another file: upload a .nrrd or .mha file instead.")
    encoding = part.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ApiError(400, f"Content-Encoding '{encoding[:20]}' is not accepted for the image; send gzip or none.")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    try:
        await inputs.save_stream(_unpacked(part, encoding == "gzip"), target, max_bytes)
    except inputs.UploadTooLargeError as err:
        raise too_large(max_bytes) from err
    return name, target


async def _unpacked(part: BodyPartReader, gzipped: bool) -> AsyncIterator[bytes]:
    """The part's bytes, unpacked on the way when gzipped, never more than a few chunks at a time in memory."""
    unzip = zlib.decompressobj(wbits=31) if gzipped else None
    while chunk := await _chunk(part):
        if unzip is None:
            yield chunk
            continue
        try:
            data = unzip.decompress(chunk, CHUNK_BYTES * 4)
            yield data
            while unzip.unconsumed_tail:
                yield unzip.decompress(unzip.unconsumed_tail, CHUNK_BYTES * 4)
        except zlib.error as err:
            raise ApiError(400, f"The image part is not valid gzip data ({err}).") from err
    if unzip is not None:
        yield unzip.flush()
        if not unzip.eof:
            raise ApiError(400, "The image part's gzip data ends early: the upload was cut off.")


async def staged_input(path: Path, folder: Path, max_bytes: int) -> tuple[Path, bool]:
    """What the engine reads: the file itself, or a DICOM zip unpacked (size-checked, damaged slices refused);
    and whether it is DICOM. Slow parts run in a thread."""
    if not path.name.lower().endswith(".zip"):
        return path, False
    try:
        series = await asyncio.to_thread(inputs.unpack_zip, path, folder / "dicom", max_bytes)
        await asyncio.to_thread(inputs.check_dicom_files, series, path.name)
    except inputs.UploadTooLargeError as err:
        raise ApiError(413, str(err)) from err
    except (inputs.UnsupportedInputError, InvalidInputError) as err:
        raise ApiError(400, str(err)) from err
    finally:
        path.unlink(missing_ok=True)
    return series, True


def parse_json_field(name: str, text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(400, f"The part '{name}' is not valid JSON ({err}).") from err
