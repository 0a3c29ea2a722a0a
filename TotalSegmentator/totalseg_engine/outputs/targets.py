"""Where each output of a run goes, and whether it may go there, decided before hours of computing.

The names follow the official tool: ``-o`` itself for one output type (``case00`` with ``--ml`` becomes
``case00.nii``, as nibabel names it), side by side with the official suffixes for several, ``statistics.json``
beside the output. What is already there is judged by the request's overwrite policy, and the input itself is never
an output.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Optional, Sequence, Union

import nibabel as nib

from .. import imageio
from ..errors import InvalidOptionError, OutputExistsError
from ..request import OUTPUT_TYPES, SegmentationRequest
from . import surfaces

Source = Union[str, Path, nib.Nifti1Image]
DICOM_OUTPUT_TYPES = ("dicom_seg", "dicom_rtstruct")
FILE_OUTPUT_TYPES = ("seg_nrrd", *DICOM_OUTPUT_TYPES)
SURFACE_OUTPUT_TYPES = ("stl", "obj")  # folders of one surface per structure, whatever --ml says
MULTI_OUTPUT_SUFFIXES = {"nifti": ".nii.gz", "seg_nrrd": ".seg.nrrd", "dicom_seg": "_seg.dcm",
                         "dicom_rtstruct": "_rtstruct.dcm", "stl": "_stl", "obj": "_obj"}
DICOM_INPUT_NEEDED = "To use output type dicom_rtstruct or dicom_seg you also have to use a Dicom image as input."
# Python modules each DICOM output needs beyond the engine's own (pip names in the message).
DICOM_OUTPUT_MODULES = {"dicom_seg": {"highdicom": "highdicom"},
                        "dicom_rtstruct": {"pydicom": "pydicom", "skimage": "scikit-image"}}


def output_paths(output: Path, types: Sequence[str], task: str, ml: bool) -> dict[str, Path]:
    """Output type -> the path it is written to: ``output`` itself for one type, side by side for several."""
    if len(types) > 1:
        return multi_output_paths(output, types, task)
    return {types[0]: multilabel_file(output) if ml and types[0] == "nifti" else output}


def multilabel_file(output: Path) -> Path:
    """The official saves ``--ml`` with nibabel, which adds ``.nii`` to a name without suffix (``-o case00`` writes
    ``case00.nii``) and fails on any other suffix after the whole run; here that is refused before it."""
    name = output.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return output
    if "." not in output.name:
        return output.with_name(output.name + ".nii")
    raise InvalidOptionError(f"Output {output}: a multilabel NIfTI (--ml) needs a .nii.gz or .nii name, such as "
                             f"{output.with_name(output.name.split('.')[0] + '.nii.gz')}.")


def multi_output_paths(output: Path, types: Sequence[str], task: str) -> dict[str, Path]:
    """Where the official writes each of several output types: one file per type, side by side.

    An existing folder gets ``<task>_segmentation.*``; any other path names the files after its stem.
    """
    base_dir, base = (output, f"{task}_segmentation") if output.is_dir() else (output.parent,
                                                                               output.name.split(".")[0])
    return {kind: base_dir / f"{base}{MULTI_OUTPUT_SUFFIXES.get(kind, '')}" for kind in types}


def is_file_output(ml: bool, output_type: str) -> bool:
    """Whether an output is one file (else a folder of class files or of surfaces)."""
    return output_type in FILE_OUTPUT_TYPES or (ml and output_type == "nifti")


def statistics_file(statistics: Union[bool, str, Path], output: Optional[Path], ml: bool,
                    types: Sequence[str]) -> Optional[Path]:
    """Where statistics.json goes, as in the official: a given path, else beside the output, else nowhere."""
    if isinstance(statistics, (str, Path)):
        return Path(statistics).expanduser().absolute()
    if not statistics or output is None:
        return None
    if len(types) > 1:
        return (output if output.is_dir() else output.parent) / "statistics.json"
    return (output.parent if is_file_output(ml, types[0]) else output) / "statistics.json"


def planned_targets(source: Source, output: Path, request: SegmentationRequest) -> dict[str, Path]:
    """Output type -> path for a run, each checked (see :func:`check_target`) before any work."""
    output = output.expanduser().absolute()
    paths = output_paths(output, request.output_types, request.task, request.multilabel)
    several = len(paths) > 1
    for kind, path in paths.items():
        check_target(source, path, kind, request.multilabel or several, request.overwrite)
        check_dicom_output(source, kind)
        if kind in SURFACE_OUTPUT_TYPES:
            surfaces.check_available()
    return paths


def check_target(source: Source, path: Path, kind: str, ml: bool, policy: str) -> None:
    """Refuse a bad or occupied output before hours of computing, not after.

    Never the input itself; under the ``outputs`` policy not a file that no run wrote (replacing a segmentation
    output loses nothing, replacing anything else may); under ``never`` nothing that exists.
    """
    if kind not in OUTPUT_TYPES:
        raise InvalidOptionError(f"Unknown output type '{kind}'. Valid: {', '.join(OUTPUT_TYPES)}.")
    if _is_input(source, path):
        raise InvalidOptionError(f"Output {path} is the input itself; choose another output path.")
    if kind in SURFACE_OUTPUT_TYPES and (path.is_file() or path.suffix.lower() in (".stl", ".obj")):
        raise InvalidOptionError(f"Output {path}: output type {kind} writes a folder with one .{kind} file per "
                                 f"structure; give a folder name, such as {path.parent / path.stem}_{kind}.")
    if policy == "outputs" and path.is_file() and not is_segmentation_file(path, kind, ml):
        raise OutputExistsError(f"{path} exists and is not a segmentation output; choose another output "
                                f"path, or pass --overwrite to replace it anyway.")
    imageio.check_output_path(path, policy != "never")
    if is_file_output(ml, kind) and path.is_dir():
        example = "seg.dcm" if kind in DICOM_OUTPUT_TYPES else "seg.nii.gz with --ml, seg.seg.nrrd"
        raise InvalidOptionError(f"Output {path} is a folder; this output needs a file name ({example}).")


def _is_input(source: Source, path: Path) -> bool:
    if isinstance(source, nib.Nifti1Image):
        return False
    source = Path(source).expanduser()
    return path.exists() and source.exists() and path.resolve() == source.resolve()


def is_segmentation_file(path: Path, kind: str, ml: bool) -> bool:
    """Whether an existing file looks like what this output writes (so replacing it loses no data)."""
    try:
        if kind == "nifti":  # label images are unsigned integers; images such as CTs are not
            return ml and nib.load(path).get_data_dtype().kind == "u"
        if kind == "seg_nrrd":
            with path.open("rb") as handle:
                head = handle.read(1 << 16)
            return head.startswith(b"NRRD") and b"Segment0_" in head
        import pydicom

        return pydicom.dcmread(path, stop_before_pixels=True).get("Modality") in ("SEG", "RTSTRUCT")
    except Exception:  # unreadable as that format: not ours
        return False


def check_dicom_output(source: Source, output_type: str) -> None:
    """Refuse a DICOM output that cannot be written, before computing: non-DICOM input or a missing package.

    A path that does not exist passes, so that reading it reports it as not found rather than as not DICOM.
    """
    if output_type not in DICOM_OUTPUT_TYPES:
        return
    not_found = not isinstance(source, nib.Nifti1Image) and not Path(source).expanduser().exists()
    if not (not_found or is_dicom_input(source)):
        raise InvalidOptionError(DICOM_INPUT_NEEDED)
    missing = [name for module, name in DICOM_OUTPUT_MODULES[output_type].items() if find_spec(module) is None]
    if missing:
        names = " ".join(missing)
        raise InvalidOptionError(f"Output type {output_type} needs the Python package(s) {names}: pip install {names}")


def is_dicom_input(source: Optional[Source]) -> bool:
    return source is not None and not isinstance(source, nib.Nifti1Image) and imageio.is_dicom_source(source)
