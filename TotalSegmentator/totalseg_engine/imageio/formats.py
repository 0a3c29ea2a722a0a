"""Which files the engine reads and writes, by name: suffixes, compound suffixes kept whole."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_INPUTS = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM folder or a .zip of one"
)
COMPOUND_SUFFIXES = (".nii.gz", ".seg.nrrd")


def has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    """Whether ``path``'s name ends with one of ``suffixes``, ignoring case."""
    return path.name.lower().endswith(tuple(suffixes))


def split_suffix(name: str) -> tuple[str, str]:
    """``(stem, suffix)`` keeping compound suffixes such as ``.nii.gz`` whole, so writers pick the format."""
    for compound in COMPOUND_SUFFIXES:
        if name.lower().endswith(compound) and len(name) > len(compound):
            return name[: -len(compound)], name[-len(compound):]
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix

