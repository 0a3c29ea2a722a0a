"""The compute devices torch can use here, printed as JSON: ``python -m totalseg_engine.inference.devices``.

The Slicer panel asks a child process (``PythonSlicer -m totalseg_engine.inference.devices``) instead of importing torch
itself: importing torch in Slicer's process opens a CUDA context that stays for the whole session, and a broken
torch (a Windows DLL that fails to load raises OSError) would abort the panel's setup. Here a torch that is
missing or broken only reduces the list to auto and CPU, with a note on stderr; the exit status is 0 and stdout
is always one JSON list of ``{"label": ..., "value": ...}`` entries, the values being the engine's ``--device``
choices (auto, gpu:N, mps, cpu).
"""

from __future__ import annotations

import json
import sys
from types import ModuleType
from typing import Optional

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
    return [_device(*AUTO_DEVICE), *accelerators, _device(*CPU_DEVICE)], note


def gpu_count() -> int:
    """NVIDIA GPUs torch sees here (0 without torch, CUDA or GPUs), without importing torch where none can be."""
    from .prediction import gpu_possible

    if not gpu_possible():
        return 0
    torch, _ = import_torch()
    if torch is None:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


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
