"""One case, from an input to every output its request asks for: the path under every front end.

The command line, the child process of the Slicer panel and the web app, the official-style Python API and each
case of a cohort all end here with a :class:`~.request.SegmentationRequest`. Every output is named and checked
before any work (:mod:`.outputs.targets`), the input is segmented once (:func:`.core.pipeline.segment`), and each
output is written atomically, with the preview, the statistics and the task's derived masks where asked for.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Union

import nibabel as nib

from . import imageio
from .core import pipeline
from .outputs import targets as output_targets
from .outputs.write import write_result
from .progress import ProgressCallback, ignore_progress
from .request import SegmentationRequest
from .weights import licensing

Source = Union[str, Path, nib.Nifti1Image]
DERIVED_MASK_TASKS = ("body",)  # tasks whose class-file output also gets body.nii.gz and skin.nii.gz
# The official task switch when a DICOM series' Modality contradicts the task: (modality, task) -> task.
MODALITY_SWITCH = {("MR", "total"): "total_mr", ("CT", "total_mr"): "total"}


@dataclass
class CaseResult:
    """The segmentation (labels on the input's grid, label map, statistics) and where each output went."""

    result: pipeline.Result
    targets: dict[str, Path] = field(default_factory=dict)
    statistics_file: Optional[Path] = None


def segment_to_files(source: Source, output: Union[str, Path, None], request: SegmentationRequest, *,
                     statistics_path: Union[str, Path, None] = None, progress: ProgressCallback = ignore_progress,
                     should_cancel: Callable[[], bool] = lambda: False,
                     runner_factory: Optional[pipeline.RunnerFactory] = None) -> CaseResult:
    """Segment ``source`` (a path, or a nibabel image) and write the outputs ``request`` asks for under ``output``.

    ``output`` None writes no segmentation (the result is returned); ``statistics_path`` is where
    statistics.json goes instead of beside the output. Every output is refused before any work when it cannot
    be written (see :func:`.outputs.targets.check_target`). A licence key in the request is stored first, as the
    official does, so that licensed weights can be fetched.
    """
    if request.license_number:
        licensing.set_license_key(request.license_number)
    output = None if output is None else Path(output).expanduser().absolute()
    targets = {} if output is None else output_targets.planned_targets(source, output, request)
    ml = request.multilabel or len(targets) > 1
    with _readable(source, targets) as readable:  # a DICOM zip is extracted once, for reading and writing
        result = pipeline.segment(readable, request, progress, should_cancel, runner_factory)
        for kind, target in targets.items():
            write_result(result, target, ml, kind, request.overwrite != "never", source=readable)
        if targets and request.preview:
            _write_preview(readable, result, targets, ml, request.task)
        if targets and _derived_masks_wanted(request, targets, ml):
            _write_derived_masks(result, readable, targets, request)
    stats_file = _statistics_file(request, statistics_path, output, ml)
    if stats_file is not None and result.statistics is not None:
        from .core import statistics

        statistics.write_statistics(result.statistics, stats_file)
    return CaseResult(result, targets, stats_file)


def switched_task(source: Source, request: SegmentationRequest) -> SegmentationRequest:
    """The official command line's switch between total and total_mr when a DICOM series' Modality says otherwise,
    with its warning on stderr. The command line and a cohort's cases switch; the official Python API does not."""
    if isinstance(source, nib.Nifti1Image):
        return request
    modality = imageio.dicom_modality(source)
    switched = MODALITY_SWITCH.get((modality or "", request.task))
    if not switched:
        return request
    print(f"WARNING: the input is a DICOM series of modality {modality}, but task '{request.task}' is for "
          f"{'CT' if modality == 'MR' else 'MR'} images; running task '{switched}' instead.", file=sys.stderr)
    return replace(request, task=switched)


def _readable(source: Source, targets: dict[str, Path]):
    """The DICOM series folder when a DICOM output will reference the input's files, else the input as given."""
    wants_dicom = any(kind in output_targets.DICOM_OUTPUT_TYPES for kind in targets)
    if wants_dicom and output_targets.is_dicom_input(source) and Path(source).expanduser().exists():
        return imageio.dicom_series_folder(source)  # a missing input is reported by the reader as not found
    return contextlib.nullcontext(source)


def _statistics_file(request: SegmentationRequest, statistics_path: Union[str, Path, None], output: Optional[Path],
                     ml: bool) -> Optional[Path]:
    if statistics_path is not None:
        return Path(statistics_path).expanduser().absolute()
    return output_targets.statistics_file(request.statistics, output, ml, request.output_types)


def _first_folder(targets: dict[str, Path], ml: bool) -> tuple[Path, bool]:
    """The folder beside which extra files go, and whether it is the class-file folder itself."""
    kind, first = next(iter(targets.items()))
    is_class_folder = kind == "nifti" and not ml
    return (first if is_class_folder else first.parent), is_class_folder


def _write_preview(source: Source, result: pipeline.Result, targets: dict[str, Path], ml: bool, task: str) -> None:
    """``preview_<task>.png`` in the output folder (the class-file folder, else the folder of the file), as the
    official: only when a segmentation is written."""
    from .outputs.preview import write_preview

    folder, _ = _first_folder(targets, ml)
    write_preview(source, result.image, result.label_map, folder / f"preview_{task}.png")


def _derived_masks_wanted(request: SegmentationRequest, targets: dict[str, Path], ml: bool) -> bool:
    return request.derived_masks and request.task in DERIVED_MASK_TASKS and _first_folder(targets, ml)[1]


def _write_derived_masks(result: pipeline.Result, source: Source, targets: dict[str, Path],
                         request: SegmentationRequest) -> None:
    from .outputs.body_masks import write_derived_body_masks

    folder, _ = _first_folder(targets, False)
    ct = source if isinstance(source, nib.Nifti1Image) else imageio.load_image(source)
    # Into the class-file folder this run has just written (checked under the request's policy before any work):
    # adding two files to it replaces nothing of the user's, whatever the policy.
    write_derived_body_masks(result.image, result.label_map, ct, folder, overwrite=True)
