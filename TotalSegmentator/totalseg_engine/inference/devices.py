"""The compute devices torch can use here, printed as JSON: ``python -m totalseg_engine.inference.devices``.

The Slicer panel asks a child process (``PythonSlicer -m totalseg_engine.inference.devices``) instead of importing torch
itself: importing torch in Slicer's process opens a CUDA context that stays for the whole session, and a broken
torch (a Windows DLL that fails to load raises OSError) would abort the panel's setup. Here a torch that is
missing or broken only reduces the list to auto and CPU, with a note on stderr; the exit status is 0 and stdout
is always one JSON list of ``{"label": ..., "value": ...}`` entries, the values being the engine's ``--device``
choices (auto, gpu:N, mps, cpu).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

from ..errors import TotalSegmentatorError

Device = dict[str, str]  # {"label": ..., "value": ...}
DEVICE_LIST_MODULE = "totalseg_engine.inference.devices"  # ``python -m`` this module prints the list
AUTO_DEVICE = ("auto (GPU if available)", "auto")  # (label, --device value) of the device lists
CPU_DEVICE = ("CPU", "cpu")


def import_torch() -> tuple[Optional[ModuleType], str]:
    """torch, or None and why not.

    Besides ImportError, a torch whose native libraries fail to load raises OSError (Windows DLLs) or
    RuntimeError (numpy ABI mismatch); any of them means "no torch" for the device list.
    """
    try:
        import torch
    except Exception as err:  # whatever breaks the import, the answer is auto + CPU
        return None, f"torch could not be imported ({type(err).__name__}: {err}); only the CPU is offered"
    return torch, ""


def list_devices(torch: Optional[ModuleType]) -> tuple[list[Device], str]:
    """auto, every CUDA GPU by name, Apple MPS when available, CPU; and a note when something was left out."""
    if torch is None:
        return [_device(*AUTO_DEVICE), _device(*CPU_DEVICE)], "torch is not installed; only the CPU is offered"
    accelerators: list[Device] = []
    note = ""
    try:
        accelerators = [_device(f"GPU {i}: {torch.cuda.get_device_name(i)}", f"gpu:{i}")
                        for i in range(torch.cuda.device_count())]
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            accelerators.append(_device("Apple MPS", "mps"))
    except Exception as err:  # a driver error must not hide the CPU
        accelerators = []
        note = f"the GPUs could not be listed ({type(err).__name__}: {err})"
    if not accelerators:
        note = cpu_only_torch_warning(torch) or note
    return [_device(*AUTO_DEVICE), *accelerators, _device(*CPU_DEVICE)], note


def gpu_count() -> int:
    """NVIDIA GPUs torch sees here (0 without torch, CUDA or GPUs), without importing torch where none can be."""
    if not gpu_possible():
        return 0
    torch, _ = import_torch()
    if torch is None:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


NO_GPU = "No GPU detected, running on the CPU. This can be slow; --fast helps."
CPU_ONLY_TORCH = ("torch {version} here is a CPU-only build, but this machine has an NVIDIA GPU ({gpu}): the run uses "
                  "the CPU. To use the GPU, install a CUDA build of torch (in 3D Slicer: the PyTorch extension's "
                  "PyTorch Utils module, Install; elsewhere the command pytorch.org gives for your CUDA version).")


def resolve_device(requested: str = "gpu") -> str:
    """The device a request maps to ("cpu", "cuda:N" or "mps"), without importing torch when no GPU can exist.

    Importing torch takes about two seconds; on Linux without NVIDIA device files the answer is known without it,
    so a CPU-only run never pays for it. ``auto`` tries CUDA, then Apple's MPS, then the CPU; ``gpu`` means CUDA,
    as in the official tool, and falls back to the CPU with a warning.
    """
    text = (requested or "auto").strip().lower()
    if text == "cpu":
        return "cpu"
    if text in ("auto", "gpu", "cuda") or text.startswith(("gpu:", "cuda:")):
        device_index(text)  # malformed indices fail here, GPU or not
        if not gpu_possible(mps=text == "auto"):
            if text != "auto":
                warnings.warn(NO_GPU, stacklevel=2)
            return "cpu"
    return str(select_device(requested))


def gpu_possible(mps: bool = False) -> bool:
    """Whether a GPU could be there, answered without torch where the operating system can tell (Linux)."""
    if mps and sys.platform == "darwin":
        return True
    if os.name != "posix" or not Path("/dev").is_dir() or Path("/proc/driver/nvidia").exists():
        return True
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/dxg").exists()


def select_device(requested: str = "gpu", torch: Optional[ModuleType] = None):
    """Map a user device string (auto, gpu, gpu:N, cuda, cuda:N, cpu, mps) to a torch.device.

    ``auto``: CUDA, then MPS, then the CPU. A GPU request on a machine without one falls back to the CPU with a
    warning, as the official tool does (and says how to get a CUDA build of torch where a CPU-only one hides an
    NVIDIA GPU); a malformed string raises with the valid forms.
    """
    if torch is None:
        import torch
    text = (requested or "auto").strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available(torch):
            raise TotalSegmentatorError("Device 'mps' was requested but Apple MPS is not available here.")
        return torch.device("mps")
    if text in ("auto", "gpu", "cuda") or text.startswith(("gpu:", "cuda:")):
        return _cuda_or_fallback(torch, text)
    raise TotalSegmentatorError(f"Unknown device '{requested}'. Use one of: auto, gpu, gpu:N, cpu, mps.")


def _cuda_or_fallback(torch: ModuleType, text: str):
    index = device_index(text)
    if torch.cuda.is_available():
        if index >= torch.cuda.device_count():
            raise TotalSegmentatorError(
                f"GPU {index} was requested but only {torch.cuda.device_count()} GPU(s) are present.")
        return torch.device(f"cuda:{index}")
    if text == "auto" and _mps_available(torch):
        return torch.device("mps")
    hidden = cpu_only_torch_warning(torch)
    if hidden:
        warnings.warn(hidden, stacklevel=3)
    elif text != "auto":
        warnings.warn(NO_GPU, stacklevel=3)
    return torch.device("cpu")


def _mps_available(torch: ModuleType) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def cpu_only_torch_warning(torch: ModuleType) -> str:
    """The advice for a CPU-only torch on a machine whose ``nvidia-smi`` lists a GPU ("" otherwise)."""
    version = getattr(torch, "version", None)
    if version is None or getattr(version, "cuda", None) is not None:  # a CUDA build (or one that cannot say)
        return ""
    gpus = nvidia_gpus()
    return CPU_ONLY_TORCH.format(version=torch.__version__, gpu="; ".join(gpus)) if gpus else ""


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> tuple[str, ...]:
    """The GPUs ``nvidia-smi -L`` lists ("GPU 0: NVIDIA ..."), none where it is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.split(" (UUID")[0] for line in done.stdout.splitlines() if line.startswith("GPU "))


def device_index(text: str) -> int:
    if ":" not in text:
        return 0
    try:
        return int(text.split(":", 1)[1])
    except ValueError as err:
        raise TotalSegmentatorError(f"Unknown device '{text}'. Use one of: auto, gpu, gpu:N, cpu, mps.") from err


def _device(label: str, value: str) -> Device:
    return {"label": label, "value": value}


def main() -> int:
    torch, note = import_torch()
    devices, list_note = list_devices(torch)
    note = note or list_note
    if note:
        print(note, file=sys.stderr)
    print(json.dumps(devices))
    return 0


if __name__ == "__main__":
    sys.exit(main())
