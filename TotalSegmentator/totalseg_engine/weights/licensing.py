"""The licence key for licensed tasks, kept where the official package keeps it (``config.json``).

Other settings in that file (the official tool's id and counters) are preserved, and the file is replaced
atomically so the official package never reads half of it.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ..errors import DownloadError, LicenseError, TotalSegmentatorError
from . import paths
from .transfer import (
    ACADEMIC_LICENSE_URL,
    LICENSE_CHECK_URL_ENV,
    json_request,
    open_url,
    read_small,
    refusal_text,
    registry_url,
    server_answer,
)


def _read_config() -> dict[str, Any]:
    path = paths.config_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise TotalSegmentatorError(f"Cannot read {path} ({err}); fix or delete the file.") from err
    if not isinstance(data, dict):
        raise TotalSegmentatorError(f"{path} does not hold a JSON object; fix or delete the file.")
    return data


def _write_config(config: dict[str, Any]) -> None:
    """Replace config.json atomically so the official package never reads half a file."""
    from ..imageio import atomic_output  # the project's one atomic writer; imported here to keep start-up light

    with atomic_output(paths.config_file(), overwrite=True) as temporary:
        temporary.write_text(json.dumps(config, indent=4), encoding="utf-8")


def get_license_key() -> Optional[str]:
    """The stored licence key (``license_number`` in config.json), or None."""
    key = _read_config().get("license_number")
    return key.strip() if isinstance(key, str) and key.strip() else None


def require_license_key(task: str, dataset_id: int) -> str:
    """The stored key, or an error telling how to get and store one."""
    key = get_license_key()
    if key is None:
        raise LicenseError(
            f"Task '{task}' (dataset {dataset_id}) needs a licence key, and none is set. A free licence "
            f"for academic use is available at {ACADEMIC_LICENSE_URL} (commercial licences from the same "
            f"site). Store it once with `totalseg_set_license -l KEY`, or pass `--license_number KEY` to "
            f"TotalSegmentator; it is kept in {paths.config_file()}."
        )
    return key


def set_license_key(key: str, validate: bool = True) -> None:
    """Store a licence key for licensed tasks, keeping every other setting of config.json.

    With ``validate`` a new key is first checked with the licence server; a key that is already
    stored is not checked again, so offline runs passing the same key keep working.
    """
    key = key.strip()
    if not key:
        raise LicenseError("The licence key is empty.")
    config = _read_config()
    if validate and config.get("license_number") != key:
        _validate_license_key(key)
    config["license_number"] = key
    _write_config(config)


def _validate_license_key(key: str) -> None:
    request = json_request(registry_url(LICENSE_CHECK_URL_ENV, "license_check_url"), {"license_number": key})
    refusal = f"The licence key {key} is not valid"
    try:
        with open_url(request, refusal) as response:
            body = read_small(response)
    except DownloadError as err:
        raise LicenseError(f"The licence key could not be checked: {err} Connect to the internet, or store "
                           f"the key without checking (`totalseg_set_license -l KEY --skip-validation`).") from err
    if server_answer(body).get("status") != "valid_license":
        raise LicenseError(refusal_text(refusal, body, "unexpected answer from the licence server"))
