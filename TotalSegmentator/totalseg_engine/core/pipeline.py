"""TotalSegmentator's pipeline, in memory: crop → RAS → resample → predict → merge → postprocess → back.

Each step reproduces the official order so released weights see what they were trained on; the
official tool's disk round trips between steps are gone (images stay numpy arrays). Task
differences come from the registry (:mod:`tasks`), never from branches on task names.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import nibabel as nib
import numpy as np

from .. import geometry, imageio
from ..errors import InvalidOptionError, UnknownTaskError
from ..inference.probabilities import ProbabilityTarget
from ..progress import ProgressCallback, ProgressEvent, ignore_progress
from ..request import SegmentationRequest
from ..tasks import Mode, ModelSpec, Task, get_task
from . import postprocessing
from .model_runs import ModelRuns, RunnerFactory, default_runner_factory, models_for, run_models

ROI_CROP_MARGIN_MM = (20.0, 20.0, 20.0)


@dataclass
class Result:
    """The segmentation on exactly the input's grid, with the labels it may contain."""

    image: nib.Nifti1Image
    label_map: dict[int, str]
    statistics: Optional[dict] = None
    warnings: list[str] = field(default_factory=list)

    @property
    def data(self) -> np.ndarray:
        return np.asanyarray(self.image.dataobj)


@dataclass(frozen=True)
class _Extras:
    """Options of the request that apply to the task's own model only; crop, body and refinement models run plain."""

    higher_order_resampling: bool = False
    force_split: bool = False
    blobs_mm3: Optional[float] = None
    legacy_upsampling: bool = False  # --higher_order_resampling_LEGACY: each label's mask interpolated linearly
    keep_lowres: bool = False  # --save_lowres: the labels stay on the model's grid
    probabilities: Optional[Path] = None  # --save_probabilities: where the class probabilities go
    overwrite: bool = True  # whether an existing probabilities file may be replaced


PLAIN = _Extras()


@dataclass
class _Prediction:
    labels: Optional[np.ndarray]  # on the original grid (None when the labels stay on the model's grid)
    lowres_labels: Optional[np.ndarray] = None  # on the working grid (for --fast statistics)
    lowres_image: Optional[nib.Nifti1Image] = None


def segment(image: Union[str, Path, nib.Nifti1Image], request: Optional[SegmentationRequest] = None,
            progress: ProgressCallback = ignore_progress, should_cancel: Callable[[], bool] = lambda: False,
            runner_factory: Optional[RunnerFactory] = None, probabilities_path: Union[str, Path, None] = None
            ) -> Result:
    """Segment an image (path or nibabel image) as ``request`` asks and return labels on the input's own grid.

    Only what the segmentation depends on is read from the request; its output options are for the caller.
    ``probabilities_path``: also write the class probabilities of the task's model there, as nnU-Net writes them
    (see :mod:`..inference.probabilities`), under the request's overwrite policy.
    """
    request = request or SegmentationRequest()
    task = get_task(request.task)
    mode = task.sized_mode(request.speed, request.model_size)
    roi = _check_roi_subset(task, request.roi_subset)
    keep_lowres = _keeps_lowres(task, request)
    progress(ProgressEvent(stage="read", message="Reading image"))
    original = load_input(image)
    notes = _notes(task, request)
    if runner_factory is None:  # released weights: fetch what is missing before any work
        from .. import weights

        weights.ensure_weights(_required_models(task, mode, request, roi), progress=progress,
                               download=request.download, task=task.name)
        runner_factory = default_runner_factory(request.device, request.runtime)
        _warn_if_short(original, request, runner_factory.device)
    run = ModelRuns(request, progress, should_cancel, runner_factory)
    working = nib.Nifti1Image(np.asarray(original.get_fdata(), dtype=np.float64), original.affine)
    crop = _crop_for(run, task, working, roi)
    label_map = _output_label_map(task, roi)
    refine_mask = _refine_mask(run, task, working)
    main = _Extras(request.higher_order_resampling, request.force_split, request.remove_small_blobs,
                   request.higher_order_resampling_legacy, keep_lowres,
                   None if probabilities_path is None else Path(probabilities_path), request.overwrite != "never")
    prediction = _predict_task(run, task, mode, working, crop, roi, main)
    grid = geometry.reoriented_like(prediction.lowres_image, original) if keep_lowres else original
    labels = np.asanyarray(geometry.reoriented_like(
        nib.Nifti1Image(prediction.lowres_labels, prediction.lowres_image.affine), original).dataobj) \
        if keep_lowres else prediction.labels
    if refine_mask is not None:
        labels = postprocessing.refine_vertebrae_pp(labels, refine_mask, list(label_map),
                                                    geometry.header_spacing(original), task.refine_dilation_mm)
    labels = _finish_labels(labels, task, label_map, crop, geometry.header_spacing(grid))
    stats = _statistics(run, prediction, labels, grid, roi) if request.statistics else None
    run.emit("done", "Segmentation finished", fraction=1.0)
    return Result(labels_image(labels, grid), label_map, stats, notes)


def _warn_if_short(image: nib.Nifti1Image, request: SegmentationRequest, device: str) -> None:
    """Say once, before any work, when the run will probably not fit into the free memory (and what helps)."""
    from ..inference import resources

    fit = resources.check(image.shape[:3], geometry.header_spacing(image), request, device, sys.modules.get("torch"))
    resources.warn_if_short(fit)


def _keeps_lowres(task: Task, request: SegmentationRequest) -> bool:
    """Whether the labels stay on the model's grid (``save_lowres``), refused where the official refuses it: with
    a crop of any kind or a second model (crop tasks, roi_subset, body_seg, cascades, refinement)."""
    if not request.save_lowres or request.higher_order_resampling:  # -ho never resamples: nothing to keep
        return False
    if task.crop or task.crop_model or task.refine_with or request.roi_subset or request.body_seg:
        raise InvalidOptionError("save_lowres is not supported together with cropping, roi_subset, body_seg, "
                                 f"or a cascade (task '{task.name}').")
    return True


def labels_image(labels: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """A uint8 label image carrying the reference image's exact affine and header."""
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    return nib.Nifti1Image(labels.astype(np.uint8, copy=False), reference.affine, header)


def load_input(image: Union[str, Path, nib.Nifti1Image]) -> nib.Nifti1Image:
    """Read a path (NIfTI, NRRD, DICOM) or take a nibabel image; reject what cannot be segmented."""
    img = image if isinstance(image, nib.Nifti1Image) else imageio.read_image(Path(image))
    return imageio.validate_image(img)


def _notes(task: Task, request: SegmentationRequest) -> list[str]:
    notes = []
    if task.info:
        notes.append(task.info)
    if request.body_seg and task.modality == "MR":
        notes.append("--body_seg is not supported for MR tasks and was ignored.")
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return notes


def _check_roi_subset(task: Task, roi: Optional[Sequence[str]]) -> Optional[list[str]]:
    if not roi:
        return None
    if not task.name.startswith("total"):
        raise UnknownTaskError(f"--roi_subset works only with the tasks 'total' and 'total_mr', not '{task.name}'.")
    return task.check_classes(roi)


def _output_label_map(task: Task, roi: Optional[list[str]]) -> dict[int, str]:
    if roi is None:
        return dict(task.classes)
    return {label: name for label, name in task.classes.items() if name in roi}


# ---------------------------------------------------------------- weights


def required_models(request: SegmentationRequest) -> list[ModelSpec]:
    """Every model a run of this request loads (unknown tasks or classes raise)."""
    task = get_task(request.task)
    return _required_models(task, task.sized_mode(request.speed, request.model_size), request,
                            _check_roi_subset(task, request.roi_subset))


def _required_models(task: Task, mode: Mode, request: SegmentationRequest, roi: Optional[list[str]]) -> list[ModelSpec]:
    """Every model a run will load: crop models, refinement model, then the task's own."""
    refine = list(get_task(task.refine_with).mode().models) if task.refine_with else []
    return _crop_specs(task, request, roi) + refine + list(models_for(task, mode, roi))


def _refine_mask(run: ModelRuns, task: Task, working: nib.Nifti1Image) -> Optional[np.ndarray]:
    """Labels of the model whose mask trims the task's prediction (vertebrae_pp_refined)."""
    if not task.refine_with:
        return None
    helper = get_task(task.refine_with)
    run.emit("refine", f"Segmenting '{helper.name}' for refinement")
    return _predict_task(run, helper, helper.mode(), working, None, None).labels


def _crop_specs(task: Task, request: SegmentationRequest, roi: Optional[list[str]]) -> list[ModelSpec]:
    plan = _crop_plan(task, request, roi)
    if plan is None:
        return []
    crop_task, speed = plan
    specs = list(get_task(crop_task).mode(speed).models)
    if task.crop_model:
        specs += _crop_specs(get_task(task.crop_model), request, None)
    return specs


# ---------------------------------------------------------------- cropping


def _crop_plan(task: Task, request: SegmentationRequest, roi: Optional[list[str]]) -> Optional[tuple[str, str]]:
    """(task, speed) of the rough model whose output defines the crop, or None without cropping."""
    if task.crop_model:
        return task.crop_model, "normal"
    if task.crop or roi:
        crop_names = task.crop or ()
        if any(name in ("body_trunc", "body_extremities") for name in crop_names):
            return "body", "fast"
        mr = task.modality == "MR"
        robust = request.robust_crop or task.robust_crop or (roi is not None and mr)
        speed = "fast" if (robust or mr) else "fastest"
        return ("total_mr" if mr else "total"), speed
    if request.body_seg and task.modality != "MR":
        return "body", "fast"
    return None


@dataclass
class _Crop:
    mask: np.ndarray  # on the original grid
    margin_mm: tuple[float, float, float]
    remove_outside: Optional[np.ndarray] = None


def _crop_for(run: ModelRuns, task: Task, working: nib.Nifti1Image, roi: Optional[list[str]]) -> Optional[_Crop]:
    plan = _crop_plan(task, run.request, roi)
    if plan is None:
        return None
    crop_task = get_task(plan[0])
    run.emit("crop", f"Rough segmentation with '{crop_task.name}' to find the region")
    if task.crop_model:
        plain = replace(run, request=replace(run.request, robust_crop=False))  # a plain run of that task
        rough = _predict_task(run, crop_task, crop_task.mode(plan[1]), working,
                              _crop_for(plain, crop_task, working, None), None)
        rough_labels = _finish_labels(rough.labels, crop_task, dict(crop_task.classes), None,
                                      geometry.header_spacing(working))
    else:
        rough_labels = _predict_task(run, crop_task, crop_task.mode(plan[1]), working, None, None).labels
    if not task.crop and not roi:  # --body_seg: everything the body model found
        return _Crop(rough_labels > 0, task.crop_margin_mm)
    names = task.crop or tuple(roi or ())
    margin = task.crop_margin_mm if task.crop_model else ROI_CROP_MARGIN_MM
    remove = _mask_of(crop_task, rough_labels, task.remove_outside) if task.remove_outside else None
    return _Crop(_mask_of(crop_task, rough_labels, names), margin, remove)


def _mask_of(task: Task, labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return np.isin(labels, [task.label_of(name) for name in names])


# ---------------------------------------------------------------- prediction


def _predict_task(run: ModelRuns, task: Task, mode: Mode, working: nib.Nifti1Image, crop: Optional[_Crop],
                  roi: Optional[list[str]], extras: _Extras = PLAIN) -> _Prediction:
    """Labels of one task on the original grid (the in-memory equivalent of one official model run)."""
    shape = working.shape
    if crop is not None and not crop.mask.any():
        return _Prediction(np.zeros(shape, dtype=np.uint8))
    box = None
    region = working
    if crop is not None:
        box = geometry.bbox_of_mask(crop.mask, geometry.margin_in_voxels(crop.margin_mm, working))
        region = geometry.crop_image(working, box)
    canonical = geometry.to_canonical(region)
    spacing = None if extras.higher_order_resampling else mode.spacing
    run.emit("resample", f"Resampling to {spacing} mm" if spacing else "Preparing image")
    model_input = geometry.resample_image(canonical, spacing, order=run.request.resampling_order) if spacing \
        else canonical
    probabilities = None if extras.probabilities is None else \
        ProbabilityTarget(extras.probabilities, model_input.affine, extras.overwrite)
    labels = run_models(run, task, mode, np.asanyarray(model_input.dataobj), geometry.header_spacing(model_input),
                        roi, extras.force_split, probabilities)
    run.check_cancel()
    run.emit("postprocess", "Postprocessing")
    labels = postprocessing.postprocess(labels, task.name, geometry.header_spacing(model_input), extras.blobs_mm3)
    lowres = labels
    if extras.keep_lowres:
        return _Prediction(None, lowres, model_input)
    if spacing:
        labels = _upsampled(labels, canonical.shape, task, roi, extras.legacy_upsampling)
    labels = geometry.from_canonical(labels, canonical.affine, region.affine)
    if box is not None:
        labels = geometry.uncrop(labels, shape, box)
    return _Prediction(labels.astype(np.uint8, copy=False), lowres, model_input)


def _upsampled(labels: np.ndarray, shape: Sequence[int], task: Task, roi: Optional[list[str]],
               legacy: bool) -> np.ndarray:
    """The labels back on the input's voxel size: nearest neighbour, or the official legacy one-hot upsampling
    (which, as there, first drops the classes a roi_subset leaves out)."""
    if not legacy:
        return geometry.resample_labels_to_shape(labels, shape)
    if roi is not None:
        labels = labels * np.isin(labels, [task.label_of(name) for name in roi]).astype(np.uint8)
    return geometry.resample_labels_one_hot(labels, shape, order=1)


# ---------------------------------------------------------------- finishing


def _finish_labels(labels: np.ndarray, task: Task, label_map: dict[int, str], crop: Optional[_Crop],
                   spacing: np.ndarray) -> np.ndarray:
    """Keep only the requested classes and apply the task's remove-outside rule."""
    if set(label_map) != set(task.classes):
        labels = labels * np.isin(labels, list(label_map)).astype(np.uint8)
    if crop is not None and crop.remove_outside is not None and task.remove_outside_dilation_mm:
        voxels = postprocessing.dilation_voxels(task.remove_outside_dilation_mm, spacing)
        labels = postprocessing.remove_outside_of_mask(labels, crop.remove_outside, voxels)
    return labels


def _statistics(run: ModelRuns, prediction: _Prediction, labels: np.ndarray, original: nib.Nifti1Image,
                roi: Optional[list[str]]) -> dict:
    """Volumes and mean intensities; --fast runs compute them on the working grid, as the official does.

    There the official computes them without the extra metrics (its nnunet.py does not pass them on), so
    ``statistics_extra`` adds them to every run but a --fast one, as there.
    """
    from . import statistics

    run.emit("statistics", "Computing statistics")
    request = run.request
    task = get_task(request.task)
    on_working_grid = request.speed == "fast" and prediction.lowres_image is not None
    seg, image = (prediction.lowres_labels, prediction.lowres_image) if on_working_grid else (labels, original)
    return statistics.compute_statistics(
        seg, image.get_fdata(), geometry.header_spacing(image), dict(task.classes),
        exclude_masks_at_border=not request.stats_include_incomplete, roi_subset=roi,
        metric=request.stats_aggregation, extra=request.statistics_extra and not on_working_grid,
        normalized=request.statistics_normalized_intensities)
