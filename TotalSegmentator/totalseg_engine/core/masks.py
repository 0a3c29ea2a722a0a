"""Union masks of related classes (the logic of ``totalseg_combine_masks``), with the official groups.

A group is a fixed list of class names; the result is a binary uint8 mask that is 1 wherever any
of them is. Input is either a multilabel label map (its class map taken from the NIfTI label-table
extension TotalSegmentator writes) or an output folder with one ``<class>.nii.gz`` per class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Union

import nibabel as nib
import numpy as np

from ..errors import InvalidInputError, UnknownTaskError
from ..imageio import read_label_map
from ..tasks import _unknown_message, get_task

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
