"""``-r/--radiomics``: pyradiomics' shape and first-order features of every class file, ``statistics_radiomics.json``.

As the official computes them: one pyradiomics extractor per mask file of the output folder (the derived masks of
task body included), resampled to 3 mm, features rounded to 4 decimals; a mask that is empty (or that pyradiomics
cannot measure) gets 0 for the official's list of standard feature names, with a warning. pyradiomics is an
optional extra (``pip install ".[radiomics]"``); without it the run stops before any work and says why.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np

from ..errors import InvalidOptionError
from ..imageio import atomic_output
from ..progress import ProgressCallback, ProgressEvent
from ..request import SegmentationRequest

Source = Union[str, Path, nib.Nifti1Image]
RADIOMICS_FILE = "statistics_radiomics.json"
SETTINGS = {"resampledPixelSpacing": [3, 3, 3], "geometryTolerance": 1e-3, "featureClass": ["shape"]}
MEASURED_CLASSES = ("shape", "firstorder")
ZERO_CLASSES = ("shape", "firstorder", "glcm", "gldm", "glrlm", "glszm", "ngtdm")
"""The feature classes whose names an unmeasurable mask reports as 0 (the official's standard list)."""
NOT_INSTALLED = ("radiomics needs the Python package pyradiomics (the radiomics extra: pip install '.[radiomics]'). "
                 "pyradiomics publishes wheels for Python 3.7 to 3.9 only, built against numpy 1, and its source "
                 "releases do not build on later Pythons (3.1.0's lacks a C header, 3.0.1's setup fails), so "
                 "radiomics runs on Python 3.9 (Slicer 5.8's) with numpy < 2.")


def check_can_run(source: Source, targets: dict[str, Path], request: SegmentationRequest) -> None:
    """Refuse radiomics before any work where it cannot run: no pyradiomics, no class files, a DICOM input."""
    if find_spec("radiomics") is None:
        raise InvalidOptionError(NOT_INSTALLED)
    if request.multilabel or list(targets) != ["nifti"]:
        raise InvalidOptionError("radiomics measures the class files: give an output folder with output type nifti "
                                 "alone and no --ml.")
    if not isinstance(source, nib.Nifti1Image) and (Path(source).is_dir() or str(source).lower().endswith(".zip")):
        raise InvalidOptionError("radiomics is not supported for DICOM input (as in the official); convert the "
                                 "series to NIfTI first.")


def write_radiomics(source: Source, mask_dir: Path, path: Path, progress: ProgressCallback) -> Path:
    """Features of every ``*.nii.gz`` mask in ``mask_dir`` against the input image, written to ``path``."""
    masks = sorted(mask_dir.glob("*.nii.gz"))
    with tempfile.TemporaryDirectory(prefix="totalseg_radiomics_") as temp:
        image = source
        if isinstance(source, nib.Nifti1Image):  # pyradiomics reads files
            image = Path(temp) / "ct.nii.gz"
            nib.save(source, image)
        features = {}
        for index, mask in enumerate(masks, start=1):
            progress(ProgressEvent(stage="radiomics", message=f"Radiomics of {mask.name}",
                                   fraction=index / max(len(masks), 1)))
            features[mask.name.split(".")[0]] = mask_features(Path(image), mask)
    with atomic_output(path, overwrite=True) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(features, handle, indent=4)
    return path


def mask_features(image: Path, mask: Path) -> dict[str, float]:
    """One mask's shape and first-order features (names without pyradiomics' ``original_`` prefix)."""
    from radiomics import featureextractor

    try:
        if len(np.unique(np.asanyarray(nib.load(mask).dataobj))) <= 1:
            warnings.warn(f"{mask.name} is empty or full; its radiomics features are set to 0.", stacklevel=2)
            return zero_features()
        extractor = featureextractor.RadiomicsFeatureExtractor(**SETTINGS)
        extractor.disableAllFeatures()
        for name in MEASURED_CLASSES:
            extractor.enableFeatureClassByName(name)
        measured = extractor.execute(str(image), str(mask))
    except Exception as err:  # what the official does with any pyradiomics failure: zeros and a warning
        warnings.warn(f"radiomics of {mask.name} failed ({err}); its features are set to 0.", stacklevel=2)
        return zero_features()
    return {key[len("original_"):]: round(float(value), 4) for key, value in measured.items()
            if key.startswith("original_")}


def zero_features() -> dict[str, float]:
    """0 for every current (not deprecated) feature of the standard classes, named ``<class>_<feature>``."""
    from radiomics import getFeatureClasses

    classes = getFeatureClasses()
    return {f"{name}_{feature}": 0.0 for name in ZERO_CLASSES
            for feature, deprecated in sorted(classes[name].getFeatureNames().items()) if not deprecated}
