"""The official ``totalsegmentator()`` keywords that have no counterpart of their own in :mod:`api`.

The official 2.18 function takes 40 keywords. Those that mean the same here are plain parameters of
:func:`api.totalsegmentator`; this module decides the rest, so that a script written for the official
package either runs with the same meaning or stops before any work with an error naming the keyword,
never with a ``TypeError``:

- :data:`NO_OPS`: tuning and debugging switches of the official implementation (threads, nora, test
  modes, ...) that change nothing in the result; accepted and ignored.
- :data:`UNSUPPORTED`: features this engine does not have; accepted at the official default, refused
  with :class:`InvalidOptionError` otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .errors import InvalidOptionError

NO_OPS = ("nr_thr_resamp", "nr_thr_saving", "nora_tag", "crop_path", "quiet", "verbose", "test", "debug", "plans",
          "no_derived_masks")
"""Official keywords without effect here: thread counts, the nora database tag, the official's crop
mask folder (unused by its API), console chatter, its test and debug modes, the nnU-Net plans name
(each released model has exactly one), and the switch for task body's body/skin masks, which the
``TotalSegmentator`` command writes but this function does not."""

UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "radiomics": (False, "radiomics features are not computed"),
    "v1_order": (False, "only the current (v2) class order is available"),
    "statistics_normalized_intensities": (False, "only raw intensities are reported in the statistics"),
    "higher_order_resampling_LEGACY": (False, "use higher_order_resampling=True instead"),
    "save_probabilities": (None, "class probabilities are not saved"),
    "report": (None, "no run report is written"),
    "statistics_extra": (False, "only volume and intensity are reported in the statistics"),
    "save_lowres": (False, "outputs are always on the input's grid"),
    "resampling_order": (1, "the resampling is always linear (order 1), as the official default"),
    "model_size": ("big", "only the released full-size models are available"),
}
"""Official keyword -> (official default, why any other value cannot be honoured)."""

OfficialOutputType = Union[str, Sequence[str]]
StatisticsOption = Union[bool, str, Path]


def check_unsupported(values: Mapping[str, Any]) -> None:
    """Refuse, before any work, an official keyword set to a value this engine cannot honour."""
    for name, value in values.items():
        default, reason = UNSUPPORTED[name]
        if value != default:
            raise InvalidOptionError(f"The keyword {name}={value!r} is not supported: {reason}.")


def output_types(output_type: OfficialOutputType) -> list[str]:
    """The official ``output_type`` (one name or a list of names) as a list."""
    types = [output_type] if isinstance(output_type, str) else list(output_type)
    if not types:
        raise InvalidOptionError("output_type is an empty list; give at least one output type.")
    return types


def speed(fast: bool, fastest: bool) -> str:
    """The model resolution the official flags ask for: -f (3 mm) wins over -ff (6 mm), as in the official."""
    return "fast" if fast else ("fastest" if fastest else "normal")


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
    suffixes = {"nifti": ".nii.gz", "seg_nrrd": ".seg.nrrd", "dicom_seg": "_seg.dcm", "dicom_rtstruct": "_rtstruct.dcm"}
    return {kind: base_dir / f"{base}{suffixes.get(kind, '')}" for kind in types}


def statistics_file(statistics: StatisticsOption, output: Optional[Path], ml: bool,
                    types: Sequence[str]) -> Optional[Path]:
    """Where statistics.json goes, as in the official: a given path, else beside the output, else nowhere."""
    if isinstance(statistics, (str, Path)):
        return Path(statistics).expanduser().absolute()
    if not statistics or output is None:
        return None
    if len(types) > 1:
        return (output if output.is_dir() else output.parent) / "statistics.json"
    beside = ml or types[0] in ("seg_nrrd", "dicom_seg", "dicom_rtstruct")  # outputs that are one file
    return (output.parent if beside else output) / "statistics.json"


def robust_roi(roi_subset: Optional[Sequence[str]], roi_subset_robust: Optional[Sequence[str]],
               robust_crop: bool) -> tuple[Optional[list[str]], bool]:
    """(roi_subset, robust_crop): the official ``roi_subset_robust`` is a roi_subset cropped with the 3 mm model."""
    if roi_subset_robust is not None:
        roi_subset, robust_crop = roi_subset_robust, True
    if isinstance(roi_subset, str):
        raise InvalidOptionError("roi_subset must be a list of class names, not a string.")
    return (list(roi_subset) if roi_subset else None), robust_crop
