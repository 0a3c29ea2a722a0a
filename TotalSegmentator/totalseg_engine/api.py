"""The Python API: ``totalsegmentator(input, output, ...)``, called like the official 2.18 function.

Takes a path (NIfTI, NRRD, DICOM folder or zip) or a nibabel image, returns the multilabel
segmentation as a nibabel image on the input's grid, and optionally writes it: NIfTI, a Slicer
.seg.nrrd, or for DICOM input a DICOM SEG or RT Structure Set referencing the input series.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import nibabel as nib
import numpy as np

from . import api_options, imageio, licensing, pipeline, terminology
from .errors import InvalidOptionError
from .progress import ProgressCallback, ignore_progress

DICOM_OUTPUT_TYPES = ("dicom_seg", "dicom_rtstruct")
OUTPUT_TYPES = ("nifti", "seg_nrrd", *DICOM_OUTPUT_TYPES)
FILE_OUTPUT_TYPES = ("seg_nrrd", *DICOM_OUTPUT_TYPES)
DICOM_INPUT_NEEDED = "To use output type dicom_rtstruct or dicom_seg you also have to use a Dicom image as input."
# Python modules each DICOM output needs beyond the engine's own (pip names in the message).
DICOM_OUTPUT_MODULES = {"dicom_seg": {"highdicom": "highdicom"},
                        "dicom_rtstruct": {"pydicom": "pydicom", "skimage": "scikit-image"}}


def totalsegmentator(
        input: Union[str, Path, nib.Nifti1Image], output: Union[str, Path, None] = None, ml: bool = False,
        nr_thr_resamp: int = 1, nr_thr_saving: int = 6, fast: bool = False, nora_tag: Optional[str] = "None",
        preview: bool = False, task: str = "total", roi_subset: Optional[Sequence[str]] = None,
        statistics: api_options.StatisticsOption = False, radiomics: bool = False,
        crop_path: Union[str, Path, None] = None, body_seg: bool = False, force_split: bool = False,
        output_type: api_options.OfficialOutputType = "nifti", quiet: bool = False, verbose: bool = False,
        test: int = 0, skip_saving: bool = False, device: str = "gpu", license_number: Optional[str] = None,
        statistics_exclude_masks_at_border: bool = True, no_derived_masks: bool = False, v1_order: bool = False,
        fastest: bool = False, roi_subset_robust: Optional[Sequence[str]] = None, stats_aggregation: str = "mean",
        remove_small_blobs: Union[bool, float] = False, statistics_normalized_intensities: bool = False,
        robust_crop: bool = False, higher_order_resampling_LEGACY: bool = False,
        higher_order_resampling: bool = False, save_probabilities: Union[str, Path, None] = None,
        debug: bool = False, report: Union[str, Path, None] = None, statistics_extra: bool = False,
        save_lowres: bool = False, resampling_order: int = 1, plans: str = "nnUNetPlans", model_size: str = "big",
        *, stats_include_incomplete: bool = False, runtime: str = "auto", overwrite: bool = False,
        download: bool = True, progress: ProgressCallback = ignore_progress,
        should_cancel: Callable[[], bool] = lambda: False,
        runner_factory: Optional[pipeline.RunnerFactory] = None,
) -> Union[nib.Nifti1Image, tuple[nib.Nifti1Image, dict]]:
    """Segment ``input``; write to ``output`` when given; return the label image (and statistics).

    The parameters are those of the official 2.18 ``totalsegmentator()`` in its order, so scripts written
    for it run unchanged (see :mod:`api_options` for the official keywords that are ignored or refused);
    the keyword-only ones are this engine's own. The returned image carries the class names in the same
    NIfTI label-table extension as the official's; with ``statistics`` (True or the path of the json to
    write) the return is ``(image, statistics)``, as in the official.

    ``output`` is a file for ``ml=True`` (multilabel NIfTI) or ``output_type`` "seg_nrrd", "dicom_seg" or
    "dicom_rtstruct" (the last two only for a DICOM folder or zip as input), otherwise a folder with one NIfTI
    per class; a list of output types writes one file of each beside ``output``. Existing outputs are kept
    unless ``overwrite`` is set. ``runtime`` chooses what runs the network on the CPU: "auto" or
    "torch" (labels identical to the official tool's), "onnxruntime" or "openvino" (faster forward passes, not
    bit-identical), or "nnunet" (nnU-Net's own predictor, as the official package runs it).
    """
    api_options.check_unsupported({
        "radiomics": radiomics, "v1_order": v1_order,
        "statistics_normalized_intensities": statistics_normalized_intensities,
        "higher_order_resampling_LEGACY": higher_order_resampling_LEGACY, "save_probabilities": save_probabilities,
        "report": report, "statistics_extra": statistics_extra, "save_lowres": save_lowres,
        "resampling_order": resampling_order, "model_size": model_size})
    types = api_options.output_types(output_type)
    roi, robust_crop = api_options.robust_roi(roi_subset, roi_subset_robust, robust_crop)
    options = pipeline.Options(
        task=task, speed=api_options.speed(fast, fastest), roi_subset=roi,
        robust_crop=robust_crop, body_seg=body_seg, force_split=force_split, remove_small_blobs=remove_small_blobs,
        higher_order_resampling=higher_order_resampling, statistics=bool(statistics),
        stats_include_incomplete=stats_include_incomplete or not statistics_exclude_masks_at_border,
        device=device, runtime=runtime, download=download, stats_aggregation=stats_aggregation)
    output = None if output is None else Path(output).expanduser().absolute()
    targets = {} if output is None or skip_saving else _targets(output, ml, types, task, overwrite)
    for kind in targets:
        _check_dicom_output(input, kind)
    if license_number is not None:
        licensing.set_license_key(license_number)
    with _source_for(input, targets) as source:  # a zip is extracted once, for reading and writing
        result = pipeline.segment(source, options, progress, should_cancel, runner_factory)
        for kind, target in targets.items():
            write_result(replace(result, statistics=None), target, ml or len(targets) > 1, kind, overwrite,
                         source=source)
        if preview and targets:  # as the official: only when a segmentation is written, beside it
            _write_preview(source, result, targets, ml, task)
    stats_file = api_options.statistics_file(statistics, output, ml, types)
    if stats_file is not None and result.statistics is not None:
        from . import statistics as statistics_module

        statistics_module.write_statistics(result.statistics, stats_file)
    image = labelled_image(result)
    return (image, result.statistics or {}) if statistics else image


def _write_preview(source: Union[str, Path, nib.Nifti1Image], result: pipeline.Result,
                   targets: Mapping[str, Path], ml: bool, task: str) -> None:
    """``preview_<task>.png`` in the output folder (the class-file folder, else the folder of the file)."""
    from .preview import write_preview

    kind, first = next(iter(targets.items()))
    folder = first if kind == "nifti" and not ml and len(targets) == 1 else first.parent
    write_preview(source, result.image, result.label_map, folder / f"preview_{task}.png")


def labelled_image(result: pipeline.Result) -> nib.Nifti1Image:
    """The label image with its class names in the header, as the official returns it (the result is kept)."""
    image = nib.Nifti1Image(result.image.dataobj, result.image.affine, result.image.header.copy())
    image.header.extensions.append(imageio.label_table_extension(result.label_map))
    return image


def _targets(output: Path, ml: bool, types: Sequence[str], task: str, overwrite: bool) -> dict[str, Path]:
    """Output type -> path to write, each checked before hours of computing; several types go side by side."""
    paths = api_options.output_paths(output, types, task, ml)
    return {kind: _check_output(path, ml or len(types) > 1, kind, overwrite) for kind, path in paths.items()}


def _source_for(input: Union[str, Path, nib.Nifti1Image], targets: Mapping[str, Path]):
    """The DICOM series folder when a DICOM output will reference the input's files, else the input as given."""
    if any(kind in DICOM_OUTPUT_TYPES for kind in targets) and _is_dicom_input(input) \
            and Path(input).expanduser().exists():  # a missing input is reported by the reader as not found
        return imageio.dicom_series_folder(input)
    return contextlib.nullcontext(input)


def _is_file_output(ml: bool, output_type: str) -> bool:
    return ml or output_type in FILE_OUTPUT_TYPES


def _check_output(output: Path, ml: bool, output_type: str, overwrite: bool) -> Path:
    """Refuse a bad or occupied output before hours of computing, not after."""
    if output_type not in OUTPUT_TYPES:
        raise InvalidOptionError(f"Unknown output type '{output_type}'. Valid: {', '.join(OUTPUT_TYPES)}.")
    output = output.expanduser().absolute()
    imageio.check_output_path(output, overwrite)
    if _is_file_output(ml, output_type) and output.is_dir():
        example = "seg.dcm" if output_type in DICOM_OUTPUT_TYPES else "seg.nii.gz with --ml, seg.seg.nrrd"
        raise InvalidOptionError(f"Output {output} is a folder; this output needs a file name ({example}).")
    return output


def _check_dicom_output(input: Union[str, Path, nib.Nifti1Image], output_type: str) -> None:
    """Refuse a DICOM output that cannot be written, before computing: non-DICOM input or a missing package.

    A path that does not exist passes, so that reading it reports it as not found rather than as not DICOM.
    """
    if output_type not in DICOM_OUTPUT_TYPES:
        return
    not_found = not isinstance(input, nib.Nifti1Image) and not Path(input).expanduser().exists()
    if not (not_found or _is_dicom_input(input)):
        raise InvalidOptionError(DICOM_INPUT_NEEDED)
    missing = [name for module, name in DICOM_OUTPUT_MODULES[output_type].items() if find_spec(module) is None]
    if missing:
        names = " ".join(missing)
        raise InvalidOptionError(f"Output type {output_type} needs the Python package(s) {names}: pip install {names}")


def _is_dicom_input(input: Union[str, Path, nib.Nifti1Image, None]) -> bool:
    return input is not None and not isinstance(input, nib.Nifti1Image) and imageio.is_dicom_source(input)


def _write_dicom(result: pipeline.Result, output: Path, output_type: str, overwrite: bool,
                 source: Union[str, Path, nib.Nifti1Image, None]) -> None:
    """DICOM outputs reference the instances of the input series, so they are written from its files."""
    from . import dicom_output

    if not _is_dicom_input(source):
        raise InvalidOptionError(DICOM_INPUT_NEEDED)
    writer = dicom_output.write_dicom_seg if output_type == "dicom_seg" else dicom_output.write_rtstruct
    with imageio.dicom_series_folder(source) as folder:
        writer(result.image, result.label_map, folder, output, overwrite=overwrite)


def write_result(result: pipeline.Result, output: Path, ml: bool, output_type: str, overwrite: bool,
                 source: Union[str, Path, nib.Nifti1Image, None] = None) -> None:
    """Write the segmentation (and statistics.json beside it) atomically.

    ``source`` is the input that was segmented; DICOM outputs need it to be the DICOM folder or zip.
    """
    if output_type in DICOM_OUTPUT_TYPES:
        _write_dicom(result, output, output_type, overwrite, source)
    elif output_type == "seg_nrrd":
        present = {int(v) for v in np.unique(result.data)} & set(result.label_map)
        segments = segment_infos({k: v for k, v in result.label_map.items() if k in present})
        imageio.write_seg_nrrd(result.data, result.image, segments, output, overwrite=overwrite)
    elif ml:
        imageio.write_multilabel_nifti(result.data, result.image, result.label_map, output, overwrite=overwrite)
    else:
        imageio.write_class_files(result.data, result.image, result.label_map, output, overwrite=overwrite)
    if result.statistics is not None:
        from . import statistics

        folder = output.parent if _is_file_output(ml, output_type) else output
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
