"""One case, from an input to every output its request asks for: the path under every front end.

The command line, the child process of the Slicer panel and the web app, the official-style Python API and each
case of a cohort all end here with a :class:`~.request.SegmentationRequest`. Every output is named and checked
before any work (:mod:`.outputs.targets`), the input is segmented once (:func:`.core.pipeline.segment`), and each
output is written atomically, with the preview, the statistics and the task's derived masks where asked for.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Union

import nibabel as nib
import numpy as np

from . import imageio
from .core import pipeline
from .inference.devices import resolve_device
from .inference.probabilities import check_target as check_probabilities_target
from .outputs import radiomics
from .outputs import targets as output_targets
from .outputs.report import run_report, write_report
from .outputs.write import write_result
from .progress import ProgressCallback, ignore_progress
from .request import SegmentationRequest
from .tasks import get_task
from .weights import licensing

Source = Union[str, Path, nib.Nifti1Image]
Segmenter = Callable[[Source, SegmentationRequest, ProgressCallback, Callable[[], bool]], pipeline.Result]
"""What gives a case its segmentation: :func:`.core.pipeline.segment` here, or a remote server's job."""
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
                     statistics_path: Union[str, Path, None] = None, report_path: Union[str, Path, None] = None,
                     progress: ProgressCallback = ignore_progress, should_cancel: Callable[[], bool] = lambda: False,
                     runner_factory: Optional[pipeline.RunnerFactory] = None,
                     probabilities_path: Union[str, Path, None] = None,
                     segmenter: Optional[Segmenter] = None) -> CaseResult:
    """Segment ``source`` (a path, or a nibabel image) and write the outputs ``request`` asks for under ``output``.

    ``output`` None (or ``skip_saving``) writes no segmentation; the result is returned. ``statistics_path`` is
    where statistics.json goes instead of beside the output, ``report_path`` where the run report goes,
    ``probabilities_path`` where the class probabilities go (``--save_probabilities``). ``segmenter`` gives the
    segmentation instead of this machine's pipeline (``TotalSegmentator --server``: a remote job), so that every
    output is still written here, by the same writers. Every
    output is refused before any work when it cannot be written (see :func:`.outputs.targets.check_target`). A
    licence key in the request is stored first, as the official does, so that licensed weights can be fetched.
    """
    started = time.monotonic()
    if request.license_number:
        licensing.set_license_key(request.license_number)
    output = None if output is None else Path(output).expanduser().absolute()
    targets = {} if output is None or request.skip_saving else output_targets.planned_targets(source, output, request)
    if request.radiomics:
        radiomics.check_can_run(source, targets, request)
    if probabilities_path is not None:
        probabilities_path = Path(probabilities_path).expanduser().absolute()
        check_probabilities_target(probabilities_path, request.overwrite)
    ml = request.multilabel or len(targets) > 1
    with _readable(source, targets) as readable:  # a DICOM zip is extracted once, for reading and writing
        if segmenter is None:
            result = pipeline.segment(readable, request, progress, should_cancel, runner_factory, probabilities_path)
        else:
            result = segmenter(readable, request, progress, should_cancel)
        ordered = _in_requested_order(result, request)
        for kind, target in targets.items():
            class_files = kind == "nifti" and not ml  # named by class: the order of label values does not matter
            write_result(result if class_files else ordered, target, ml, kind, request.overwrite != "never",
                         source=readable)
        _write_extras(readable, result, targets, ml, request, progress)
    stats_file = _statistics_file(request, statistics_path, output, ml)
    if stats_file is not None and result.statistics is not None:
        from .core import statistics

        statistics.write_statistics(result.statistics, stats_file)
    if report_path is not None:
        with warnings.catch_warnings():  # the run has said it already if a GPU was asked for and is missing
            warnings.simplefilter("ignore")
            device = resolve_device(request.device)
        write_report(run_report(source, output, request, device, time.monotonic() - started), report_path)
    return CaseResult(ordered, targets, stats_file)


def _write_extras(source: Source, result: pipeline.Result, targets: dict[str, Path], ml: bool,
                  request: SegmentationRequest, progress: ProgressCallback) -> None:
    """What is written beside the segmentation: the preview, task body's derived masks, radiomics features."""
    if not targets:
        return
    if request.preview:
        _write_preview(source, result, targets, ml, request)
    if _derived_masks_wanted(request, targets, ml):
        _write_derived_masks(result, source, targets)
    if request.radiomics:
        folder, _ = _first_folder(targets, ml)
        radiomics.write_radiomics(source, folder, folder / radiomics.RADIOMICS_FILE, progress)


def _in_requested_order(result: pipeline.Result, request: SegmentationRequest) -> pipeline.Result:
    """The result with TotalSegmentator version 1's label values and table (``v1_order``, where the task has
    them): classes of version 2 only are left out, version 1's classes that version 2 lacks stay empty."""
    v1 = get_task(request.task).v1_classes if request.v1_order else None
    if v1 is None:
        return result
    by_name = {name: label for label, name in result.label_map.items()}
    lut = np.zeros(max(result.label_map, default=0) + 1, dtype=np.uint8)
    for label, name in v1.items():
        if name in by_name:
            lut[by_name[name]] = label
    wanted = {label: name for label, name in v1.items() if not request.roi_subset or name in request.roi_subset}
    return replace(result, image=pipeline.labels_image(lut[result.data], result.image), label_map=wanted)


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
    is_folder = not output_targets.is_file_output(ml, kind)  # class files, or surfaces
    return (first if is_folder else first.parent), is_folder and kind == "nifti"


def _write_preview(source: Source, result: pipeline.Result, targets: dict[str, Path], ml: bool,
                   request: SegmentationRequest) -> None:
    """``preview_<task>.png`` in the output folder (the class-file folder, else the folder of the file), as the
    official: only when a segmentation is written. On the model's grid (``save_lowres``) the image is resampled
    onto the labels' grid for it."""
    from .outputs.preview import write_preview

    folder, _ = _first_folder(targets, ml)
    image = source
    if request.save_lowres:
        from nibabel.processing import resample_from_to

        image = resample_from_to(source if isinstance(source, nib.Nifti1Image) else imageio.load_image(source),
                                 result.image, order=1)
    write_preview(image, result.image, result.label_map, folder / f"preview_{request.task}.png")


def _derived_masks_wanted(request: SegmentationRequest, targets: dict[str, Path], ml: bool) -> bool:
    """Task body's body and skin masks, beside its class files on the input's grid (the skin needs the input)."""
    return (request.derived_masks and request.task in DERIVED_MASK_TASKS and _first_folder(targets, ml)[1]
            and not request.save_lowres)


def _write_derived_masks(result: pipeline.Result, source: Source, targets: dict[str, Path]) -> None:
    from .outputs.body_masks import write_derived_body_masks

    folder, _ = _first_folder(targets, False)
    ct = source if isinstance(source, nib.Nifti1Image) else imageio.load_image(source)
    # Into the class-file folder this run has just written (checked under the request's policy before any work):
    # adding two files to it replaces nothing of the user's, whatever the policy.
    write_derived_body_masks(result.image, result.label_map, ct, folder, overwrite=True)
