"""Label arrays as every writer stores them: unsigned integers on the reference grid, names and labels unique."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import nibabel as nib
import numpy as np


def label_array(data: np.ndarray, ref_img: nib.Nifti1Image, max_label: int) -> np.ndarray:
    """``data`` as the smallest unsigned integer array holding labels up to ``max_label``, on ref's grid."""
    array = np.asanyarray(data)
    if array.shape != tuple(ref_img.shape[:3]):
        raise ValueError(f"Label array shape {array.shape} does not match the reference {ref_img.shape[:3]}.")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"Label array has non-numeric type {array.dtype}.")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ValueError("Label array holds non-integer values.")
    if array.size and (array.min() < 0 or array.max() > max_label):
        raise ValueError(f"Label values must lie in 0..{max_label}, got {array.min()}..{array.max()}.")
    dtype = np.uint8 if max_label <= 255 else np.uint16
    return array.astype(dtype, copy=False)


def check_unique(values: Sequence, what: str) -> None:
    duplicates = sorted((v for v, n in Counter(values).items() if n > 1), key=str)
    if duplicates:
        raise ValueError(f"Duplicate {what}: {', '.join(map(str, duplicates))}.")

