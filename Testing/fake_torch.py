"""A stand-in for the parts of torch that tell what devices a machine has, for tests on a machine without a GPU.

Each member has the signature and return type of torch 2.13's own (``torch/cuda/__init__.py``,
``torch/cuda/memory.py``, ``torch/backends/mps/__init__.py``, ``torch/version.py``):

- ``torch.cuda.is_available() -> bool``; ``torch.cuda.device_count() -> int``;
- ``torch.cuda.get_device_name(device: Optional[Union[Device, int]] = None) -> str``;
- ``torch.cuda.mem_get_info(device: Optional[Union[Device, int]] = None) -> tuple[int, int]`` (free, total bytes);
- ``torch.cuda.empty_cache() -> None``;
- ``torch.backends.mps.is_available() -> bool``;
- ``torch.version.cuda``: the CUDA version string of a CUDA build, ``None`` for a CPU-only build;
- ``torch.device``: the real class (a CPU build constructs "cuda:0" device objects too);
- ``torch.OutOfMemoryError``: the real exception (a RuntimeError; ``torch.cuda.OutOfMemoryError`` is the same class).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Optional, Sequence, Union

import torch

Device = Union[torch.device, str, int, None]


class FakeCuda:
    """``torch.cuda`` of a machine with ``gpus`` (name, free bytes, total bytes)."""

    def __init__(self, gpus: Sequence[tuple[str, int, int]] = ()) -> None:
        self.gpus = list(gpus)
        self.emptied = 0

    def is_available(self) -> bool:
        return bool(self.gpus)

    def device_count(self) -> int:
        return len(self.gpus)

    def get_device_name(self, device: Optional[Union[Device, int]] = None) -> str:
        return self.gpus[self._index(device)][0]

    def mem_get_info(self, device: Optional[Union[Device, int]] = None) -> tuple[int, int]:
        _, free, total = self.gpus[self._index(device)]
        return free, total

    def empty_cache(self) -> None:
        self.emptied += 1

    def _index(self, device: Optional[Union[Device, int]]) -> int:
        if device is None:
            return 0
        if isinstance(device, int):
            return device
        return torch.device(device).index or 0


def fake_torch(gpus: Sequence[tuple[str, int, int]] = (), mps: bool = False, cuda_build: Optional[str] = "12.8",
               version: str = "2.13.0") -> SimpleNamespace:
    """A torch module object as the engine's device code reads it."""
    return SimpleNamespace(
        cuda=FakeCuda(gpus), backends=SimpleNamespace(mps=SimpleNamespace(is_available=lambda: mps)),
        version=SimpleNamespace(cuda=cuda_build), device=torch.device, __version__=version,
        OutOfMemoryError=torch.OutOfMemoryError)


GiB = 1 << 30
H100 = ("NVIDIA H100 80GB HBM3", 78 * GiB, 80 * GiB)
SMALL_GPU = ("NVIDIA GeForce GTX 1650", int(3.5 * GiB), 4 * GiB)
