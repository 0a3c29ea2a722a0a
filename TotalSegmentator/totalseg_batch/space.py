"""Room for a case in OUTDIR, checked before the case runs: a full disk stops a run before it computes cases it
could not write.

What a case needs (README, "Free space") is estimated from its input, conservatively: the input's voxel count times
the bytes per voxel of each output kind it writes, plus a fixed allowance.

- NIfTI (the class files, or one multilabel file), ``.seg.nrrd`` and the RT Structure Set: 1 byte per voxel each,
  the size of an uncompressed 8-bit label map. What they really take is compressed: on the shared example CTs,
  0.01-0.1 bytes per voxel for a multilabel file or a .seg.nrrd, 0.5-0.7 for the 117 class files of task total
  (most of it the files' fixed overhead, which the allowance covers on small images), 0.2 for an RTSTRUCT.
- DICOM SEG: one bit per voxel for every class of the task (a frame per segment and slice, uncompressed), at most
  4 bytes per voxel; 3.3 were measured where 31 structures cross a 20-slice series.
- Surfaces (``-ot stl`` / ``obj``): 40 and 80 bytes per voxel, twice what the official model's segmentation of the
  3 mm example CT takes as surfaces (18 and 33; surface grows more slowly than volume, so finer grids take less per
  voxel: 9 and 17 at 1.5 mm). A segmentation that is noise (an untrained model's) can take far more.
- 16 MiB for ``statistics.json``, the preview, the records and the small files.

The check is per case, against the file system's free space when the case starts: cases running side by side
each see the same free space, which the margins above cover in practice.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Optional

from totalseg_engine import SegmentationRequest, TotalSegmentatorError, get_task

from .cases import Case

FIXED_BYTES = 16 * 2**20
BYTES_PER_VOXEL = {"nifti": 1.0, "seg_nrrd": 1.0, "dicom_rtstruct": 1.0, "stl": 40.0, "obj": 80.0}
DICOM_SEG_MAX_BYTES_PER_VOXEL = 4.0
BYTES_PER_STORED_VOXEL = 2  # a CT's voxel in an uncompressed DICOM file (16 bits)
_HEADERS_TRIED = 5  # files of a DICOM folder tried for the slice size (a folder may hold other files first)


def needed_bytes(case: Case, request: SegmentationRequest) -> int:
    """The room the case's outputs need, by the rule above."""
    per_voxel = sum(_bytes_per_voxel(kind, request.task) for kind in request.output_types)
    return int(input_voxels(case) * per_voxel) + FIXED_BYTES


def shortage(case: Case, request: SegmentationRequest, outdir: Path) -> Optional[str]:
    """None when ``outdir``'s file system has room for the case, else what to tell the user."""
    needed = needed_bytes(case, request)
    free = shutil.disk_usage(next(folder for folder in (outdir, *outdir.parents) if folder.exists())).free
    if free >= needed:
        return None
    return (f"not enough free space in {outdir} for case {case.case_id}: it needs about {_size(needed)} "
            f"(README, Free space), {_size(free)} are free; free some space or choose another -o")


def input_voxels(case: Case) -> int:
    """The input's voxel count, from its header(s); an input whose header cannot be read counts its bytes."""
    files = case.files()
    try:
        if case.path.suffix.lower() == ".zip":
            with zipfile.ZipFile(case.path) as archive:
                return sum(item.file_size for item in archive.infolist()) // BYTES_PER_STORED_VOXEL
        if case.series_files or case.path.is_dir():
            return _slice_voxels(files) * len(files)
        return _voxels(case.path)
    except (OSError, RuntimeError, ValueError, zipfile.BadZipFile):  # unreadable: it fails when the case reads it
        return sum(path.stat().st_size for path in files if path.exists())


def _voxels(path: Path) -> int:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    count = 1
    for size in reader.GetSize():
        count *= size
    return count


def _slice_voxels(files: list[Path]) -> int:
    """Voxels of one slice of a DICOM series: the first of its files whose header reads."""
    for path in files[:_HEADERS_TRIED]:
        try:
            return _voxels(path)
        except RuntimeError:
            continue
    raise ValueError("no readable DICOM header")


def _bytes_per_voxel(kind: str, task: str) -> float:
    if kind != "dicom_seg":
        return BYTES_PER_VOXEL.get(kind, 1.0)
    try:
        classes = len(get_task(task).classes)
    except TotalSegmentatorError:
        return DICOM_SEG_MAX_BYTES_PER_VOXEL
    return min(DICOM_SEG_MAX_BYTES_PER_VOXEL, classes / 8)


def _size(count: int) -> str:
    return f"{count / 2**20:,.1f} MiB"
