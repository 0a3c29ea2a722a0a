"""Talking to the weights hosts: the public release (GET of a zip) and the licence server (POST with the key).

Only the standard library is used. Failures become :class:`DownloadError` or, for a refused key,
:class:`LicenseError`, each with a message for the user; a transfer that breaks off is reported with its size.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Any, Optional

from .. import __version__, tasks
from ..errors import DownloadError, LicenseError
from ..progress import ProgressCallback, ProgressEvent

CHUNK_SIZE = 1 << 20
"""Bytes read per step of a download (one progress event each)."""

TIMEOUT_S = 60.0
"""Seconds without any network activity before a transfer is abandoned."""

LICENSED_TIMEOUT_S = 300.0
"""The licence server assembles a licensed model's zip before answering; the official client waits 300 s."""

OFFICIAL_VERSION = "2.18.0"
"""TotalSegmentator version announced to the licence server (the weights this engine reproduces)."""

ACADEMIC_LICENSE_URL = "https://backend.totalsegmentator.com/license-academic/"
WEIGHTS_URL_ENV = "TOTALSEG_WEIGHTS_URL"
LICENSE_URL_ENV = "TOTALSEG_LICENSE_URL"
LICENSE_CHECK_URL_ENV = "TOTALSEG_LICENSE_CHECK_URL"


def release_request(spec: tasks.ModelSpec) -> urllib.request.Request:
    """GET of a public release zip; ``TOTALSEG_WEIGHTS_URL`` points it at a mirror."""
    if not spec.release or not spec.folder:
        raise DownloadError(f"Dataset {spec.dataset_id} has no public download; import it instead.")
    pattern = registry_url(WEIGHTS_URL_ENV, "release_url")
    try:
        url = pattern.format(version=spec.release, folder=spec.folder)
    except (KeyError, IndexError, ValueError) as err:
        raise DownloadError(f"{WEIGHTS_URL_ENV} must be a URL pattern using {{version}} and {{folder}}, "
                            f"not '{pattern}'.") from err
    return urllib.request.Request(url, headers={"User-Agent": f"totalseg-engine/{__version__}"})


def licensed_download_name(dataset_id: int) -> Optional[str]:
    """The task name the licence server expects for a dataset (the official client's, from the registry)."""
    return tasks.registry_data()["licensed_download_names"].get(str(dataset_id))


def license_request(spec: tasks.ModelSpec, key: str) -> urllib.request.Request:
    """POST to the licence server, which answers licensed weights with the zip."""
    name = licensed_download_name(spec.dataset_id)
    if name is None:
        raise DownloadError(f"No licensed download is known for dataset {spec.dataset_id}.")
    payload = {"license_number": key, "task": name, "version": OFFICIAL_VERSION}
    return json_request(registry_url(LICENSE_URL_ENV, "license_url"), payload)


def registry_url(env: str, registry_key: str) -> str:
    return os.environ.get(env) or tasks.registry_data()[registry_key]


def json_request(url: str, payload: dict[str, Any]) -> urllib.request.Request:
    return urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST",
                                  headers={"Content-Type": "application/json",
                                           "User-Agent": f"totalseg-engine/{__version__}"})


def open_url(request: urllib.request.Request, refusal: Optional[str] = None, timeout: float = TIMEOUT_S):
    """Open a URL; failures become errors with a message for the user.

    With ``refusal`` (a licence request) an HTTP 4xx answer means the key was refused and raises
    :class:`LicenseError` starting with that text.
    """
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        with err:
            body = read_small(err)
        if refusal and 400 <= err.code < 500:
            raise LicenseError(refusal_text(refusal, body, f"HTTP {err.code}")) from err
        raise DownloadError(f"{request.full_url} answered HTTP {err.code} {err.reason}.") from err
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise DownloadError(f"could not connect to {request.full_url} ({reason}).") from err


def read_small(response) -> bytes:
    try:
        return response.read(65536) or b""
    except (HTTPException, OSError):
        return b""


def server_answer(body: bytes) -> dict[str, Any]:
    """The JSON object of a licence server answer ({} when the body is not one)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def refusal_text(refusal: str, body: bytes, fallback: str) -> str:
    answer = server_answer(body)
    detail = answer.get("message") or answer.get("status") or fallback
    return (f"{refusal} ({detail}). Check the key and store the right one with "
            f"`totalseg_set_license -l KEY`; academic licences are free at {ACADEMIC_LICENSE_URL}.")


def fetch(request: urllib.request.Request, target: Path, progress: ProgressCallback, message: str,
          refusal: Optional[str] = None, timeout: float = TIMEOUT_S) -> None:
    """Stream a response into ``target`` in chunks, checking the size the server announced."""
    with open_url(request, refusal, timeout) as response:
        if refusal and "json" in (response.headers.get("Content-Type") or ""):
            raise LicenseError(refusal_text(refusal, read_small(response), "no weights in the answer"))
        total = _content_length(response)
        received = _copy_stream(response, target, total, progress, message)
    if total is not None and received != total:
        raise DownloadError(f"the transfer from {request.full_url} broke off after {received} of {total} "
                            f"bytes; nothing was installed.")


def _content_length(response) -> Optional[int]:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def _copy_stream(response, target: Path, total: Optional[int], progress: ProgressCallback, message: str) -> int:
    received = 0
    progress(ProgressEvent(stage="download", message=message, fraction=0.0 if total else None))
    try:
        with open(target, "wb") as out:
            while chunk := response.read(CHUNK_SIZE):
                out.write(chunk)
                received += len(chunk)
                if total:
                    progress(ProgressEvent(stage="download", message=message, fraction=min(1.0, received / total)))
    except (HTTPException, OSError) as err:
        raise DownloadError(f"the download broke off after {received} bytes ({err}); nothing was installed.") \
            from err
    return received
