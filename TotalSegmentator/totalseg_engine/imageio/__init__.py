"""Image IO: reading, validating and writing images for the engine, one module per job.

The pipeline works on :class:`nibabel.Nifti1Image` objects: arrays in x, y, z order with a RAS
voxel-to-world affine. NIfTI files are loaded by nibabel untouched, so the outputs can carry the
input header exactly as the official TotalSegmentator's do. Every other format (NRRD, MetaImage,
DICOM) goes through SimpleITK, whose geometry is LPS; :func:`sitk_to_nifti` and
:func:`nifti_to_sitk` are the single place where LPS and RAS meet.

DICOM grid versus the official conversion
-----------------------------------------
The official package converts a DICOM folder with ``dicom2nifti.dicom_series_to_nifti(...,
reorient_nifti=True)`` (``dcm2niix`` only in a legacy path), which hands back the volume in LAS
voxel order. We keep SimpleITK's index order (columns, rows, slices sorted by position), which for
an axial series is LPS. Both grids hold the same voxel centres: for the test series
``example_ct_dicom`` ours is the official ``example_seg_dicom.nii.gz`` grid with the y (row) axis
reversed, and :func:`reorient_to_grid` maps one onto the other exactly (``Testing/test_imageio.py``
pins this). The official reorients every input to the closest canonical (RAS) orientation before
inference and back afterwards, so the row order changes only the voxel order of a DICOM input's
outputs, not what is predicted; map an output onto the official grid with :func:`reorient_to_grid`.

Writers go through :func:`atomic_output` (:mod:`.atomic`): a result appears complete under its final name or
not at all, and an existing output is only replaced when the caller says so. One module per job:
:mod:`.formats` (suffixes), :mod:`.orientation` (LPS/RAS), :mod:`.grid`, :mod:`.readers`, :mod:`.dicom`,
:mod:`.validation`, :mod:`.atomic`, :mod:`.labels`, :mod:`.label_table` (multilabel NIfTI and class files) and
:mod:`.seg_nrrd`.
"""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# Imported on first use: the Slicer side needs the atomic writer and the grid mapping before (or without) nibabel,
# which the readers and writers need.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "atomic": ("atomic_output", "check_output_path"),
    "dicom": ("dicom_modality", "dicom_series_files", "dicom_series_folder", "is_dicom_source"),
    "formats": ("NIFTI_SUFFIXES", "SITK_SUFFIXES", "SUPPORTED_INPUTS", "split_suffix"),
    "grid": ("array_onto_grid", "grid_corners", "reorient_to_grid", "same_grid"),
    "label_table": ("label_table_extension", "read_label_map", "write_class_files", "write_multilabel_nifti"),
    "orientation": ("nifti_to_sitk", "sitk_to_array", "sitk_to_nifti"),
    "read_errors": ("InputWarning", "PathLike"),
    "readers": ("read_image",),
    "seg_nrrd": ("SegmentInfo", "seg_nrrd_fields", "write_seg_nrrd"),
    "validation": ("load_image", "validate_image"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
