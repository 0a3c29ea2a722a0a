"""DICOM Segmentation (SEG) and RT Structure Set (RTSTRUCT) output for DICOM input, named by the terminology.

The segmentation is written as a binary SEG that references the source series' own instances, frame by
frame, with one segment per class present: SNOMED CT category, type (and laterality modifier), anatomic
region, the display name as segment label and the recommended colour in CIELab. ``highdicom`` is imported
only here, so the engine runs without it unless this output is asked for.

The RTSTRUCT (for planning systems, which read contours rather than SEG) is built with pydicom alone: one ROI
per class present with its display name and colour, and per axial slice the outlines of the class as closed
planar contours in patient coordinates, each referencing the slice's instance. Outlines run along the pixel
edges (holes are inner contours of the same ROI, read with the even-odd rule), so filling them gives the
mask back.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Mapping, Optional, Union

import nibabel as nib
import numpy as np
from scipy import ndimage

from .. import __version__, imageio, terminology
from ..errors import InvalidInputError, TotalSegmentatorError
from ..terminology import Code

PathLike = Union[str, Path]
ALGORITHM_NAME = "TotalSegmentator"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# SOP class that RT Referenced Study Sequence items name for the study (Detached Study Management, retired,
# but the value the RT objects in circulation carry and readers expect).
STUDY_REFERENCE_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
# Attributes of the Patient and General Study modules an RTSTRUCT shares with the series it outlines.
SHARED_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                        "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


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
    study, series or frame of reference UID becomes one derived from the frame of reference (or the first
    instance), the same for every instance and every run. Complete series are left untouched.
    """
    from pydicom.uid import generate_uid

    seed = str(datasets[0].get("FrameOfReferenceUID", "")) or str(datasets[0].file_meta.MediaStorageSOPInstanceUID)
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
    derived = {key: generate_uid(entropy_srcs=[seed, key]) for key in keys}
    for dataset in datasets:
        dataset.SOPClassUID = dataset.get("SOPClassUID") or dataset.file_meta.MediaStorageSOPClassUID
        dataset.SOPInstanceUID = dataset.get("SOPInstanceUID") or dataset.file_meta.MediaStorageSOPInstanceUID
        for key, uid in derived.items():
            if not dataset.get(key):
                setattr(dataset, key, uid)


def _source_datasets(folder: Path) -> list:
    """The instances of the series the engine reads from ``folder``, in its slice order (SimpleITK's)."""
    import pydicom

    files = imageio.dicom_series_files(folder)
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


def _series_and_labels(labels: Union[nib.Nifti1Image, np.ndarray], label_map: Mapping[int, str],
                       source_dicom_folder: PathLike, what: str) -> tuple[list, np.ndarray, list[int]]:
    """The source instances, the labels on their grid and the labels present, for the ``what`` output.

    Neither a SEG nor an RTSTRUCT may be empty (both need at least one segment or ROI), so a segmentation
    without any class is refused with a message instead of writing an invalid object.
    """
    folder = Path(source_dicom_folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{what} output needs the source DICOM folder; {folder} is not a folder.")
    datasets = _source_datasets(folder)
    array = _labels_on_source_grid(labels, imageio.read_image(folder))
    present = sorted({int(value) for value in np.unique(array)} & set(label_map))
    if not present:
        raise TotalSegmentatorError(f"No structure was found, and a {what} cannot be empty; nothing was written.")
    return datasets, array, present


def dicom_seg(labels: Union[nib.Nifti1Image, np.ndarray], label_map: Mapping[int, str],
              source_dicom_folder: PathLike, series_description: Optional[str] = None):
    """The DICOM SEG dataset (highdicom ``Segmentation``) of a label image over a DICOM series."""
    import highdicom as hd

    datasets, array, present = _series_and_labels(labels, label_map, source_dicom_folder, "DICOM SEG")
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
    imageio.check_output_path(path, overwrite)  # before the work, not only when moving the file into place
    segmentation = dicom_seg(labels, label_map, source_dicom_folder)
    with imageio.atomic_output(path, overwrite) as temp:
        segmentation.save_as(temp)
    return Path(path)


# --------------------------------------------------------------------------------------------------
# RT Structure Set
# --------------------------------------------------------------------------------------------------


def _slice_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines (row, column in pixels; the first point not repeated) of a 2-D mask.

    The padding closes regions that touch the image edge; level 0.5 puts each outline on the pixel edges
    between inside and outside (corners cut diagonally), so every pixel centre of the mask lies inside it.
    """
    from skimage import measure

    outlines = [_corners(contour[:-1] - 1) for contour in measure.find_contours(np.pad(mask, 1).astype(np.uint8), 0.5)]
    return [outline for outline in outlines if len(outline) >= 3]


def _corners(points: np.ndarray) -> np.ndarray:
    """The vertices of a closed outline where it turns: points inside straight runs add nothing to the polygon.

    Outline points lie on a half-pixel lattice, so a turn is at least 0.25 pixel² of cross product and the
    test is exact; a straight edge then costs two points instead of one per pixel.
    """
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    return points[np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-6]


def _patient_points(outline: np.ndarray, dataset) -> np.ndarray:
    """Pixel positions (row, column) of a slice in patient coordinates (LPS, mm), from the slice's own header.

    Each slice's position is used rather than the volume's grid, so the contours sit on the instances they
    reference even where the reader had to regularise the slice spacing.
    """
    orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(value) for value in dataset.PixelSpacing)
    along_row, along_column = orientation[:3] * column_spacing, orientation[3:] * row_spacing
    origin = np.asarray(dataset.ImagePositionPatient, dtype=float)
    return origin + np.outer(outline[:, 1], along_row) + np.outer(outline[:, 0], along_column)


def _image_reference(dataset):
    """An item naming one source instance (contour image and referenced series sequences)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = dataset.SOPClassUID
    item.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
    return item


def _contour_item(outline: np.ndarray, dataset):
    """One closed planar contour on the slice ``dataset``; coordinates as DS text to 0.1 µm (16 characters max)."""
    from pydicom.dataset import Dataset

    points = _patient_points(outline, dataset)
    item = Dataset()
    item.ContourImageSequence = [_image_reference(dataset)]
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points)
    item.ContourData = [f"{value:.4f}" for value in points.ravel()]
    return item


def _label_contours(array: np.ndarray, label: int, box: tuple[slice, slice, slice], datasets: list) -> list:
    """The contour items of one label, slice by slice within its bounding box (x = column, y = row, z = slice)."""
    columns, rows, slices = box
    offset = np.array([rows.start, columns.start])
    items = []
    for k in range(slices.start, slices.stop):
        mask = (array[columns, rows, k] == label).T  # rows x columns, as the slice is stored
        items += [_contour_item(outline + offset, datasets[k]) for outline in _slice_outlines(mask)]
    return items


def _roi_items(number: int, name: str, color: terminology.RGB, contours: list, frame_uid: str) -> tuple:
    """The three items that make one ROI: structure set ROI, ROI contour, RT ROI observation."""
    from pydicom.dataset import Dataset

    roi, contour, observation = Dataset(), Dataset(), Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = frame_uid
    roi.ROIName = name
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    contour.ReferencedROINumber = number
    contour.ROIDisplayColor = list(color)
    contour.ContourSequence = contours
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.RTROIInterpretedType = ""
    observation.ROIInterpreter = ""
    return roi, contour, observation


def _referenced_frame(datasets: list):
    """Frame of reference, study, series and every instance: how a reader finds the images the contours lie on."""
    from pydicom.dataset import Dataset

    first = datasets[0]
    series, study, frame = Dataset(), Dataset(), Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = [_image_reference(dataset) for dataset in datasets]
    study.ReferencedSOPClassUID = STUDY_REFERENCE_SOP_CLASS
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def _new_instance(first, series_description: Optional[str]):
    """Patient and study copied from the source, a new RTSTRUCT series and instance of this software."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian, generate_uid

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # explicit VR caps a DS value at 64 kB
    if "SpecificCharacterSet" in first:  # the copied names are encoded as the source's
        dataset.SpecificCharacterSet = first.SpecificCharacterSet
    for keyword in SHARED_PATIENT_STUDY:
        setattr(dataset, keyword, first.get(keyword, ""))
    dataset.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = "RTSTRUCT"
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SeriesNumber = 9001
    dataset.SeriesDescription = series_description or "TotalSegmentator structures"
    dataset.OperatorsName = ""
    dataset.InstanceNumber = 1
    dataset.Manufacturer = dataset.ManufacturerModelName = ALGORITHM_NAME
    dataset.SoftwareVersions = __version__
    return dataset


def _structure_set(datasets: list, series_description: Optional[str]):
    """The RTSTRUCT without its ROIs: new instance, structure set label and date, referenced series."""
    dataset = _new_instance(datasets[0], series_description)
    now = datetime.now()
    dataset.InstanceCreationDate = dataset.StructureSetDate = now.strftime("%Y%m%d")
    dataset.InstanceCreationTime = dataset.StructureSetTime = now.strftime("%H%M%S")
    dataset.StructureSetLabel = ALGORITHM_NAME
    dataset.ReferencedFrameOfReferenceSequence = [_referenced_frame(datasets)]
    return dataset


def rtstruct(labels: Union[nib.Nifti1Image, np.ndarray], label_map: Mapping[int, str],
             source_dicom_folder: PathLike, use_standard_names: bool = True,
             series_description: Optional[str] = None):
    """The RT Structure Set (pydicom dataset) of a label image over a DICOM series: one ROI per class present.

    ROIs are numbered 1..n in label order like the SEG's segments, named by display name ("Vertebra T7") or,
    with ``use_standard_names=False``, by class name, and coloured with the terminology's colour.
    """
    datasets, array, present = _series_and_labels(labels, label_map, source_dicom_folder, "DICOM RTSTRUCT")
    dataset = _structure_set(datasets, series_description)
    frame_uid = datasets[0].FrameOfReferenceUID
    boxes = ndimage.find_objects(array, max_label=present[-1])
    items = []
    for number, label in enumerate(present, start=1):
        item = terminology.entry(label_map[label])
        name = item.display_name if use_standard_names else item.class_name
        contours = _label_contours(array, label, boxes[label - 1], datasets)
        items.append(_roi_items(number, name, item.color, contours, frame_uid))
    dataset.StructureSetROISequence, dataset.ROIContourSequence, dataset.RTROIObservationsSequence = map(
        list, zip(*items))
    return dataset


def write_rtstruct(labels: Union[nib.Nifti1Image, np.ndarray], label_map: Mapping[int, str],
                   source_dicom_folder: PathLike, path: PathLike, use_standard_names: bool = True,
                   overwrite: bool = False) -> Path:
    """Write the segmentation as a DICOM RT Structure Set referencing the source series (atomically)."""
    import pydicom

    imageio.check_output_path(path, overwrite)
    dataset = rtstruct(labels, label_map, source_dicom_folder, use_standard_names)
    with imageio.atomic_output(path, overwrite) as temp:
        pydicom.dcmwrite(temp, dataset, enforce_file_format=True)
    return Path(path)
