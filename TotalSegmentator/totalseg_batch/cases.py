"""The cases of a cohort: what ``totalseg_batch`` finds in its inputs, each with a stable id.

Inputs may be image files (NIfTI, NRRD, MHA), folder trees of them, DICOM folders and zips, and CSV or
text lists of any of these. A folder holding several DICOM series gives one case per series. A case's id
comes from its path below the input given (``cohort/s01/ct.nii.gz`` under ``cohort`` is ``s01__ct``) or from
the list's ``case_id`` column, so a re-run finds the same ids and the outputs land in the same folders.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from totalseg_engine import NIFTI_SUFFIXES, SITK_SUFFIXES, InvalidInputError, InvalidOptionError

IMAGE_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
LIST_SUFFIXES = (".csv", ".tsv", ".txt", ".lst")
# Files that sit beside DICOM slices or images and are never slices themselves: not opened while looking for series.
NOT_DICOM_SUFFIXES = (".json", ".csv", ".tsv", ".txt", ".lst", ".md", ".png", ".jpg", ".jpeg", ".xml", ".html",
                      ".pdf", ".log", ".py", ".sh", ".raw", ".gz", ".zip", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PATH_COLUMNS = ("path", "input", "image", "file", "filepath")
ID_COLUMNS = ("case_id", "id", "case", "subject")
ID_SEPARATOR = "__"  # joins the parts of a relative path into one folder name

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Case:
    """One image of the cohort: where it is and the id its outputs are filed under."""

    case_id: str
    source: str  # image file, DICOM folder or zip, as an absolute path
    series_uid: Optional[str] = None  # set when ``source`` is a folder holding several series
    series_files: tuple[str, ...] = ()  # that series' slices

    @property
    def path(self) -> Path:
        return Path(self.source)

    def files(self) -> list[Path]:
        """Every file the case is read from (what its fingerprint covers)."""
        if self.series_files:
            return [Path(name) for name in self.series_files]
        if self.path.is_dir():
            return sorted(p for p in self.path.rglob("*") if p.is_file())
        return [self.path]


def find_cases(inputs: Sequence[PathLike]) -> list[Case]:
    """Every case in ``inputs`` (files, folders, lists), sorted by id; ids must be unique."""
    cases = []
    for given in inputs:
        path = normal_path(given)
        if not path.exists():
            raise InvalidInputError(f"Input not found: {path}. Pass image files, folders of them, DICOM folders "
                                    f"or zips, or a CSV / text list of them.")
        cases += _cases_from_list(path) if _is_list(path) else _cases_for(path, None)
    if not cases:
        raise InvalidInputError(f"No images found in {', '.join(map(str, inputs))}. Cases are NIfTI, NRRD or MHA "
                                f"files, DICOM folders or zips.")
    check_unique_ids(cases)
    return sorted(cases, key=lambda case: case.case_id)


def normal_path(path: PathLike) -> Path:
    """An absolute path as it is stored: ``~`` expanded, and ``..`` resolved as the system resolves it (through
    symbolic links); a path without ``..`` keeps the links it names."""
    path = Path(path).expanduser().absolute()
    return path.resolve() if ".." in path.parts else path


def check_unique_ids(cases: Iterable[Case]) -> None:
    """Two inputs filed under one id would overwrite each other's outputs: refuse, naming both."""
    seen: dict[str, Case] = {}
    for case in cases:
        other = seen.setdefault(case.case_id, case)
        if other is not case:
            raise InvalidInputError(
                f"Two inputs get the case id '{case.case_id}': {other.source} and {case.source}. Pass a CSV list "
                f"with a case_id column to name them, or give the folders that contain them instead.")


def shard(cases: Sequence[Case], spec: str) -> list[Case]:
    """The ``I/N`` slice of the cohort (I from 1 to N): every N-th case by id, so N slices cover it once."""
    index, count = parse_shard(spec)
    ordered = sorted(cases, key=lambda case: case.case_id)
    return [case for position, case in enumerate(ordered) if position % count == index - 1]


def parse_shard(spec: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec or "")
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise InvalidOptionError(f"--shard '{spec}' is not I/N with 1 <= I <= N (such as 1/4); in a Slurm array "
                                 f"use --shard $((SLURM_ARRAY_TASK_ID + 1))/$SLURM_ARRAY_TASK_COUNT.")
    return int(match.group(1)), int(match.group(2))


def case_id_of(relative: PathLike) -> str:
    """The id of a path relative to its input: suffixes dropped, folders joined by ``__``, odd characters ``_``."""
    parts = [part for part in Path(relative).parts if part not in ("", ".")]
    if parts:
        parts[-1] = _without_suffix(parts[-1])
    return ID_SEPARATOR.join(re.sub(r"[^A-Za-z0-9._-]", "_", part) for part in parts)


def _without_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES + (".zip",), key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_list(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in LIST_SUFFIXES


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(IMAGE_SUFFIXES) and not name.endswith(".seg.nrrd")


def _cases_for(path: Path, case_id: Optional[str]) -> list[Case]:
    """The cases of one input path; ``case_id`` names it (a folder's cases get it as a prefix)."""
    if path.is_dir():
        return _cases_in_folder(path, case_id)
    if _is_image(path) or path.suffix.lower() == ".zip":
        return [Case(case_id or case_id_of(path.name), str(path))]
    raise InvalidInputError(f"Unsupported input: {path}. Cases are NIfTI, NRRD or MHA files, DICOM folders or "
                            f"zips; lists end in {', '.join(LIST_SUFFIXES)}.")


def _cases_in_folder(root: Path, prefix: Optional[str]) -> list[Case]:
    """Image files, zips and DICOM series anywhere below ``root`` (hidden folders skipped)."""
    cases = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        relative = here.relative_to(root)
        for name in sorted(files):
            if _is_image(here / name) or name.lower().endswith(".zip"):
                cases.append(Case(_join(prefix, case_id_of(relative / name)), str(here / name)))
        if any(not name.lower().endswith(NOT_DICOM_SUFFIXES) and not name.startswith(".") for name in files):
            folder_id = case_id_of(relative) if relative.parts else ("" if prefix else case_id_of(root.name))
            cases += _series_cases(here, _join(prefix, folder_id))
    return cases


def _join(prefix: Optional[str], case_id: str) -> str:
    return ID_SEPARATOR.join(part for part in (prefix, case_id) if part)


def _series_cases(folder: Path, folder_id: str) -> list[Case]:
    """One case per DICOM series in ``folder`` (its own files only; subfolders are walked on their own)."""
    import SimpleITK as sitk

    uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if len(uids) == 1:
        return [Case(folder_id, str(folder))]
    series = {uid: tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids}
    names = _series_names(series)
    return [Case(f"{folder_id}{ID_SEPARATOR}{names[uid]}", str(folder), uid, files) for uid, files in series.items()]


def _series_names(series: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """``series<SeriesNumber>`` where that number is present and tells the series apart, else a digest of the
    series UID (real series may lack both tags: GDCM then groups them under an empty UID)."""
    numbers = {uid: _series_number(files[0]) for uid, files in series.items()}
    counts = {number: list(numbers.values()).count(number) for number in numbers.values()}
    return {uid: f"series{number}" if number and counts[number] == 1
            else f"series-{hashlib.sha1(uid.encode()).hexdigest()[:10]}" for uid, number in numbers.items()}


def _series_number(path: str) -> Optional[str]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    key = "0020|0011"
    value = reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""
    return re.sub(r"[^A-Za-z0-9._-]", "_", value) or None


def _cases_from_list(path: Path) -> list[Case]:
    """A CSV/TSV with a path column (and optionally case_id), or a text file with one path per line.

    Relative paths are relative to the list's folder, so a list travels with its cohort.
    """
    cases = []
    for line, (entry, case_id) in _list_entries(path):
        source = Path(entry).expanduser()
        source = source if source.is_absolute() else path.parent / source
        if not source.exists():
            raise InvalidInputError(f"{path}, line {line}: {source} not found. Fix the path (relative paths are "
                                    f"relative to the list's folder) or remove the line.")
        cases += _cases_for(normal_path(source), case_id_of(case_id) if case_id else None)
    return cases


def _list_entries(path: Path) -> list[tuple[int, tuple[str, Optional[str]]]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() not in (".csv", ".tsv"):
        return [(number, (line.strip(), None)) for number, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#")]
    rows = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    columns = {name.strip().lower(): name for name in rows.fieldnames or []}
    path_column = next((columns[name] for name in PATH_COLUMNS if name in columns), None)
    if path_column is None:
        raise InvalidInputError(f"{path} has no column naming the images (columns: {', '.join(columns) or 'none'}). "
                                f"Add a header row with a 'path' column and optionally 'case_id'.")
    id_column = next((columns[name] for name in ID_COLUMNS if name in columns), None)
    return [(number, (row[path_column].strip(), (row.get(id_column) or "").strip() if id_column else None))
            for number, row in enumerate(rows, 2) if (row.get(path_column) or "").strip()]
