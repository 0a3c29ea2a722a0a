"""Will a run fit? Its memory need, estimated from the image size and the models, against what is free now.

The estimate (bytes) is, per model run, what our benchmarks show the peak to be made of (README, Performance:
``--fast`` peaks of 3.8-4.6 GiB on example_ct, 6.4-7.1 GiB on the 512x512x191 chest, CPU, torch):

- a fixed part: the runtime and the network's weights (:data:`BASE_RAM`, :data:`BASE_GPU` with the CUDA context);
- the activations of one sliding window, proportional to the patch's voxels times the first stage's features
  (:data:`ACTIVATION_BYTES`: 3.4 GiB for nnU-Net's default CT network, a 128³ patch with 32 features; half of it on
  a GPU, where nnU-Net runs in float16);
- the image: about :data:`INPUT_BYTES` per voxel of the input (the read data, its float64 working copies, the
  label maps on the input's grid), and per voxel at the model's spacing the class sums in float16 plus the window
  weights (``2 * classes + 8``).

Against those three peaks the estimate gives 4.4, 4.5 and 6.5 GiB (``Testing/test_devices_and_memory.py``).

The panel asks before a run (``python -m totalseg_engine.inference.resources``, a child process, so that Slicer
never imports torch), and offers fast mode or split processing when it will not fit; the command line warns once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

RESOURCE_CHECK_MODULE = "totalseg_engine.inference.resources"  # ``python -m`` this module answers the panel
GiB = 1 << 30
BASE_RAM = int(0.6 * GiB)
BASE_GPU = int(1.0 * GiB)  # CUDA context and allocator reserve
ACTIVATION_BYTES = 3.4 * GiB / (128 ** 3 * 32)  # per (patch voxel x first-stage feature), float32 on a CPU
DEFAULT_PATCH_FEATURES = (128 ** 3, 32)  # nnU-Net's default CT network, where a model's plans are not at hand
INPUT_BYTES = 45  # calibrated on the 512x512x191 chest: 6.4-7.1 GiB peak, 50 M input voxels
SPLIT_PARTS = 3


class MemoryShortfallWarning(UserWarning):
    """A run that will probably not fit into the free memory (said once, with what to do)."""


@dataclass(frozen=True)
class ModelSize:
    """What of a model the estimate needs: its patch's voxels, first-stage features and output classes."""

    patch_voxels: int
    features: int
    classes: int


@dataclass(frozen=True)
class Fit:
    """The estimate against the free memory of the device a run uses (``free`` None: unknown, assumed enough)."""

    device: str  # "cpu", "cuda:N" or "mps"
    need: int
    free: Optional[int]
    advice: tuple[str, ...] = ()  # "fast", "force_split": what would reduce the need

    @property
    def fits(self) -> bool:
        return self.free is None or self.need <= self.free

    def message(self) -> str:
        where = "RAM" if self.device in ("cpu", "mps") else f"memory on GPU {self.device.split(':')[-1]}"
        free = "an unknown amount" if self.free is None else f"{self.free / GiB:.1f} GB"
        hints = {"fast": "--fast (3 mm models) needs much less", "force_split": "--force_split (three slabs) "
                 "needs less"}
        advice = "; ".join(hints[name] for name in self.advice) or "close other programs or use a smaller image"
        return (f"This run needs about {self.need / GiB:.1f} GB of {where}, but only {free} is free: it may fail "
                f"or be very slow. {advice[0].upper()}{advice[1:]}.")


def need_bytes(input_shape: Sequence[int], input_spacing: Sequence[float], model_spacing: Optional[Sequence[float]],
               models: Sequence[ModelSize], where: str, parts: int = 1) -> int:
    """The estimated peak of one run in ``where``: "ram" for a CPU run, "gpu" for a GPU's memory, "host" for the
    RAM a GPU run needs beside it (the image, and the class sums it hands back). Models run one after another, so
    the largest one counts."""
    input_voxels = math.prod(int(n) for n in input_shape)
    scale = 1.0 if model_spacing is None else math.prod(float(a) / float(b)
                                                        for a, b in zip(input_spacing, model_spacing))
    model_voxels = input_voxels * scale / parts
    activation = {"ram": ACTIVATION_BYTES, "gpu": ACTIVATION_BYTES / 2, "host": 0.0}[where]
    per_model = max(activation * m.patch_voxels * m.features + (2 * m.classes + 8) * model_voxels for m in models)
    image = 0 if where == "gpu" else INPUT_BYTES * input_voxels  # on a GPU only the model's arrays are on the device
    return int((BASE_GPU if where == "gpu" else BASE_RAM) + per_model + image)


def model_sizes(model_dirs: Sequence[Optional[Path]], classes: Sequence[int]) -> list[ModelSize]:
    """Each model's size from its plans where its folder is installed, else nnU-Net's default CT network's."""
    sizes = []
    for folder, count in zip(model_dirs, classes):
        patch, features = DEFAULT_PATCH_FEATURES
        if folder is not None and (folder / "plans.json").is_file():
            from .nnunet_plans import read_model_plans

            try:
                plans = read_model_plans(folder)
                patch, features = math.prod(plans.patch_size), int(plans.network_kwargs["features_per_stage"][0])
            except Exception:  # a plans file the run itself will name when it reads it
                pass
        sizes.append(ModelSize(patch, features, count))
    return sizes


def free_bytes(device: str, torch: Optional[ModuleType] = None) -> Optional[int]:
    """Free memory now: the GPU's for cuda:N (torch.cuda.mem_get_info), else the machine's available RAM."""
    if device.startswith("cuda"):
        if torch is None:
            return None
        try:
            return int(torch.cuda.mem_get_info(int(device.split(":")[1]) if ":" in device else 0)[0])
        except Exception:  # a driver that cannot answer: nothing to compare with
            return None
    return available_ram()


def available_ram() -> Optional[int]:
    """MemAvailable of /proc/meminfo (Linux), psutil's answer elsewhere, None when neither can tell."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check(input_shape: Sequence[int], input_spacing: Sequence[float], request, device: str,
          torch: Optional[ModuleType] = None) -> Fit:
    """The fit of a request's run on ``device`` (resolved: cpu, cuda:N or mps), with what would help: for a GPU its
    memory and then the RAM beside it, the first that is short (else the GPU's)."""
    from ..tasks import get_task
    from ..weights import model_dir

    task = get_task(request.task)
    mode = task.sized_mode(request.speed, request.model_size)
    sizes = model_sizes([_installed(model_dir, spec) for spec in mode.models],
                        [len(spec.classes or task.classes) + 1 for spec in mode.models])
    spacing = None if request.higher_order_resampling else mode.spacing
    parts = SPLIT_PARTS if request.force_split else 1
    places = [("gpu", device), ("host", "cpu")] if device.startswith("cuda") else [("ram", device)]
    fits = []
    for where, memory in places:
        free = free_bytes(memory, torch)
        need = need_bytes(input_shape, input_spacing, spacing, sizes, where, parts)
        split = need_bytes(input_shape, input_spacing, spacing, sizes, where, SPLIT_PARTS)
        fits.append(Fit(memory, need, free, _advice(task, request, free, split)))
    return next((fit for fit in fits if not fit.fits), fits[0])


def _advice(task, request, free: Optional[int], split_need: int) -> tuple[str, ...]:
    """What would help: fast mode where the task has it, split processing where three slabs would fit."""
    advice = []
    if request.speed == "normal" and "fast" in task.modes:
        advice.append("fast")
    if not request.force_split and (free is None or split_need <= free):
        advice.append("force_split")
    return tuple(advice)


def _installed(model_dir, spec) -> Optional[Path]:
    folder = model_dir(spec)
    return folder if folder.is_dir() else None


def warn_if_short(fit: Fit) -> None:
    """The command line's one warning when a run will probably not fit."""
    if not fit.fits:
        warnings.warn(fit.message(), MemoryShortfallWarning, stacklevel=2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m totalseg_engine.inference.resources --shape X Y Z --spacing A B C [request flags]``: one JSON
    line with the fit, for the panel's question before a run (torch is imported only for a GPU)."""
    from ..cli.options import add_request_arguments, request_from_args
    from .devices import resolve_device

    parser = argparse.ArgumentParser(prog="totalseg_engine.inference.resources", allow_abbrev=False)
    parser.add_argument("--shape", nargs=3, type=int, required=True)
    parser.add_argument("--spacing", nargs=3, type=float, required=True)
    add_request_arguments(parser)
    args = parser.parse_args(argv)
    request = request_from_args(parser, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        device = resolve_device(request.device)
    torch = sys.modules.get("torch") if device.startswith("cuda") else None
    fit = check(args.shape, args.spacing, request, device, torch)
    print(json.dumps({**asdict(fit), "fits": fit.fits, "message": "" if fit.fits else fit.message()}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
