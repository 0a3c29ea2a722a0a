"""Run one nnU-Net v2 model on an in-memory image, the way TotalSegmentator runs it.

Two runners give the same labels:

- ``ModelRunner`` hands a network built from ``plans.json`` to ``nnUNetPredictor.manual_initialization``
  (nnU-Net's trainer-class lookup would import every trainer module, and through them timm and
  torchvision, which fails with CPU-only torch builds). Preprocessing, the Gaussian-weighted sliding
  window (no mirroring) and the export are nnU-Net's own functions. It runs GPU and MPS inference,
  where nnU-Net keeps the whole sliding window on the device.
- ``SlidingWindowRunner`` is the CPU path: the same steps in NumPy (``sliding_window``) around a torch
  or ONNX Runtime forward pass (``runtimes``), without importing nnunetv2 (and, for ONNX Runtime, torch).
  Both sum the tiles in half precision as nnU-Net does, so with torch the labels are identical; ONNX
  Runtime's are not, as its logits differ slightly from torch's.

``make_runner`` picks one from the device and the ``runtime`` option.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .. import geometry
from ..errors import CancelledError, TotalSegmentatorError
from ..progress import ProgressCallback, ProgressEvent, ignore_progress
from ..request import RUNTIMES
from . import allocator, probabilities, runtimes, sliding_window
from .cpu import cpu_threads
from .nnunet_plans import read_model_plans

CHECKPOINT = runtimes.CHECKPOINT
# auto: torch on the CPU (labels bit-identical to nnU-Net's), nnU-Net's own predictor on a GPU. ONNX Runtime is
# faster on a CPU but not bit-identical; it becomes the CPU default (AUTO_CPU_RUNTIME, with a fallback to torch)
# once its parity on trained weights is shown (see README, Performance).
AUTO_CPU_RUNTIME = "torch"
# nnunetv2 (>= 2.3.1) warns on every plans file in the format before 2.3, which most released weights use, and
# converts it; TotalSegmentator hides the warning too.
OLD_PLANS_WARNING = "Detected old nnU-Net plans format"


def configure_threads(device) -> None:
    """All cores for CPU inference, one for GPU runs (as nnUNetv2_predict does in TotalSegmentator)."""
    import torch

    torch.set_num_threads(cpu_threads() if device.type == "cpu" else 1)


class ModelRunner:
    """One loaded model (all its folds), reusable for several images within a run."""

    def __init__(self, model_dir: Path, folds: Optional[Sequence[int]], device, tile_step_size: float,
                 configuration: Optional[str] = None) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.tile_step_size = tile_step_size
        self.folds = list(folds) if folds is not None else _available_folds(self.model_dir)
        self._predictor = self._build(configuration)

    @property
    def num_input_channels(self) -> int:
        return self._num_input_channels

    def _build(self, configuration: Optional[str]):
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        checkpoints = [runtimes.load_checkpoint(self.model_dir, fold) for fold in self.folds]
        first = checkpoints[0]
        configuration = configuration or first["init_args"]["configuration"]
        read_model_plans(self.model_dir, configuration)  # a file nnU-Net would fail on is named, with the key
        plans_manager = PlansManager(json.loads((self.model_dir / "plans.json").read_text(encoding="utf-8")))
        dataset_json = json.loads((self.model_dir / "dataset.json").read_text(encoding="utf-8"))
        with warnings.catch_warnings():  # most released plans are in the old format: nnU-Net converts them
            warnings.filterwarnings("ignore", message=OLD_PLANS_WARNING, category=UserWarning)
            config_manager = plans_manager.get_configuration(configuration)
        self._num_input_channels = determine_num_input_channels(plans_manager, config_manager, dataset_json)
        num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        network = runtimes.empty_network(
            config_manager.network_arch_class_name, config_manager.network_arch_init_kwargs,
            config_manager.network_arch_init_kwargs_req_import, self._num_input_channels, num_outputs
        ).to_empty(device="cpu")  # storage, without a random initialisation the weights then overwrite
        parameters = [c["network_weights"] for c in checkpoints]
        network.load_state_dict(parameters[0])
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints a CPU notice on stdout
            predictor = _ProgressPredictor(tile_step_size=self.tile_step_size, use_gaussian=True, use_mirroring=False,
                                           perform_everything_on_device=self.device.type == "cuda",
                                           device=self.device, verbose=False, verbose_preprocessing=False,
                                           allow_tqdm=False)
        predictor.manual_initialization(network, plans_manager, config_manager, parameters, dataset_json,
                                        first.get("trainer_name", ""), None)
        return predictor

    def predict(self, channels: Sequence[np.ndarray], spacing_xyz: Sequence[float],
                on_tile: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """Label map (x, y, z, uint8) for (x, y, z) input channels at the given spacing."""
        image = geometry.to_nnunet(channels, spacing_xyz)
        self._predictor.on_tile = on_tile
        try:
            labels = self._predictor.predict_single_npy_array(image.data, {"spacing": list(image.spacing_zyx)},
                                                              None, None, False)
        finally:
            self._predictor.on_tile = None
        return geometry.from_nnunet(labels).astype(np.uint8, copy=False)

    def predict_with_probabilities(self, channels: Sequence[np.ndarray], spacing_xyz: Sequence[float],
                                   affine: np.ndarray, on_tile: Optional[Callable[[int, int], None]] = None
                                   ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Labels (x, y, z), class probabilities (classes, z, y, x) and nnU-Net's properties of the image, as
        nnU-Net's export computes them with ``save_probabilities`` (labels from the probabilities' argmax)."""
        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        image = geometry.to_nnunet(channels, spacing_xyz)
        predictor = self._predictor
        properties = {"nibabel_stuff": probabilities.reader_properties(affine, image.data.shape[1:][::-1]),
                      "spacing": list(image.spacing_zyx)}
        adapter = PreprocessAdapterFromNpy([image.data], [None], [properties], [None], predictor.plans_manager,
                                           predictor.dataset_json, predictor.configuration_manager,
                                           num_threads_in_multithreaded=1, verbose=False)
        prepared = next(adapter)
        predictor.on_tile = on_tile
        try:
            logits = predictor.predict_logits_from_preprocessed_data(prepared["data"]).cpu()
        finally:
            predictor.on_tile = None
        labels, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager,
            prepared["data_properties"], return_probabilities=True)
        return geometry.from_nnunet(labels).astype(np.uint8, copy=False), probs, prepared["data_properties"]


class SlidingWindowRunner:
    """One model on the CPU: nnU-Net's inference steps in NumPy around a torch or ONNX Runtime forward pass.

    Images that nnU-Net would resample (spacing other than the model's) go to a ``ModelRunner``, built the
    first time one arrives.
    """

    def __init__(self, model_dir: Path, folds: Optional[Sequence[int]], tile_step_size: float,
                 configuration: Optional[str] = None, runtime: str = "torch") -> None:
        self.model_dir = Path(model_dir)
        self.tile_step_size = tile_step_size
        self.plans = read_model_plans(self.model_dir, configuration)
        self.folds = list(folds) if folds is not None else _available_folds(self.model_dir)
        self._forwards = self._load(runtime)
        self._casts = runtimes.half_casts(self.runtime)
        self._resampling_runner: Optional[ModelRunner] = None

    def _load(self, runtime: str) -> list[runtimes.Forward]:
        """Each fold's forward pass; "auto" takes ONNX Runtime where installed, torch where it cannot export."""
        self.runtime = cpu_runtime(runtime)
        try:
            return [runtimes.FORWARDS[self.runtime](self.model_dir, fold, self.plans) for fold in self.folds]
        except (TotalSegmentatorError, ImportError, OSError) as err:  # no export, or a runtime that cannot load
            if runtime != "auto" or self.runtime == "torch":
                raise
            warnings.warn(f"{err} Running {self.model_dir.name} in torch instead.", stacklevel=3)
            return self._load("torch")

    @property
    def num_input_channels(self) -> int:
        return self.plans.num_input_channels

    def predict(self, channels: Sequence[np.ndarray], spacing_xyz: Sequence[float],
                on_tile: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """Label map (x, y, z, uint8) for (x, y, z) input channels at the given spacing."""
        image = geometry.to_nnunet(channels, spacing_xyz)
        try:
            prepared = sliding_window.preprocess(image.data, image.spacing_zyx, self.plans)
        except sliding_window.NeedsResampling:
            return self._resampling().predict(channels, spacing_xyz, on_tile)
        with allocator.reuse_freed_memory():
            labels = sliding_window.predict_labels(prepared, self._forwards, self.plans, self.tile_step_size,
                                                   on_tile, self._casts)
        return geometry.from_nnunet(labels).astype(np.uint8, copy=False)

    def predict_with_probabilities(self, channels: Sequence[np.ndarray], spacing_xyz: Sequence[float],
                                   affine: np.ndarray, on_tile: Optional[Callable[[int, int], None]] = None
                                   ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Through nnU-Net's own predictor (see :meth:`ModelRunner.predict_with_probabilities`)."""
        return self._resampling().predict_with_probabilities(channels, spacing_xyz, affine, on_tile)

    def _resampling(self) -> ModelRunner:
        """nnU-Net's predictor on the CPU for what this runner does not do itself (resampling, probabilities)."""
        if self._resampling_runner is None:
            import torch

            self._resampling_runner = ModelRunner(self.model_dir, self.folds, torch.device("cpu"),
                                                  self.tile_step_size, self.plans.configuration)
        return self._resampling_runner


def make_runner(model_dir: Path, folds: Optional[Sequence[int]], device: str, tile_step_size: float,
                configuration: Optional[str] = None, runtime: str = "auto"):
    """The runner for a model on ``device`` (from ``resolve_device``) with the requested runtime."""
    runtime = check_runtime(runtime)
    if device == "cpu" and runtime != "nnunet":
        reason = read_model_plans(model_dir, configuration).unsupported_reason()
        if reason is None:
            return SlidingWindowRunner(model_dir, folds, tile_step_size, configuration, runtime)
        warnings.warn(f"{Path(model_dir).name} runs through nnU-Net's own predictor: {reason}.", stacklevel=2)
    import torch

    torch_device = torch.device(device)
    configure_threads(torch_device)
    return ModelRunner(model_dir, folds, torch_device, tile_step_size, configuration)


def check_runtime(runtime: str) -> str:
    """A valid runtime name, or an error that lists them or says which packages the runtime needs."""
    name = (runtime or "auto").strip().lower()
    if name not in RUNTIMES:
        raise TotalSegmentatorError(f"Unknown runtime '{runtime}'. Use one of: {', '.join(RUNTIMES)}.")
    if not runtimes.runtime_installed(name):
        raise TotalSegmentatorError(f"The runtime '{name}' needs the {name} and onnx packages: "
                                    f"pip install {name} onnx (or choose --runtime torch).")
    return name


def cpu_runtime(runtime: str) -> str:
    """What runs the forward passes on the CPU: for "auto", AUTO_CPU_RUNTIME where it is installed, else torch."""
    if runtime != "auto":
        return runtime
    return AUTO_CPU_RUNTIME if runtimes.runtime_installed(AUTO_CPU_RUNTIME) else "torch"


def _available_folds(model_dir: Path) -> list[int]:
    folds = sorted(int(p.name.split("_")[1]) for p in model_dir.glob("fold_*")
                   if p.name.split("_")[1].isdigit() and (p / CHECKPOINT).is_file())
    if not folds:
        raise TotalSegmentatorError(f"No fold_N/{CHECKPOINT} found in {model_dir}.")
    return folds


def _make_progress_predictor():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class ProgressPredictor(nnUNetPredictor):
        """nnUNetPredictor that reports each sliding-window tile (and lets the caller cancel)."""

        on_tile: Optional[Callable[[int, int], None]] = None

        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            self._tiles_total = len(slicers) * max(1, len(self.list_of_parameters))
            self._tiles_done = 0
            return slicers

        def _internal_maybe_mirror_and_predict(self, x):
            result = super()._internal_maybe_mirror_and_predict(x)
            self._tiles_done = getattr(self, "_tiles_done", 0) + 1
            if self.on_tile is not None:
                self.on_tile(self._tiles_done, getattr(self, "_tiles_total", 0))
            return result

    return ProgressPredictor


class _LazyPredictorClass:
    """Defers importing nnunetv2 (seconds) until a model is actually built."""

    _cls = None

    def __call__(self, **kwargs):
        if self._cls is None:
            type(self)._cls = _make_progress_predictor()
        return self._cls(**kwargs)


_ProgressPredictor = _LazyPredictorClass()


def tile_reporter(progress: ProgressCallback, model: int, of: int, label: str,
                  should_cancel: Callable[[], bool]) -> Callable[[int, int], None]:
    """Callback for ModelRunner.predict that emits predict events and honours cancellation."""

    def report(done: int, total: int) -> None:
        if should_cancel():
            raise CancelledError("Segmentation was cancelled.")
        fraction = min(1.0, done / total) if total else None
        progress(ProgressEvent(stage="predict", message=f"Predicting {label}", fraction=fraction,
                               model=model, of=of))

    return report


__all__ = ["ModelRunner", "SlidingWindowRunner", "make_runner", "configure_threads", "tile_reporter",
           "ignore_progress"]
