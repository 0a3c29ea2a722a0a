"""The Python API: ``totalsegmentator(input, output, ...)`` with the official function's main options.

Takes a path (NIfTI, NRRD, DICOM folder or zip) or a nibabel image, returns the multilabel
segmentation as a nibabel image on the input's grid, and optionally writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import nibabel as nib
import numpy as np

from . import imageio, pipeline, terminology
from .errors import InvalidOptionError
from .progress import ProgressCallback, ignore_progress

OUTPUT_TYPES = ("nifti", "seg_nrrd")


def totalsegmentator(input: Union[str, Path, nib.Nifti1Image], output: Union[str, Path, None] = None,
                     ml: bool = False, task: str = "total", fast: bool = False, fastest: bool = False,
                     roi_subset: Optional[Sequence[str]] = None, robust_crop: bool = False,
                     body_seg: bool = False, force_split: bool = False,
                     remove_small_blobs: Union[bool, float] = False, higher_order_resampling: bool = False,
                     statistics: bool = False, stats_include_incomplete: bool = False, device: str = "gpu",
                     output_type: str = "nifti", overwrite: bool = False, download: bool = True,
                     progress: ProgressCallback = ignore_progress,
                     should_cancel: Callable[[], bool] = lambda: False,
                     runner_factory: Optional[pipeline.RunnerFactory] = None) -> nib.Nifti1Image:
    """Segment ``input``; write to ``output`` when given; return the label image.

    ``output`` is a file for ``ml=True`` (multilabel NIfTI) or ``output_type="seg_nrrd"``, otherwise a
    folder with one NIfTI per class. Existing outputs are kept unless ``overwrite`` is set.
    """
    options = pipeline.Options(
        task=task, speed="fastest" if fastest else ("fast" if fast else "normal"),
        roi_subset=list(roi_subset) if roi_subset else None, robust_crop=robust_crop, body_seg=body_seg,
        force_split=force_split, remove_small_blobs=remove_small_blobs,
        higher_order_resampling=higher_order_resampling, statistics=statistics,
        stats_include_incomplete=stats_include_incomplete, device=device, download=download)
    if output is not None:
        output = _check_output(Path(output), ml, output_type, overwrite)
    result = pipeline.segment(input, options, progress, should_cancel, runner_factory)
    if output is not None:
        write_result(result, output, ml, output_type, overwrite)
    return result.image


def _check_output(output: Path, ml: bool, output_type: str, overwrite: bool) -> Path:
    """Refuse a bad or occupied output before hours of computing, not after."""
    if output_type not in OUTPUT_TYPES:
        raise InvalidOptionError(f"Unknown output type '{output_type}'. Valid: {', '.join(OUTPUT_TYPES)}.")
    output = output.expanduser().absolute()
    imageio.check_output_path(output, overwrite)
    if (ml or output_type == "seg_nrrd") and output.is_dir():
        raise InvalidOptionError(f"Output {output} is a folder; with --ml give a file name such as seg.nii.gz.")
    return output


def write_result(result: pipeline.Result, output: Path, ml: bool, output_type: str, overwrite: bool) -> None:
    """Write the segmentation (and statistics.json beside it) atomically."""
    if output_type == "seg_nrrd":
        present = {int(v) for v in np.unique(result.data)} & set(result.label_map)
        segments = segment_infos({k: v for k, v in result.label_map.items() if k in present})
        imageio.write_seg_nrrd(result.data, result.image, segments, output, overwrite=overwrite)
    elif ml:
        imageio.write_multilabel_nifti(result.data, result.image, result.label_map, output, overwrite=overwrite)
    else:
        imageio.write_class_files(result.data, result.image, result.label_map, output, overwrite=overwrite)
    if result.statistics is not None:
        from . import statistics

        folder = output.parent if (ml or output_type == "seg_nrrd") else output
        statistics.write_statistics(result.statistics, folder / "statistics.json")


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
