"""Writing a segmentation in each output format, atomically: NIfTI (class files or multilabel), Slicer's
``.seg.nrrd``, surfaces (STL or OBJ), and for DICOM inputs DICOM SEG or an RT Structure Set referencing the input
series."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from .. import imageio, terminology
from ..core.pipeline import Result
from ..errors import InvalidOptionError
from .targets import DICOM_INPUT_NEEDED, DICOM_OUTPUT_TYPES, SURFACE_OUTPUT_TYPES, Source, is_dicom_input


def write_result(result: Result, output: Path, ml: bool, output_type: str, overwrite: bool,
                 source: Optional[Source] = None) -> None:
    """Write the segmentation in one format; ``source`` is the input that was segmented (DICOM outputs need the
    DICOM folder or zip, whose instances they reference)."""
    if output_type in DICOM_OUTPUT_TYPES:
        _write_dicom(result, output, output_type, overwrite, source)
    elif output_type in SURFACE_OUTPUT_TYPES:
        from .surfaces import write_surfaces

        write_surfaces(result.data, result.image, result.label_map, output, output_type, overwrite=overwrite)
    elif output_type == "seg_nrrd":
        present = {int(v) for v in np.unique(result.data)} & set(result.label_map)
        segments = segment_infos({k: v for k, v in result.label_map.items() if k in present})
        imageio.write_seg_nrrd(result.data, result.image, segments, output, overwrite=overwrite)
    elif ml:
        imageio.write_multilabel_nifti(result.data, result.image, result.label_map, output, overwrite=overwrite)
    else:
        imageio.write_class_files(result.data, result.image, result.label_map, output, overwrite=overwrite)


def _write_dicom(result: Result, output: Path, output_type: str, overwrite: bool, source: Optional[Source]) -> None:
    from . import dicom

    if not is_dicom_input(source):
        raise InvalidOptionError(DICOM_INPUT_NEEDED)
    writer = dicom.write_dicom_seg if output_type == "dicom_seg" else dicom.write_rtstruct
    with imageio.dicom_series_folder(source) as folder:
        writer(result.image, result.label_map, folder, output, overwrite=overwrite)


def segment_infos(label_map: dict[int, str], use_standard_names: bool = True) -> list[imageio.SegmentInfo]:
    """Segment names, colours and Slicer terminology tags for .seg.nrrd output.

    The same as the Slicer panel gives its segments, whose "use standard segment names" option is on by
    default: display names ("Vertebra T7"); ``use_standard_names=False`` keeps the class names instead.
    """
    infos = []
    for label, name in sorted(label_map.items()):
        display, color, entry = terminology.segment_info(name, use_standard_names)
        infos.append(imageio.SegmentInfo(label=label, name=display, color=color, terminology=entry))
    return infos


def labelled_image(result: Result) -> nib.Nifti1Image:
    """The label image with its class names in the header, as the official returns it (the result is kept)."""
    image = nib.Nifti1Image(result.image.dataobj, result.image.affine, result.image.header.copy())
    image.header.extensions.append(imageio.label_table_extension(result.label_map))
    return image
