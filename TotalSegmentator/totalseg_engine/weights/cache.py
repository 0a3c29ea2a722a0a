"""Model weights: find them in TotalSegmentator's own cache, and download what is missing.

The cache layout is the official one, so an existing ``~/.totalsegmentator`` is used as it is::

    <weights_dir>/DatasetXXX_name/Trainer__Plans__configuration/
        plans.json, dataset.json, fold_N/checkpoint_final.pth

A download is streamed into a temporary folder inside the weights folder, checked, unpacked and moved into
place with one rename (:mod:`.archive`), so an interrupted or corrupt transfer never leaves a folder
that looks installed. The hosts are reached through :mod:`.transfer`; the licence key lives in
:mod:`.licensing`; bringing weights from elsewhere is :func:`.archive.import_weights`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from .. import tasks
from ..errors import DownloadError, WeightsMissingError
from ..progress import ProgressCallback, ProgressEvent, ignore_progress
from ..tasks import ModelSpec
from . import archive, licensing, paths, transfer
from .archive import CHECKPOINT, has_model

__all__ = ["CHECKPOINT", "dataset_dir", "model_dir", "is_installed", "missing_models", "ensure_weights",
           "download_task", "download_dataset"]


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


def is_installed(spec: ModelSpec) -> bool:
    """Whether the model can be loaded from the cache without any download."""
    return has_model(model_dir(spec), spec.folds)


def missing_models(specs: Iterable[ModelSpec]) -> list[ModelSpec]:
    """The models that are not installed, each dataset once, in the given order."""
    missing: dict[tuple[int, str], ModelSpec] = {}
    for spec in specs:
        if not is_installed(spec):
            missing.setdefault((spec.dataset_id, spec.result_subfolder), spec)
    return list(missing.values())


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
    users = tasks.users_of_dataset(missing[0].dataset_id)
    task = task or (users[0][0] if users else "TASK")
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
    spec = archive.known_spec(dataset_id)
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
    if spec.licensed:
        name = transfer.licensed_download_name(spec.dataset_id) or f"dataset {spec.dataset_id}"
        request = transfer.license_request(spec, licensing.require_license_key(name, spec.dataset_id))
        refusal = f"The licence server refused the key stored in {paths.config_file()}"
        timeout = transfer.LICENSED_TIMEOUT_S
    else:
        request, refusal, timeout = transfer.release_request(spec), None, transfer.TIMEOUT_S
    name = spec.folder or f"dataset {spec.dataset_id}"
    with archive.staging() as stage:
        download = stage / "download.zip"
        transfer.fetch(request, download, progress, f"Downloading {name}", refusal, timeout)
        progress(ProgressEvent(stage="download", message=f"Unpacking {name}"))
        folder = _dataset_in(archive.extract(download, stage / "extracted"), spec)
        archive.check_dataset(folder, spec)
        return archive.install(folder, stage / "replaced", replace=True)


def _dataset_in(extracted: Path, spec: ModelSpec) -> Path:
    """The folder of ``spec``'s dataset inside a downloaded archive."""
    for folder in archive.find_datasets(extracted):
        by_id = spec.folder is None and archive.dataset_id(folder) == spec.dataset_id
        if folder.name == spec.folder or by_id:
            return folder
    expected = spec.folder or f"Dataset{spec.dataset_id:03d}_*"
    raise DownloadError(f"the downloaded archive does not contain the folder {expected}; nothing was installed.")
