"""Devices chosen from what the machine has, the memory a run needs against what is free, and runs that run out of
memory: auto's order, the CPU-only torch advice, the estimate against our benchmarks' peaks, the command line's
warning, the panel's question, and the retries (three slabs, then the CPU). The GPUs are ``fake_torch``'s, written
from torch's own signatures; torch's real ``OutOfMemoryError`` is raised from the forward pass."""

from __future__ import annotations

import os
import stat
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from fake_torch import H100, SMALL_GPU, GiB, fake_torch
from model_factory import NetworkSize, write_task_models
from totalseg_engine import SegmentationRequest, TotalSegmentatorError
from totalseg_engine.cli import main as cli
from totalseg_engine.core import model_runs, pipeline
from totalseg_engine.inference import devices, resources
from totalseg_engine.inference.prediction import SlidingWindowRunner
from totalseg_engine.weights import paths
from totalseg_slicer import resources as slicer_resources

TINY = NetworkSize(features=(2, 4, 8), patch_size=(64, 64, 64))


# ---------------------------------------------------------------- which device


@pytest.mark.parametrize("gpus, mps, expected", [((H100,), True, "cuda:0"), ((), True, "mps"), ((), False, "cpu")])
def test_auto_picks_cuda_then_apple_mps_then_the_cpu(gpus, mps, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns: it took what there is
        assert str(devices.select_device("auto", fake_torch(gpus, mps))) == expected


def test_gpu_means_cuda_and_falls_back_to_the_cpu_with_a_warning():
    with pytest.warns(UserWarning, match="No GPU detected"):
        assert str(devices.select_device("gpu", fake_torch(mps=True))) == "cpu"
    assert str(devices.select_device("gpu:1", fake_torch((H100, H100)))) == "cuda:1"
    with pytest.raises(TotalSegmentatorError, match="GPU 2 was requested but only 2"):
        devices.select_device("gpu:2", fake_torch((H100, H100)))


def test_auto_on_a_mac_asks_torch_for_mps(monkeypatch):
    monkeypatch.setattr(devices.sys, "platform", "darwin")
    monkeypatch.setitem(sys.modules, "torch", fake_torch(mps=True))
    assert devices.resolve_device("auto") == "mps"
    with pytest.warns(UserWarning, match="No GPU detected"):  # "gpu" is CUDA only, as in the official tool
        assert devices.resolve_device("gpu") == "cpu"


def test_a_cpu_only_torch_hiding_an_nvidia_gpu_says_how_to_get_the_cuda_build(monkeypatch):
    monkeypatch.setattr(devices, "nvidia_gpus", lambda: ("GPU 0: NVIDIA RTX A6000",))
    cpu_build = fake_torch(cuda_build=None, version="2.13.0+cpu")
    with pytest.warns(UserWarning, match=r"torch 2.13.0\+cpu here is a CPU-only build.*NVIDIA RTX A6000.*PyTorch "
                                         r"extension"):
        assert str(devices.select_device("auto", cpu_build)) == "cpu"
    assert "PyTorch Utils module" in devices.list_devices(cpu_build)[1]
    assert devices.cpu_only_torch_warning(fake_torch(cuda_build="12.8")) == ""  # a CUDA build: not this problem


def test_nvidia_gpus_are_read_from_nvidia_smi(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0f3c)'\necho 'GPU 1: NVIDIA H100 80GB "
                   "HBM3 (UUID: GPU-9a1b)'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    devices.nvidia_gpus.cache_clear()
    try:
        assert devices.nvidia_gpus() == ("GPU 0: NVIDIA H100 80GB HBM3", "GPU 1: NVIDIA H100 80GB HBM3")
    finally:
        devices.nvidia_gpus.cache_clear()


# ---------------------------------------------------------------- how much memory


BENCHMARK_PEAKS = [  # README, Performance: our --fast runs (torch, CPU), peak of the whole process tree in MiB
    ((122, 101, 112), (3.0, 3.0, 3.0), 3769, 4584),  # example_ct
    ((233, 167, 191), (1.5, 1.5, 1.5), 3940, 4860),  # chest_cta_1.5mm
    ((512, 512, 191), (400 / 512, 400 / 512, 1.5), 6442, 7102),  # chest_large
]


@pytest.mark.parametrize("shape, spacing, low, high", BENCHMARK_PEAKS)
def test_the_estimate_falls_among_the_peaks_our_benchmarks_measured(shape, spacing, low, high):
    """nnU-Net's default CT network (128³ patch, 32 features) was the benchmarks' 3 mm model."""
    sizes = [resources.ModelSize(128 ** 3, 32, 118)]
    need = resources.need_bytes(shape, spacing, (3.0, 3.0, 3.0), sizes, "ram") / 2 ** 20
    assert low * 0.95 <= need <= high * 1.05, need


def test_a_run_that_will_not_fit_on_a_small_gpu_says_how_much_and_what_helps():
    request = SegmentationRequest(device="gpu")
    fit = resources.check((512, 512, 700), (0.7, 0.7, 0.8), request, "cuda:0", fake_torch((SMALL_GPU,)))
    assert not fit.fits and fit.device == "cuda:0" and fit.free == SMALL_GPU[1]
    assert "fast" in fit.advice
    assert "of memory on GPU 0, but only 3.5 GB is free" in fit.message() and "--fast" in fit.message()
    assert resources.check((122, 101, 112), (3, 3, 3), SegmentationRequest(speed="fast"), "cuda:0",
                           fake_torch((H100,))).fits


def test_the_ram_beside_a_gpu_is_checked_too(monkeypatch):
    monkeypatch.setattr(resources, "available_ram", lambda: GiB)
    fit = resources.check((512, 512, 700), (0.7, 0.7, 0.8), SegmentationRequest(), "cuda:0", fake_torch((H100,)))
    assert not fit.fits and fit.device == "cpu" and "GB of RAM" in fit.message()


def test_the_command_line_warns_once_when_a_run_will_not_fit(monkeypatch, data_dir, tmp_path):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    write_task_models(paths.weights_dir(), "total", "fast", TINY, seed=2)
    monkeypatch.setattr(resources, "available_ram", lambda: GiB // 2)
    with pytest.warns(resources.MemoryShortfallWarning) as said:
        code = cli.main(["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "s.nii.gz"), "--ml",
                         "-f", "-d", "cpu", "--offline", "-q"])
    shortfalls = [w for w in said if w.category is resources.MemoryShortfallWarning]
    assert code == 0 and len(shortfalls) == 1 and "only 0.5 GB is free" in str(shortfalls[0].message)


def test_the_panels_question_is_answered_by_the_engine_in_a_child_process(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    fast = SegmentationRequest(device="cpu", speed="fast")
    assert slicer_resources.check_resources(sys.executable, (122, 101, 112), (3.0, 3.0, 3.0), fast) is None
    short = slicer_resources.check_resources(sys.executable, (4000, 4000, 4000), (0.3, 0.3, 0.3),
                                             SegmentationRequest(device="cpu"))
    assert short is not None and "GB of RAM" in short.message and "fast" in short.advice
    assert slicer_resources.check_resources(str(tmp_path / "no-python"), (1, 1, 1), (1, 1, 1), fast) is None


# ---------------------------------------------------------------- out of memory


class Tight:
    """A runner factory whose runners run out of memory above ``fits`` voxels (``device``: where they run)."""

    def __init__(self, fits: int, device: str = "cpu", cpu: Tight = None, label: int = 5) -> None:
        self.fits, self.device, self.cpu, self.label = fits, device, cpu, label
        self.calls: list[tuple[int, ...]] = []
        if cpu is not None:
            self.for_cpu = lambda: cpu

    def __call__(self, spec, step):
        return self

    def predict(self, channels, spacing_xyz, on_tile=None):
        shape = np.asarray(channels[0]).shape
        self.calls.append(shape)
        if np.prod(shape) > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {np.prod(shape) * 236} bytes")
        return np.full(shape, self.label, dtype=np.uint8)


def _ct(shape=(40, 40, 90)) -> nib.Nifti1Image:
    return nib.Nifti1Image((np.indices(shape).sum(axis=0) * 7).astype(np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))


def _segment(factory, events=None):
    return pipeline.segment(_ct(), SegmentationRequest(speed="fast", device="cpu"), runner_factory=factory,
                            progress=events.append if events is not None else (lambda event: None))


def test_a_model_that_runs_out_of_memory_runs_again_in_three_slabs():
    factory, events = Tight(fits=40 * 40 * 70), []  # the slabs: 50, 69 and 49 slices (thirds and margins)
    with pytest.warns(model_runs.OutOfMemoryWarning, match="again in three slabs"):
        result = _segment(factory, events)
    assert factory.calls[0] == (40, 40, 90) and [c[2] for c in factory.calls[1:]] == [50, 69, 49]
    assert np.all(result.data == 5)
    assert any("Out of memory" in (event.message or "") for event in events)


def test_then_on_the_cpu_when_it_ran_on_a_gpu():
    cpu = Tight(fits=10 ** 9, label=7)
    gpu = Tight(fits=1000, device="cuda:0", cpu=cpu)
    with pytest.warns(model_runs.OutOfMemoryWarning) as said:
        result = _segment(gpu)
    assert [str(w.message).split(" again ")[1] for w in said] == ["in three slabs along z.", "on the CPU (slower)."]
    assert np.all(result.data == 7) and cpu.calls == [(40, 40, 90)]


def test_what_never_fits_stops_with_a_message_not_a_traceback(monkeypatch, data_dir, tmp_path, capsys):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    write_task_models(paths.weights_dir(), "total", "fast", TINY, seed=2)

    def no_memory(self, channels, spacing_xyz, on_tile=None):
        raise MemoryError()

    monkeypatch.setattr(SlidingWindowRunner, "predict", no_memory)
    with pytest.raises(TotalSegmentatorError, match="ran out of memory even in three slabs"):
        _segment(Tight(fits=0))
    code = cli.main(["-i", str(data_dir / "example_ct.nii.gz"), "-o", str(tmp_path / "s.nii.gz"), "--ml", "-f",
                     "-d", "cpu", "--offline", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "ERROR: The CPU ran out of memory" in err and "Traceback" not in err
    assert not (tmp_path / "s.nii.gz").exists()
    assert Path(tmp_path).is_dir()
