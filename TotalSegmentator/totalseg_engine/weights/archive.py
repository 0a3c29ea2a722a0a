"""Weights archives and folders: unpack, find the dataset folders, check them, move them into the cache.

Everything is staged in a temporary folder inside the weights folder (same file system) and moved into
place with one rename, so an interrupted or corrupt transfer never leaves a folder that looks installed.

What people really bring is untidy, and is taken as it is: release zips have one top-level
``DatasetXXX_name/`` folder; a zip re-made on a Mac adds ``__MACOSX/…/._name`` AppleDouble entries and
``.DS_Store`` files (skipped, never unpacked); a copied ``~/.totalsegmentator`` can hold folders of older
releases (``…_v204``), of nnU-Net v1 (``nnUNet/3d_fullres/Task…``), incomplete or unknown datasets. An import
installs every dataset folder it can use and names each folder it skipped, with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional, Union

from .. import tasks
from ..errors import DownloadError, WeightsError
from ..tasks import ModelSpec
from . import paths
from .transfer import OFFICIAL_VERSION

CHECKPOINT = "checkpoint_final.pth"
TMP_PREFIX = ".totalseg-tmp-"
_DATASET_NAME = re.compile(r"^Dataset(\d{3,})_.+")
_SEARCH_DEPTH = 3  # a copied ~/.totalsegmentator holds its datasets in nnunet/results/
_MAC_FOLDER = "__MACOSX"


@dataclass(frozen=True)
class Skipped:
    """A folder an import found and did not install, and why."""

    folder: str
    reason: str

    def __str__(self) -> str:
        return f"{self.folder}: {self.reason}"


@dataclass
class ImportReport:
    """The dataset folders an import installed into the cache, and those it skipped."""

    installed: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# The cache layout


def has_model(result_dir: Path, folds: Optional[tuple[int, ...]]) -> bool:
    """Plans, dataset description and a final checkpoint for every required fold (any fold if None)."""
    if not ((result_dir / "plans.json").is_file() and (result_dir / "dataset.json").is_file()):
        return False
    if folds is None:
        return any(p.name[5:].isdigit() and (p / CHECKPOINT).is_file() for p in result_dir.glob("fold_*"))
    return all((result_dir / f"fold_{fold}" / CHECKPOINT).is_file() for fold in folds)


def known_spec(dataset_id: Optional[int]) -> Optional[ModelSpec]:
    """A model of the registry that runs this dataset (None for datasets no task uses)."""
    users = tasks.users_of_dataset(dataset_id) if dataset_id is not None else []
    return users[0][1] if users else None


# ----------------------------------------------------------------------------------------------
# Staging and unpacking


@contextmanager
def staging() -> Iterator[Path]:
    """A private temporary folder in the weights folder, removed on every way out."""
    root = paths.weights_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
    except OSError as err:
        raise WeightsError(f"Cannot write to the weights folder {root}: {err}") from err
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def is_clutter(name: str) -> bool:
    """Entries a Mac adds to archives and folders (AppleDouble ``._*`` files, ``__MACOSX/``, ``.DS_Store``)."""
    return any(part == _MAC_FOLDER or part.startswith("._") or part == ".DS_Store"
               for part in PurePosixPath(name.replace("\\", "/")).parts)


def _check_member(info: zipfile.ZipInfo) -> None:
    """Refuse members that would land outside the extraction folder or point elsewhere."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in PurePosixPath(name).parts:
        raise DownloadError(f"the archive contains the unsafe path '{info.filename}'; nothing was installed.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DownloadError(f"the archive contains the symbolic link '{info.filename}'; nothing was installed.")


def extract(archive: Path, dest: Path) -> Path:
    """Verify a zip (paths, links) and unpack all but its Mac clutter into ``dest``, checking every CRC."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_member(info)
            for info in members:
                if not is_clutter(info.filename):
                    zf.extract(info, dest)
    except zipfile.BadZipFile as err:
        problem = "is corrupt" if "CRC" in str(err) else "is not a valid zip archive"
        raise DownloadError(f"{archive.name} {problem} ({err}); nothing was installed.") from err
    except (zipfile.LargeZipFile, EOFError, ValueError) as err:
        raise DownloadError(f"{archive.name} is not a valid zip archive ({err}); nothing was installed.") from err
    except OSError as err:
        raise DownloadError(f"unpacking {archive.name} failed ({err}); nothing was installed.") from err
    return dest


# ----------------------------------------------------------------------------------------------
# Finding and checking dataset folders


def dataset_id(folder: Path) -> Optional[int]:
    match = _DATASET_NAME.match(folder.name)
    return int(match.group(1)) if match else None


def _subfolders(folder: Path) -> list[Path]:
    """Sub-folders worth looking into: not hidden, not Mac clutter, not a staging folder, not a link."""
    return [child for child in sorted(folder.iterdir()) if child.is_dir() and not child.is_symlink()
            and not child.name.startswith(".") and not is_clutter(child.name)]


def find_datasets(root: Path, depth: int = _SEARCH_DEPTH) -> list[Path]:
    """``DatasetXXX_*`` folders at ``root`` itself or a few levels below it."""
    if dataset_id(root) is not None:
        return [root]
    if depth == 0 or not root.is_dir():
        return []
    return [found for child in _subfolders(root) for found in find_datasets(child, depth - 1)]


def _strays(root: Path, datasets: list[Path]) -> list[Path]:
    """Folders beside the dataset folders that are none (e.g. nnU-Net v1's ``nnUNet/`` of TotalSegmentator 1)."""
    parents = {folder.parent for folder in datasets if folder != root}
    return [child for parent in sorted(parents) for child in _subfolders(parent)
            if dataset_id(child) is None and not find_datasets(child)]


def dataset_problem(folder: Path, spec: Optional[ModelSpec]) -> Optional[str]:
    """Why the engine could not use a dataset folder (or find it by name); None when it can."""
    if spec is None:
        return f"dataset {dataset_id(folder)} is not used by any task of TotalSegmentator {OFFICIAL_VERSION}"
    if spec.folder and folder.name != spec.folder:
        return (f"not the folder TotalSegmentator {OFFICIAL_VERSION} uses for dataset {spec.dataset_id} "
                f"({spec.folder}); a folder of an older release, or renamed")
    if not has_model(folder / spec.result_subfolder, spec.folds):
        folds = "fold_N" if spec.folds is None else ", ".join(f"fold_{f}" for f in spec.folds)
        return (f"incomplete: {spec.result_subfolder}/ needs plans.json, dataset.json and "
                f"checkpoint_final.pth in {folds}")
    return None


def check_dataset(folder: Path, spec: ModelSpec) -> None:
    """Refuse a downloaded dataset folder that the engine could not load (or would not find by name)."""
    problem = dataset_problem(folder, spec)
    if problem is not None:
        raise DownloadError(f"{folder.name}: {problem}.")


# ----------------------------------------------------------------------------------------------
# Installing


def install(folder: Path, trash: Path, replace: bool) -> Path:
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


def import_weights(path: Union[str, Path], overwrite: bool = False) -> ImportReport:
    """Install weights from a release zip or a folder (a ``DatasetXXX_*`` folder or one holding them).

    Every dataset folder is checked before anything is installed; those the engine can use are installed
    (existing ones only replaced with ``overwrite``), the others are reported as skipped. When none can be
    used, nothing is installed and the error names each folder and why.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise DownloadError(f"Cannot import weights: {source} does not exist.")
    with staging() as stage:
        root = extract(source, stage / "extracted") if source.is_file() else source
        found = find_datasets(root)
        usable, skipped = _sort_out(found, overwrite, lambda folder: _shown(folder, root, source))
        skipped += [Skipped(_shown(folder, root, source), "holds no DatasetXXX_* model folder")
                    for folder in _strays(root, found)]
        if not usable:
            raise DownloadError(_nothing_to_import(source, skipped))
        if root == source:
            usable = [_copy_to(folder, stage / "copied") for folder in usable]
        installed = [install(folder, stage / f"replaced-{i}", replace=overwrite) for i, folder in enumerate(usable)]
    return ImportReport(installed, skipped)


def _sort_out(found: list[Path], overwrite: bool, shown) -> tuple[list[Path], list[Skipped]]:
    """The dataset folders to install, and the others with the reason each is skipped."""
    usable: list[Path] = []
    skipped: list[Skipped] = []
    for folder in found:
        problem = dataset_problem(folder, known_spec(dataset_id(folder)))
        if problem is None and any(other.name == folder.name for other in usable):
            problem = "the same dataset folder was found twice; the first one is imported"
        if problem is None and not overwrite and (paths.weights_dir() / folder.name).exists():
            problem = "already installed (--overwrite replaces it)"
        if problem is None:
            usable.append(folder)
        else:
            skipped.append(Skipped(shown(folder), problem))
    return usable, skipped


def _shown(folder: Path, root: Path, source: Path) -> str:
    """A found folder as the user knows it: inside the zip they gave, or inside their folder."""
    relative = folder.relative_to(root).as_posix()
    if source.is_file():
        return f"{source.name}:{relative}"
    return str(source) if relative == "." else str(source / relative)


def _nothing_to_import(source: Path, skipped: list[Skipped]) -> str:
    if not skipped:
        return f"Cannot import weights: {source} contains no DatasetXXX_* folder."
    return (f"Cannot import weights: nothing in {source} can be used, so nothing was installed. "
            + " ".join(f"{item}." for item in skipped))


def _copy_to(folder: Path, dest: Path) -> Path:
    try:
        return Path(shutil.copytree(folder, dest / folder.name))
    except (OSError, shutil.Error) as err:
        raise DownloadError(f"Copying {folder} failed ({err}); nothing was installed.") from err
