"""DICOM Segmentation (SEG) output for DICOM input, coded with the terminology table.

The segmentation is written as a binary SEG that references the source series' own instances, frame by
frame, with one segment per class present: SNOMED CT category, type (and laterality modifier), anatomic
region, the display name as segment label and the recommended colour in CIELab. ``highdicom`` is imported
only here, so the engine runs without it unless this output is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import nibabel as nib
import numpy as np

from . import __version__, imageio, terminology
from .errors import InvalidInputError
from .terminology import Code

PathLike = Union[str, Path]
ALGORITHM_NAME = "TotalSegmentator"


def _coded(code: Code):
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _segment_description(number: int, item: terminology.TerminologyEntry):
    """One segment's description: codes, modifiers, label and colour (modifiers go into the code items)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=__version__)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=item.display_name,
        segmented_property_category=_coded(item.category),
        segmented_property_type=_coded(item.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[_coded(item.region)] if item.region else None,
        display_color=hd.color.CIELabColor(*terminology.rgb_to_lab(item.color)),
    )
    if item.type_modifier:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _coded(item.type_modifier)]
    if item.region_modifier:
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_coded(item.region_modifier)]
    return description


def _complete_identifiers(datasets: list) -> None:
    """Fill identifiers that anonymisation blanked, so the SEG can reference the instances at all.

    SOP class and instance UIDs are taken from each file's meta information (which keeps them); an empty
    study or series UID becomes one derived from the frame of reference, the same for every instance and
    every run. Complete series are left untouched.
    """
    from pydicom.uid import generate_uid

    seed = str(datasets[0].get("FrameOfReferenceUID", "")) or str(datasets[0].file_meta.MediaStorageSOPInstanceUID)
    derived = {key: generate_uid(entropy_srcs=[seed, key]) for key in ("StudyInstanceUID", "SeriesInstanceUID")}
    for dataset in datasets:
        dataset.SOPClassUID = dataset.get("SOPClassUID") or dataset.file_meta.MediaStorageSOPClassUID
        dataset.SOPInstanceUID = dataset.get("SOPInstanceUID") or dataset.file_meta.MediaStorageSOPInstanceUID
        for key, uid in derived.items():
            if not dataset.get(key):
                setattr(dataset, key, uid)


def _source_datasets(folder: Path) -> list:
    """The instances of the series the engine reads from ``folder``, in its slice order (SimpleITK's)."""
    import pydicom

    files = imageio._pick_series(imageio._dicom_series(folder), folder)
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    _complete_identifiers(datasets)
    return datasets


def _labels_on_source_grid(labels: Union[nib.Nifti1Image, np.ndarray], reference: nib.Nifti1Image) -> np.ndarray:
    """The label voxels on the grid the engine reads the series onto (x = column, y = row, z = slice).

    A NIfTI image on another voxel order of the same volume (e.g. the official LAS conversion) is
    reoriented onto it; a bare array must already be on it.
    """
    if isinstance(labels, np.ndarray):
        array = labels
    else:
        image = labels if imageio.same_grid(labels, reference) else imageio.reorient_to_grid(labels, reference)
        array = np.asanyarray(image.dataobj)
    if array.shape != reference.shape[:3]:
        raise ValueError(f"Labels of shape {array.shape} do not fit the series' grid {reference.shape[:3]}.")
    return np.asarray(array)


def _segment_frames(array: np.ndarray, present: list[int]) -> np.ndarray:
    """Frames (slice, row, column) holding segment numbers 1..n for the present labels, 0 elsewhere."""
    numbers = np.zeros(int(array.max(initial=0)) + 1, dtype=np.uint16)
    numbers[present] = np.arange(1, len(present) + 1)
    return numbers[array.astype(np.intp)].transpose(2, 1, 0)


def dicom_seg(labels: Union[nib.Nifti1Image, np.ndarray], label_map: Mapping[int, str],
              source_dicom_folder: PathLike, series_description: Optional[str] = None):
    """The DICOM SEG dataset (highdicom ``Segmentation``) of a label image over a DICOM series."""
    import highdicom as hd

    folder = Path(source_dicom_folder)
    if not folder.is_dir():
        raise InvalidInputError(f"DICOM SEG output needs the source DICOM folder; {folder} is not a folder.")
    datasets = _source_datasets(folder)
    array = _labels_on_source_grid(labels, imageio.read_image(folder))
    present = sorted({int(value) for value in np.unique(array)} & set(label_map))
    descriptions = [_segment_description(i + 1, terminology.entry(label_map[label])) for i, label in enumerate(present)]
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=_segment_frames(array, present),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=__version__,
        device_serial_number="none",
        series_description=series_description or "TotalSegmentator segmentation",
    )


def write_dicom_seg(labels: Union[nib.Nifti1Image, np.ndarray], label_map: Mapping[int, str],
                    source_dicom_folder: PathLike, path: PathLike, overwrite: bool = False) -> Path:
    """Write the segmentation as a DICOM SEG file referencing the source series (atomically)."""
    segmentation = dicom_seg(labels, label_map, source_dicom_folder)
    with imageio.atomic_output(path, overwrite) as temp:
        segmentation.save_as(temp)
    return Path(path)
