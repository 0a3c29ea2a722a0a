"""``--save_probabilities``: the class probabilities of the task's model, in the files nnU-Net writes.

The official tool runs nnU-Net with ``save_probabilities=True`` for the task's own model(s) and copies nnU-Net's
``s01.npz`` (key ``probabilities``: classes × z × y × x, float32, on the grid nnU-Net was given: the input turned
to RAS, cropped where the task crops, resampled to the task's spacing) to the given path, and ``s01.pkl`` (the
properties nnU-Net's reader and preprocessing recorded) beside it with the suffix ``.pkl``. After each part model
the copy is replaced, so a multi-model task leaves the last part's probabilities; of three slabs, the first's.
Here the same model call returns them (nnU-Net's own preprocessing, sliding window and export functions), and the
files are written once, atomically.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np

from ..errors import InvalidOptionError, OutputExistsError
from ..imageio import atomic_output, check_output_path

NPZ_KEY = "probabilities"


@dataclass(frozen=True)
class ProbabilityTarget:
    """Where the probabilities of a run go, and the model grid's affine that nnU-Net's reader would have recorded."""

    path: Path
    affine: np.ndarray
    overwrite: bool = True

    @property
    def pickle_path(self) -> Path:
        return pickle_path(self.path)


def pickle_path(path: Path) -> Path:
    """The properties file beside the probabilities, named as the official names it (``Path.with_suffix``)."""
    return Path(path).with_suffix(".pkl")


def reader_properties(affine: np.ndarray, shape: Sequence[int]) -> dict:
    """What nnU-Net's ``NibabelIOWithReorient`` records of the model's input file, which the official writes with
    this affine: the affine as read back from the NIfTI header (single precision there) and after reorientation to
    RAS (the identity for the RAS grids the models get)."""
    stored = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), affine)
    original = nib.Nifti1Image.from_bytes(stored.to_bytes()).affine
    orientation = nib.orientations.io_orientation(original)
    reoriented = original @ nib.orientations.inv_ornt_aff(orientation, tuple(shape))
    return {"original_affine": original, "reoriented_affine": reoriented}


def check_target(path: Path, policy: str) -> None:
    """Refuse, before any work, a probabilities path that may not be written under the run's overwrite policy:
    under ``outputs`` an existing file is replaced only when it holds nnU-Net probabilities."""
    if Path(path).suffix.lower() == ".pkl":
        raise InvalidOptionError(f"--save_probabilities {path}: the properties go beside it as .pkl; give the "
                                 f"probabilities another name, such as {Path(path).with_suffix('.npz')}.")
    for target in (Path(path), pickle_path(path)):
        if policy == "outputs" and target.is_file() and not _is_probabilities_output(target):
            raise OutputExistsError(f"{target} exists and is not a probabilities output; choose another path for "
                                    f"--save_probabilities, or pass --overwrite to replace it anyway.")
        check_output_path(target, policy != "never", directory=False)


def _is_probabilities_output(path: Path) -> bool:
    try:
        if path.suffix == ".pkl":
            with path.open("rb") as handle:
                return "bbox_used_for_cropping" in pickle.load(handle)  # nnU-Net's preprocessing properties
        with np.load(path) as archive:
            return list(archive.files) == [NPZ_KEY]
    except Exception:  # not readable as that format: not ours
        return False


def write_probabilities(target: ProbabilityTarget, probabilities: np.ndarray, properties: dict) -> None:
    """The ``.npz`` (compressed, one array named ``probabilities``) and the ``.pkl``, as nnU-Net writes them."""
    with atomic_output(target.path, target.overwrite) as temp, open(temp, "wb") as handle:
        np.savez_compressed(handle, **{NPZ_KEY: probabilities})  # a file object: numpy adds no .npz suffix
    with atomic_output(target.pickle_path, target.overwrite) as temp, open(temp, "wb") as handle:
        pickle.dump(properties, handle)


def load_probabilities(path: Path) -> tuple[np.ndarray, Optional[dict]]:
    """The probabilities and, where present, the properties beside them (for scripts and tests)."""
    with np.load(path) as archive:
        probabilities = archive[NPZ_KEY]
    properties = None
    if pickle_path(path).is_file():
        with pickle_path(path).open("rb") as handle:
            properties = pickle.load(handle)
    return probabilities, properties
