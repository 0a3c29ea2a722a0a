"""Model weights: find them in TotalSegmentator's own cache, download, import, and the licence key.

The cache layout is the official one, so an existing ``~/.totalsegmentator`` is used as it is::

    <weights_dir>/DatasetXXX_name/Trainer__Plans__configuration/
        plans.json, dataset.json, fold_N/checkpoint_final.pth

Downloads and imports are staged in a temporary folder inside the weights folder (same file
system) and moved into place with one rename, so an interrupted or corrupt transfer never leaves a
folder that looks installed. Only the standard library is used for networking.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Union

from . import __version__, paths, tasks
from .errors import DownloadError, LicenseError, TotalSegmentatorError, WeightsError, WeightsMissingError
from .progress import ProgressCallback, ProgressEvent, ignore_progress
from .tasks import ModelSpec

CHUNK_SIZE = 1 << 20
"""Bytes read per step of a download (one progress event each)."""

TIMEOUT_S = 60.0
"""Seconds without any network activity before a transfer is abandoned."""

OFFICIAL_VERSION = "2.18.0"
"""TotalSegmentator version announced to the licence server (the weights this engine reproduces)."""

ACADEMIC_LICENSE_URL = "https://backend.totalsegmentator.com/license-academic/"
WEIGHTS_URL_ENV = "TOTALSEG_WEIGHTS_URL"
LICENSE_URL_ENV = "TOTALSEG_LICENSE_URL"
LICENSE_CHECK_URL_ENV = "TOTALSEG_LICENSE_CHECK_URL"

CHECKPOINT = "checkpoint_final.pth"
_TMP_PREFIX = ".totalseg-tmp-"
_DATASET_NAME = re.compile(r"^Dataset(\d{3,})_.+")
_SEARCH_DEPTH = 3  # a copied ~/.totalsegmentator holds its datasets in nnunet/results/


# ----------------------------------------------------------------------------------------------
# Cache layout


def dataset_dir(spec: ModelSpec) -> Path:
    """The ``DatasetXXX_name`` folder; found by id when the registry does not name it."""
    root = paths.weights_dir()
    if spec.folder:
        return root / spec.folder
    matches = sorted(p for p in root.glob(f"Dataset{spec.dataset_id:03d}_*") if p.is_dir())
    return matches[0] if matches else root / f"Dataset{spec.dataset_id:03d}_*"


def model_dir(spec: ModelSpec) -> Path:
    """The nnU-Net result folder (``Trainer__Plans__configuration``) the predictor loads."""
    return dataset_dir(spec) / spec.result_subfolder


def _has_model(result_dir: Path, folds: Optional[tuple[int, ...]]) -> bool:
    """Plans, dataset description and a final checkpoint for every required fold (any fold if None)."""
    if not ((result_dir / "plans.json").is_file() and (result_dir / "dataset.json").is_file()):
        return False
    if folds is None:
        return any(p.name[5:].isdigit() and (p / CHECKPOINT).is_file() for p in result_dir.glob("fold_*"))
    return all((result_dir / f"fold_{fold}" / CHECKPOINT).is_file() for fold in folds)


def is_installed(spec: ModelSpec) -> bool:
    """Whether the model can be loaded from the cache without any download."""
    return _has_model(model_dir(spec), spec.folds)


def missing_models(specs: Iterable[ModelSpec]) -> list[ModelSpec]:
    """The models that are not installed, each dataset once, in the given order."""
    missing: dict[tuple[int, str], ModelSpec] = {}
    for spec in specs:
        if not is_installed(spec):
            missing.setdefault((spec.dataset_id, spec.result_subfolder), spec)
    return list(missing.values())


def _users(dataset_id: int) -> Iterator[tuple[str, ModelSpec]]:
    """Every (task name, model) of the registry that runs this dataset."""
    for task in tasks.all_tasks().values():
        for mode in task.modes.values():
            for model in mode.models:
                if model.dataset_id == dataset_id:
                    yield task.name, model


def _known_spec(dataset_id: int) -> Optional[ModelSpec]:
    return next((model for _, model in _users(dataset_id)), None)


def _task_of(dataset_id: int) -> str:
    return next((name for name, _ in _users(dataset_id)), "TASK")


# ----------------------------------------------------------------------------------------------
# Making sure weights are there


def ensure_weights(specs: Iterable[ModelSpec], progress: ProgressCallback = ignore_progress,
                   download: bool = True, task: Optional[str] = None) -> None:
    """Download every missing model, or explain in one paragraph how to provide it.

    Licence problems raise :class:`LicenseError` as they are; every other failure becomes a
    :class:`WeightsMissingError` naming the folders expected and both ways to fix it.
    """
    missing = missing_models(specs)
    if missing and not download:
        raise WeightsMissingError(_missing_message(missing, task, "downloading is switched off (offline)"))
    for index, spec in enumerate(missing):
        try:
            _download(spec, progress)
        except DownloadError as err:
            raise WeightsMissingError(_missing_message(missing[index:], task, str(err))) from err


def _missing_message(missing: list[ModelSpec], task: Optional[str], reason: str) -> str:
    task = task or _task_of(missing[0].dataset_id)
    folders = "; ".join(f"dataset {spec.dataset_id} in {model_dir(spec)}" for spec in missing)
    return (
        f"The model weights for task '{task}' are not installed ({folders}) and could not be downloaded: "
        f"{reason.rstrip('.')}. To fix this, either connect this computer to the internet and run again, "
        f"so that the weights are downloaded automatically, or run `totalseg_download_weights -t {task}` "
        f"on a computer with internet access and bring the weights here with "
        f"`totalseg_import_weights -i PATH`, where PATH is a release zip, a DatasetXXX_* folder or a copy "
        f"of that computer's .totalsegmentator folder."
    )


def download_task(task_name: str, progress: ProgressCallback = ignore_progress) -> list[Path]:
    """Fetch the models of every speed mode of a task that are not installed yet."""
    installed = []
    for spec in tasks.models_of_task(task_name):
        if not is_installed(spec):
            _download_explained(spec, progress)
        installed.append(model_dir(spec))
    return installed


def download_dataset(dataset_id: int, progress: ProgressCallback = ignore_progress) -> Path:
    """Fetch one dataset folder (replacing any present copy); returns the installed folder."""
    spec = _known_spec(dataset_id)
    if spec is None:
        tasks.dataset_spec(dataset_id)  # unknown ids raise UnknownTaskError
        raise DownloadError(f"Dataset {dataset_id} is not used by any task and has no download.")
    return _download_explained(spec, progress)


def _download_explained(spec: ModelSpec, progress: ProgressCallback) -> Path:
    try:
        return _download(spec, progress)
    except DownloadError as err:
        raise DownloadError(f"Downloading the weights of dataset {spec.dataset_id} failed: {err}") from err


def _download(spec: ModelSpec, progress: ProgressCallback) -> Path:
    request = _license_request(spec) if spec.licensed else _release_request(spec)
    refusal = f"The licence server refused the key stored in {paths.config_file()}" if spec.licensed else None
    name = spec.folder or f"dataset {spec.dataset_id}"
    with _staging() as stage:
        archive = stage / "download.zip"
        _fetch(request, archive, progress, f"Downloading {name}", refusal)
        progress(ProgressEvent(stage="download", message=f"Unpacking {name}"))
        folder = _dataset_in(_extract(archive, stage / "extracted"), spec)
        _check_dataset(folder, spec)
        return _install(folder, stage / "replaced", replace=True)


# ----------------------------------------------------------------------------------------------
# Network


def _release_request(spec: ModelSpec) -> urllib.request.Request:
    """GET of a public release zip; ``TOTALSEG_WEIGHTS_URL`` points it at a mirror."""
    if not spec.release or not spec.folder:
        raise DownloadError(f"Dataset {spec.dataset_id} has no public download; import it instead.")
    pattern = _url(WEIGHTS_URL_ENV, "release_url")
    try:
        url = pattern.format(version=spec.release, folder=spec.folder)
    except (KeyError, IndexError, ValueError) as err:
        raise DownloadError(f"{WEIGHTS_URL_ENV} must be a URL pattern using {{version}} and {{folder}}, "
                            f"not '{pattern}'.") from err
    return urllib.request.Request(url, headers={"User-Agent": f"totalseg-engine/{__version__}"})


def _license_request(spec: ModelSpec) -> urllib.request.Request:
    """POST to the licence server, which answers licensed weights with the zip."""
    name = tasks.registry_data()["licensed_download_names"].get(str(spec.dataset_id))
    if name is None:
        raise DownloadError(f"No licensed download is known for dataset {spec.dataset_id}.")
    key = get_license_key()
    if key is None:
        raise LicenseError(
            f"Task '{name}' (dataset {spec.dataset_id}) needs a licence key, and none is set. A free licence "
            f"for academic use is available at {ACADEMIC_LICENSE_URL} (commercial licences from the same "
            f"site). Store it once with `totalseg_set_license -l KEY`, or pass `--license_number KEY` to "
            f"TotalSegmentator; it is kept in {paths.config_file()}."
        )
    payload = {"license_number": key, "task": name, "version": OFFICIAL_VERSION}
    return _json_request(_url(LICENSE_URL_ENV, "license_url"), payload)


def _url(env: str, registry_key: str) -> str:
    return os.environ.get(env) or tasks.registry_data()[registry_key]


def _json_request(url: str, payload: dict[str, Any]) -> urllib.request.Request:
    return urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST",
                                  headers={"Content-Type": "application/json",
                                           "User-Agent": f"totalseg-engine/{__version__}"})


def _open(request: urllib.request.Request, refusal: Optional[str] = None):
    """Open a URL; failures become errors with a message for the user.

    With ``refusal`` (a licence request) an HTTP 4xx answer means the key was refused and raises
    :class:`LicenseError` starting with that text.
    """
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        with err:
            body = _read_small(err)
        if refusal and 400 <= err.code < 500:
            raise LicenseError(_refusal_text(refusal, body, f"HTTP {err.code}")) from err
        raise DownloadError(f"{request.full_url} answered HTTP {err.code} {err.reason}.") from err
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise DownloadError(f"could not connect to {request.full_url} ({reason}).") from err


def _read_small(response) -> bytes:
    try:
        return response.read(65536) or b""
    except (HTTPException, OSError):
        return b""


def _server_answer(body: bytes) -> dict[str, Any]:
    """The JSON object of a licence server answer ({} when the body is not one)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _refusal_text(refusal: str, body: bytes, fallback: str) -> str:
    answer = _server_answer(body)
    detail = answer.get("message") or answer.get("status") or fallback
    return (f"{refusal} ({detail}). Check the key and store the right one with "
            f"`totalseg_set_license -l KEY`; academic licences are free at {ACADEMIC_LICENSE_URL}.")


def _fetch(request: urllib.request.Request, target: Path, progress: ProgressCallback, message: str,
           refusal: Optional[str] = None) -> None:
    """Stream a response into ``target`` in chunks, checking the size the server announced."""
    with _open(request, refusal) as response:
        if refusal and "json" in (response.headers.get("Content-Type") or ""):
            raise LicenseError(_refusal_text(refusal, _read_small(response), "no weights in the answer"))
        total = _content_length(response)
        received = _copy_stream(response, target, total, progress, message)
    if total is not None and received != total:
        raise DownloadError(f"the transfer from {request.full_url} broke off after {received} of {total} "
                            f"bytes; nothing was installed.")


def _content_length(response) -> Optional[int]:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def _copy_stream(response, target: Path, total: Optional[int], progress: ProgressCallback,
                 message: str) -> int:
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


# ----------------------------------------------------------------------------------------------
# Archives and installation


@contextmanager
def _staging() -> Iterator[Path]:
    """A private temporary folder in the weights folder, removed on every way out."""
    root = paths.weights_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
    except OSError as err:
        raise WeightsError(f"Cannot write to the weights folder {root}: {err}") from err
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_member(info: zipfile.ZipInfo) -> None:
    """Refuse members that would land outside the extraction folder or point elsewhere."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in PurePosixPath(name).parts:
        raise DownloadError(f"the archive contains the unsafe path '{info.filename}'; nothing was installed.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DownloadError(f"the archive contains the symbolic link '{info.filename}'; nothing was installed.")


def _extract(archive: Path, dest: Path) -> Path:
    """Verify a zip (paths, links, checksums) and unpack it into ``dest``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(info)
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"the archive {archive.name} is corrupt (member '{bad}'); nothing was installed.")
            zf.extractall(dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        raise DownloadError(f"{archive.name} is not a valid zip archive ({err}); nothing was installed.") from err
    except OSError as err:
        raise DownloadError(f"unpacking {archive.name} failed ({err}); nothing was installed.") from err
    return dest


def _dataset_id(folder: Path) -> Optional[int]:
    match = _DATASET_NAME.match(folder.name)
    return int(match.group(1)) if match else None


def _find_datasets(root: Path, depth: int = _SEARCH_DEPTH) -> list[Path]:
    """``DatasetXXX_*`` folders at ``root`` itself or a few levels below it."""
    if _dataset_id(root) is not None:
        return [root]
    if depth == 0 or not root.is_dir():
        return []
    found: list[Path] = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.is_symlink() and not child.name.startswith(_TMP_PREFIX):
            found += _find_datasets(child, depth - 1)
    return found


def _dataset_in(extracted: Path, spec: ModelSpec) -> Path:
    """The folder of ``spec``'s dataset inside a downloaded archive."""
    for folder in _find_datasets(extracted):
        if folder.name == spec.folder or (spec.folder is None and _dataset_id(folder) == spec.dataset_id):
            return folder
    expected = spec.folder or f"Dataset{spec.dataset_id:03d}_*"
    raise DownloadError(f"the downloaded archive does not contain the folder {expected}; nothing was installed.")


def _check_dataset(folder: Path, spec: Optional[ModelSpec]) -> None:
    """Refuse a dataset folder that the engine could not load (or would not find by name)."""
    if spec is None:
        if not any(_has_model(child, None) for child in folder.iterdir() if child.is_dir()):
            raise DownloadError(f"{folder.name} holds no complete model (Trainer__Plans__configuration folder "
                                f"with plans.json, dataset.json and fold_N/checkpoint_final.pth).")
        return
    if spec.folder and folder.name != spec.folder:
        raise DownloadError(f"{folder.name} is not the folder name TotalSegmentator expects for dataset "
                            f"{spec.dataset_id}: rename it to {spec.folder}.")
    if not _has_model(folder / spec.result_subfolder, spec.folds):
        folds = "fold_N" if spec.folds is None else ", ".join(f"fold_{f}" for f in spec.folds)
        raise DownloadError(f"{folder.name} is incomplete: {spec.result_subfolder}/ needs plans.json, "
                            f"dataset.json and checkpoint_final.pth in {folds}.")


def _install(folder: Path, trash: Path, replace: bool) -> Path:
    """Move a checked dataset folder into the cache with a rename; a replaced copy goes to ``trash``."""
    target = paths.weights_dir() / folder.name
    try:
        if target.exists() or target.is_symlink():
            if not replace:
                raise DownloadError(f"{target} already exists; use --overwrite (overwrite=True) to replace it.")
            os.rename(target, trash)
            _rename_or_restore(folder, target, trash)
        else:
            os.rename(folder, target)
    except OSError as err:
        raise DownloadError(f"Could not move {folder.name} into {target.parent} ({err}).") from err
    return target


def _rename_or_restore(folder: Path, target: Path, old: Path) -> None:
    try:
        os.rename(folder, target)
    except BaseException:
        os.rename(old, target)
        raise


# ----------------------------------------------------------------------------------------------
# Import


def import_weights(path: Union[str, Path], overwrite: bool = False) -> list[Path]:
    """Install weights from a release zip or a folder (a ``DatasetXXX_*`` folder or one holding them).

    Every dataset is checked before anything is installed; existing ones are only replaced with
    ``overwrite``. Returns the installed dataset folders.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise DownloadError(f"Cannot import weights: {source} does not exist.")
    with _staging() as stage:
        root = _extract(source, stage / "extracted") if source.is_file() else source
        folders = _find_datasets(root)
        _check_import(folders, source, overwrite)
        if root == source:
            folders = [_copy_to(folder, stage / "copied") for folder in folders]
        return [_install(folder, stage / f"replaced-{i}", replace=overwrite) for i, folder in enumerate(folders)]


def _check_import(folders: list[Path], source: Path, overwrite: bool) -> None:
    if not folders:
        raise DownloadError(f"Cannot import weights: {source} contains no DatasetXXX_* folder.")
    names = [folder.name for folder in folders]
    if len(set(names)) != len(names):
        raise DownloadError(f"Cannot import weights: {source} contains the same dataset folder twice.")
    for folder in folders:
        _check_dataset(folder, _known_spec(_dataset_id(folder)))
        if not overwrite and (paths.weights_dir() / folder.name).exists():
            raise DownloadError(f"Cannot import weights: {paths.weights_dir() / folder.name} already exists; "
                                f"use --overwrite (overwrite=True) to replace it. Nothing was installed.")


def _copy_to(folder: Path, dest: Path) -> Path:
    try:
        return Path(shutil.copytree(folder, dest / folder.name))
    except (OSError, shutil.Error) as err:
        raise DownloadError(f"Copying {folder} failed ({err}); nothing was installed.") from err


# ----------------------------------------------------------------------------------------------
# Licence key (in the official config.json)


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
    path = paths.config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=4)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def get_license_key() -> Optional[str]:
    """The stored licence key (``license_number`` in config.json), or None."""
    key = _read_config().get("license_number")
    return key.strip() if isinstance(key, str) and key.strip() else None


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
    request = _json_request(_url(LICENSE_CHECK_URL_ENV, "license_check_url"), {"license_number": key})
    refusal = f"The licence key {key} is not valid"
    try:
        with _open(request, refusal) as response:
            body = _read_small(response)
    except DownloadError as err:
        raise LicenseError(f"The licence key could not be checked: {err} Connect to the internet, or store "
                           f"the key without checking (`totalseg_set_license -l KEY --skip-validation`).") from err
    if _server_answer(body).get("status") != "valid_license":
        raise LicenseError(_refusal_text(refusal, body, "unexpected answer from the licence server"))
