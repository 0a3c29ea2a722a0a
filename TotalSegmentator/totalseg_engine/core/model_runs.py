"""Running a task's (part) models on the model's grid: each model loaded once per run, slabs where asked, part
labels merged into the task's, and what happens when a device runs out of memory.

Out of memory (CUDA's ``torch.OutOfMemoryError``, or ``MemoryError``), a model is predicted again once in a
smaller way and the run says so: in three slabs along z where it was whole, then on the CPU where it ran on a GPU.
What still does not fit stops the run with a message naming what to try, never with a traceback.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from .. import geometry
from ..errors import CancelledError, TotalSegmentatorError
from ..inference.prediction import tile_reporter  # no torch at import: models are loaded lazily
from ..inference.probabilities import ProbabilityTarget, write_probabilities
from ..progress import ProgressCallback, ProgressEvent
from ..request import SegmentationRequest
from ..tasks import Mode, ModelSpec, Task

# Sliding-window step: the whole-body models were released with 0.8, all other tasks use 0.5.
WIDE_STEP_TASKS = ("total", "total_v3", "total_mr")
OUT_OF_MEMORY = ("The {device} ran out of memory even {how}. Run with --fast (3 mm models), on a smaller region "
                 "(--roi_subset), or on a machine with more memory.")


class Runner(Protocol):
    """What the pipeline needs of a loaded model (tests pass stand-ins)."""

    def predict(self, channels: Sequence[np.ndarray], spacing_xyz: Sequence[float],
                on_tile: Optional[Callable[[int, int], None]] = None) -> np.ndarray: ...


RunnerFactory = Callable[[ModelSpec, float], Runner]


class OutOfMemoryWarning(UserWarning):
    """A model ran out of memory and is predicted again in a smaller way."""


def default_runner_factory(device: str, runtime: str = "auto") -> RunnerFactory:
    """Load released weights from the cache onto the selected device, with the selected CPU runtime.

    Its ``for_cpu`` gives the same on the CPU, where a model that does not fit on the GPU runs again.
    """
    from .. import weights
    from ..inference.devices import resolve_device
    from ..inference.prediction import check_runtime, make_runner

    check_runtime(runtime)
    resolved = resolve_device(device)

    def make(spec: ModelSpec, step: float) -> Runner:
        return make_runner(weights.model_dir(spec), spec.folds, resolved, step, spec.configuration, runtime)

    make.device = resolved  # type: ignore[attr-defined]
    make.for_cpu = lambda: default_runner_factory("cpu", runtime)  # type: ignore[attr-defined]
    return make


@dataclass
class ModelRuns:
    """State shared by the model runs of one segmentation (request, loaded models, callbacks)."""

    request: SegmentationRequest
    progress: ProgressCallback
    should_cancel: Callable[[], bool]
    runner_factory: RunnerFactory
    runners: dict[tuple[int, bool], Runner] = field(default_factory=dict)

    def check_cancel(self) -> None:
        if self.should_cancel():
            raise CancelledError("Segmentation was cancelled.")

    def runner(self, spec: ModelSpec, step: float, on_cpu: bool = False) -> Runner:
        """A loaded model, loaded once per run (and once more on the CPU if it did not fit on the GPU)."""
        key = (spec.dataset_id, on_cpu)
        if key not in self.runners:
            factory = self.runner_factory
            if on_cpu:
                factory = getattr(factory, "for_cpu", lambda: default_runner_factory("cpu", self.request.runtime))()
            self.runners[key] = factory(spec, step)
        return self.runners[key]

    @property
    def on_gpu(self) -> bool:
        return str(getattr(self.runner_factory, "device", "")).startswith(("cuda", "mps"))

    def emit(self, stage: str, message: str, **kwargs) -> None:
        self.progress(ProgressEvent(stage=stage, message=message, **kwargs))


def models_for(task: Task, mode: Mode, roi: Optional[list[str]]) -> tuple[ModelSpec, ...]:
    """Part models to run: with a ROI subset, only the parts that predict one of its classes."""
    if roi is None or len(mode.models) == 1:
        return mode.models
    return tuple(m for m in mode.models if m.classes and any(n in roi for n in m.classes.values()))


@dataclass
class Probabilities:
    """``--save_probabilities`` for one task's models: every slab's labels come from nnU-Net's probabilities (as
    in the official, where nnU-Net exports with probabilities), and those of the last model's first slab (what
    the official's copy of ``s01.npz`` leaves) are written to ``target``."""

    target: ProbabilityTarget
    keep: bool = False  # this model's first slab is the one written


def run_models(run: ModelRuns, task: Task, mode: Mode, data: np.ndarray, spacing: np.ndarray,
               roi: Optional[list[str]], force_split: bool,
               probabilities: Optional[ProbabilityTarget] = None) -> np.ndarray:
    """Predict with each (part) model, split into slabs when needed, merged into task label ids."""
    models = models_for(task, mode, roi)
    plan = geometry.split_plan(data.shape, force_split, allowed=len(mode.models) > 1)
    step = 0.8 if task.name in WIDE_STEP_TASKS else 0.5
    merged = np.zeros(data.shape, dtype=np.uint8)
    for index, spec in enumerate(models, start=1):
        run.check_cancel()
        run.emit("predict", f"Loading model {spec.dataset_id}", model=index, of=len(models))
        wanted = None if probabilities is None else Probabilities(probabilities, keep=index == len(models))
        part = _predict_fitting(run, spec, step, data, spacing, plan, index, len(models), task.name, wanted)
        labels = _to_task_labels(part, spec, task)
        np.copyto(merged, labels, where=labels != 0)  # later parts win on overlap
    return merged


def _predict_fitting(run: ModelRuns, spec: ModelSpec, step: float, data: np.ndarray, spacing: np.ndarray,
                     plan: Optional[geometry.SplitPlan], index: int, of: int, label: str,
                     probabilities: Optional[Probabilities] = None) -> np.ndarray:
    """One model's labels; out of memory, again in three slabs (where it was whole), then on the CPU."""
    try:
        return _predict_split(run, run.runner(spec, step), data, spacing, plan, index, of, label, probabilities)
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        failure, tried = err, "as one piece" if plan is None else "in three slabs"
    for slabs, on_cpu, how in _smaller_ways(run, data.shape, plan):
        _release_gpu_memory()
        message = f"Out of memory: predicting model {index} of {of} again {how}."
        warnings.warn(message, OutOfMemoryWarning, stacklevel=3)
        run.emit("predict", message, model=index, of=of)
        try:
            return _predict_split(run, run.runner(spec, step, on_cpu), data, spacing, slabs, index, of, label,
                                  probabilities)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            failure, tried = err, how
    device = "GPU" if run.on_gpu and tried != "on the CPU (slower)" else "CPU"
    raise TotalSegmentatorError(OUT_OF_MEMORY.format(device=device, how=tried)) from failure


def _smaller_ways(run: ModelRuns, shape: Sequence[int], plan: Optional[geometry.SplitPlan]):
    """(slabs, on the CPU, how it is said) of each smaller attempt, in order: three slabs, then the CPU."""
    if plan is None and _splittable(shape):
        yield geometry.split_plan(shape, True, True), False, "in three slabs along z"
    if run.on_gpu:
        yield plan, True, "on the CPU (slower)"


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's out-of-memory error (torch.OutOfMemoryError, a RuntimeError) or the CPU's MemoryError."""
    if isinstance(err, MemoryError):
        return True
    return type(err).__name__ == "OutOfMemoryError" or (isinstance(err, RuntimeError)
                                                         and "out of memory" in str(err).lower())


def _splittable(shape: Sequence[int]) -> bool:
    try:
        geometry.split_plan(shape, True, True)
    except TotalSegmentatorError:
        return False
    return True


def _release_gpu_memory() -> None:
    """What the failed attempt left on the GPU, given back before the next one."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _predict_split(run: ModelRuns, runner: Runner, data: np.ndarray, spacing: np.ndarray,
                   plan: Optional[geometry.SplitPlan], index: int, of: int, label: str,
                   probabilities: Optional[Probabilities] = None) -> np.ndarray:
    if plan is None:
        report = tile_reporter(run.progress, index, of, label, run.should_cancel)
        return _predict(runner, data, spacing, report, probabilities)
    out = np.zeros(data.shape, dtype=np.uint8)
    for number, ((keep, dest), slab) in enumerate(zip(plan.keep(), plan.slabs(data.shape[2])), start=1):
        report = tile_reporter(run.progress, index, of, f"{label} (slab {number}/3)", run.should_cancel)
        first = probabilities if probabilities is None or number == 1 else replace(probabilities, keep=False)
        out[:, :, dest] = _predict(runner, data[:, :, slab], spacing, report, first)[:, :, keep]
    return out


def _predict(runner: Runner, data: np.ndarray, spacing: np.ndarray, report: Callable[[int, int], None],
             probabilities: Optional[Probabilities]) -> np.ndarray:
    """One image's labels; with ``probabilities``, through nnU-Net's probabilities (written where kept)."""
    if probabilities is None:
        return runner.predict([data], spacing, report)
    if not hasattr(runner, "predict_with_probabilities"):
        raise TotalSegmentatorError(f"{type(runner).__name__} cannot return class probabilities.")
    target = probabilities.target
    labels, values, properties = runner.predict_with_probabilities([data], spacing, target.affine, report)
    if probabilities.keep:
        write_probabilities(target, values, properties)
    return labels


def _to_task_labels(part: np.ndarray, spec: ModelSpec, task: Task) -> np.ndarray:
    """Map a part model's own label ids onto the task's label ids (by class name)."""
    if spec.classes is None:
        return part
    by_name = {name: label for label, name in task.classes.items()}
    lut = np.zeros(max(int(part.max()), max(spec.classes)) + 1, dtype=np.uint8)
    for label, name in spec.classes.items():
        lut[label] = by_name[name]
    return lut[part]
