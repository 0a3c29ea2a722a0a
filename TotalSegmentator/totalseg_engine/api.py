"""The Python API: ``totalsegmentator(input, output, ...)``, called like the official 2.18 function.

Takes a path (NIfTI, NRRD, DICOM folder or zip) or a nibabel image, returns the multilabel segmentation as a
nibabel image on the input's grid, and optionally writes it: NIfTI, a Slicer .seg.nrrd, or for DICOM input a DICOM
SEG or RT Structure Set referencing the input series.

This is an edge: the official keywords are converted here, once, into a :class:`~.request.SegmentationRequest`,
and the run takes the path every front end takes (:func:`.case.segment_to_files`). The official keywords without a
counterpart of their own are decided here too, so that a script written for the official package either runs with
the same meaning or stops before any work with an error naming the keyword, never with a ``TypeError``:

- :data:`NO_OPS`: tuning and debugging switches of the official implementation (threads, nora, test modes, ...)
  that change nothing in the result; accepted and ignored.

Every other official keyword has its official meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import nibabel as nib

from .case import segment_to_files
from .core import pipeline
from .errors import InvalidOptionError
from .outputs.targets import statistics_file
from .outputs.write import labelled_image
from .progress import ProgressCallback, ignore_progress
from .request import SegmentationRequest

NO_OPS = ("nr_thr_resamp", "nr_thr_saving", "nora_tag", "crop_path", "quiet", "verbose", "test", "debug", "plans")
"""Official keywords without effect here: thread counts, the nora database tag, the official's crop
mask folder (unused by its API), console chatter, its test and debug modes, and the nnU-Net plans name
(each released model has exactly one)."""

OfficialOutputType = Union[str, Sequence[str]]
StatisticsOption = Union[bool, str, Path]


def totalsegmentator(
        input: Union[str, Path, nib.Nifti1Image], output: Union[str, Path, None] = None, ml: bool = False,
        nr_thr_resamp: int = 1, nr_thr_saving: int = 6, fast: bool = False, nora_tag: Optional[str] = "None",
        preview: bool = False, task: str = "total", roi_subset: Optional[Sequence[str]] = None,
        statistics: StatisticsOption = False, radiomics: bool = False,
        crop_path: Union[str, Path, None] = None, body_seg: bool = False, force_split: bool = False,
        output_type: OfficialOutputType = "nifti", quiet: bool = False, verbose: bool = False,
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
    for it run unchanged (:data:`NO_OPS` are the official keywords that are ignored); the keyword-only ones are
    this engine's own. The returned image carries the class names in the same
    NIfTI label-table extension as the official's; with ``statistics`` (True or the path of the json to
    write) the return is ``(image, statistics)``, as in the official.

    ``output`` is a file for ``ml=True`` (multilabel NIfTI) or ``output_type`` "seg_nrrd", "dicom_seg" or
    "dicom_rtstruct" (the last two only for a DICOM folder or zip as input), otherwise a folder with one NIfTI
    per class, or for "stl" and "obj" one smoothed surface per class (LPS millimetres); a list of output types
    writes one of each beside ``output`` (surfaces in ``<name>_stl``, ``<name>_obj``). Existing outputs are kept
    unless ``overwrite`` is set. ``runtime`` chooses what runs the network on the CPU: "auto" or
    "torch" (labels identical to the official tool's), "onnxruntime" or "openvino" (faster forward passes, not
    bit-identical), or "nnunet" (nnU-Net's own predictor, as the official package runs it).
    """
    if radiomics and output is None:
        raise InvalidOptionError("Output path is required for radiomics.")
    if roi_subset_robust is not None:  # a roi_subset cropped with the 3 mm model
        roi_subset, robust_crop = roi_subset_robust, True
    request = SegmentationRequest(
        task=task, speed="fast" if fast else ("fastest" if fastest else "normal"), roi_subset=roi_subset,
        robust_crop=robust_crop, body_seg=body_seg, force_split=force_split, remove_small_blobs=remove_small_blobs,
        higher_order_resampling=higher_order_resampling, statistics=bool(statistics),
        stats_include_incomplete=stats_include_incomplete or not statistics_exclude_masks_at_border,
        stats_aggregation=stats_aggregation, statistics_extra=statistics_extra,
        statistics_normalized_intensities=statistics_normalized_intensities, radiomics=radiomics, device=device,
        runtime=runtime, download=download, license_number=license_number, model_size=model_size,
        higher_order_resampling_legacy=higher_order_resampling_LEGACY, resampling_order=resampling_order,
        output_types=_output_types(output_type), multilabel=ml, save_lowres=save_lowres, skip_saving=skip_saving,
        v1_order=v1_order,
        preview=preview, derived_masks=not no_derived_masks, overwrite="always" if overwrite else "never")
    output = None if output is None else Path(output).expanduser().absolute()
    stats_path = statistics_file(statistics, output, ml, request.output_types)
    case = segment_to_files(input, output, request, statistics_path=stats_path,
                            report_path=report, progress=progress, should_cancel=should_cancel,
                            runner_factory=runner_factory, probabilities_path=save_probabilities)
    image = labelled_image(case.result)
    return (image, case.result.statistics or {}) if statistics else image


def _output_types(output_type: OfficialOutputType) -> tuple[str, ...]:
    """The official ``output_type``: one name or a list of names."""
    if not isinstance(output_type, str) and not list(output_type):
        raise InvalidOptionError("output_type is an empty list; give at least one output type.")
    return (output_type,) if isinstance(output_type, str) else tuple(output_type)
