"""Union masks of related classes (``totalseg_combine_masks``), with the official groups.

A group is a fixed list of class names; the result is a binary uint8 mask that is 1 wherever any
of them is. Input is either a multilabel label map (its class map taken from the NIfTI label-table
extension TotalSegmentator writes) or an output folder with one ``<class>.nii.gz`` per class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import nibabel as nib
import numpy as np

from .errors import InvalidInputError, TotalSegmentatorError, UnknownTaskError
from .imageio import atomic_output, label_table_extension, read_label_map
from .tasks import _unknown_message, get_task

Group = Union[str, Sequence[str]]

_RIBS = tuple(f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13))
_VERTEBRAE = (
    ("sacrum", "vertebrae_S1")
    + tuple(f"vertebrae_L{i}" for i in range(5, 0, -1))
    + tuple(f"vertebrae_T{i}" for i in range(12, 0, -1))
    + tuple(f"vertebrae_C{i}" for i in range(7, 0, -1))
)
_LUNG_LEFT = ("lung_upper_lobe_left", "lung_lower_lobe_left")
_LUNG_RIGHT = ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right")

GROUPS: dict[str, tuple[str, ...]] = {
    "lung": _LUNG_LEFT + _LUNG_RIGHT,
    "lung_left": _LUNG_LEFT,
    "lung_right": _LUNG_RIGHT,
    "vertebrae": _VERTEBRAE,
    "ribs": _RIBS,
    "vertebrae_ribs": _VERTEBRAE + _RIBS,
    # The official CLI offers "heart" but 2.18 has no class list for it and fails; since v2 the
    # total task has a single "heart" class, which is what the group means.
    "heart": ("heart",),
    "pelvis": ("femur_left", "femur_right", "hip_left", "hip_right"),
    "body": ("body_trunc", "body_extremities"),
}
"""Combine groups by name, each the class names it unites (official ``combine_masks``)."""


def group_classes(group: Group) -> tuple[str, ...]:
    """Class names of a group name, or the given class names themselves (a custom group)."""
    if not isinstance(group, str):
        return tuple(group)
    if group not in GROUPS:
        raise UnknownTaskError(_unknown_message("mask group", group, list(GROUPS)))
    return GROUPS[group]


def combine(seg: np.ndarray, group: Group, class_map: Mapping[int, str]) -> np.ndarray:
    """Binary uint8 union of a group's classes in a multilabel label map with its class map."""
    names = group_classes(group)
    label_of = {name: label for label, name in class_map.items()}
    missing = [name for name in names if name not in label_of]
    if missing:
        raise InvalidInputError(f"The label map has no class {', '.join(missing)}; cannot combine it.")
    return np.isin(np.asanyarray(seg), [label_of[name] for name in names]).astype(np.uint8)


def combine_files(mask_dir: Union[str, Path], group: Group) -> nib.Nifti1Image:
    """Union of a group's per-class files ``<class>.nii.gz`` (voxels > 0.5) in an output folder.

    Every file of the group must exist, as in the official tool: a partial union would look
    complete. The geometry is that of the group's first class file.
    """
    mask_dir = Path(mask_dir)
    files = [mask_dir / f"{name}.nii.gz" for name in group_classes(group)]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise InvalidInputError(
            f"Missing in {mask_dir}: {', '.join(missing)}. Did TotalSegmentator run successfully?"
        )
    reference = nib.load(files[0])
    combined = np.zeros(reference.shape[:3], dtype=np.uint8)
    for path in files:
        mask = np.asanyarray(nib.load(path).dataobj)
        if mask.shape[:3] != combined.shape:
            raise InvalidInputError(f"{path.name} has shape {mask.shape}, expected {combined.shape}.")
        combined[mask.reshape(combined.shape) > 0.5] = 1
    return nib.Nifti1Image(combined, reference.affine)


def combine_path(path: Union[str, Path], group: Group, default_task: str = "total") -> nib.Nifti1Image:
    """Combine from an output folder or a multilabel file, like ``totalseg_combine_masks -i``.

    A multilabel file without an embedded label table is read with ``default_task``'s classes.
    """
    path = Path(path)
    if path.is_dir():
        return combine_files(path, group)
    if not path.is_file():
        raise InvalidInputError(f"Input not found: {path}")
    image = nib.load(path)
    class_map = read_label_map(image) or get_task(default_task).classes
    return nib.Nifti1Image(combine(np.asanyarray(image.dataobj), group, class_map), image.affine)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="totalseg_combine_masks",
        description="Combine TotalSegmentator classes into one binary mask.",
    )
    parser.add_argument(
        "-i",
        dest="input",
        type=Path,
        required=True,
        metavar="DIR_OR_FILE",
        help="TotalSegmentator output folder, or a multilabel NIfTI file.",
    )
    parser.add_argument(
        "-o", dest="output", type=Path, required=True, metavar="OUT.nii.gz", help="Path of the combined mask."
    )
    parser.add_argument(
        "-m",
        "--masks",
        dest="group",
        required=True,
        metavar="GROUP",
        help=f"Group to combine: {', '.join(GROUPS)}.",
    )
    parser.add_argument(
        "--task",
        default="total",
        help="Task whose classes a multilabel file without a label table has (default: total).",
    )
    parser.add_argument(
        "-ml",
        "--multilabel",
        action="store_true",
        help="Write the mask with a label table naming label 1 after the group, as a multilabel file.",
    )
    parser.add_argument(
        "-t",
        "--nora_tag",
        default="None",
        metavar="PROJECT",
        help="Accepted for compatibility with the official command; tagging in the nora database is not done.",
    )
    return parser


def combine_main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry ``totalseg_combine_masks``; user errors print one line and return 1.

    ``-ml`` and ``-t`` mean what they mean to the official command, so its scripts run unchanged.
    """
    args = _parser().parse_args(argv)
    try:
        image = combine_path(args.input, args.group, args.task)
        if args.multilabel:
            image.header.extensions.append(label_table_extension({1: args.group}))
        with atomic_output(args.output, overwrite=True) as tmp:
            nib.save(image, tmp)
    except TotalSegmentatorError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    if args.nora_tag not in ("None", ""):
        print(f"Note: not tagged in nora project {args.nora_tag}; nora is not part of this tool.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(combine_main())
