"""Installing the engine's packages through Slicer 5.8, 5.10 and 5.12's pip APIs, and listing devices.

Slicer's pip functions are stand-ins (slicer_pip_stand_ins) that build the command line as Slicer does, so
these tests assert the exact ``PythonSlicer -m pip ...`` each Slicer version would run.
"""

from __future__ import annotations

import builtins
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from slicer_pip_stand_ins import PYTHON_SLICER, PipRecorder, pytorch_utils_module, slicer_58, slicer_512
from totalseg_engine.inference import devices
from totalseg_engine.runner import child_environment
from totalseg_slicer import dependencies, dependency_install
from totalseg_slicer import devices as slicer_devices
from totalseg_slicer.dependency_install import DependencyInstallError, InstallPlan, PipStep

PIP = [PYTHON_SLICER, "-m", "pip", "install"]
PREFER_BINARY = "--prefer-binary"
ENGINE_PACKAGES = ["nnunetv2>=2.5.1", "nibabel>=5.0", "scipy>=1.10"]  # what Python 3.12 on Linux installs
SLICER_PACKAGES = {"numpy": "1.26.4", "SimpleITK": "2.4.0", "requests": "2.32.3"}
PROTECTED_PINS = ["numpy==1.26.4", "SimpleITK==2.4.0", "requests==2.32.3"]
PYTHON_39, PYTHON_312 = (3, 9), (3, 12)
AUTO_CPU = [("auto (GPU if available)", "auto"), ("CPU", "cpu")]


class Python:
    """An installed-package table standing in for importlib.metadata; pip runs through a recorder update it."""

    def __init__(self, **installed: str) -> None:
        self.installed = dict(SLICER_PACKAGES, **installed)
        self.constraints_seen: list[list[str]] = []

    def version(self, name: str) -> str:
        if name not in self.installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return self.installed[name]

    def statuses(self, python_version=PYTHON_312, platform="linux") -> list[dependencies.Status]:
        return dependencies.check(self.version, python_version, platform)

    def recorder(self, **kwargs) -> PipRecorder:
        """Records pip runs and the constraints each saw; a successful run naming torch installs torch 2.8.0."""
        def install(argv: list[str]) -> None:
            if "-c" in argv:
                self.constraints_seen.append(Path(argv[argv.index("-c") + 1]).read_text().split())
            if any(arg.startswith("torch") and not arg.startswith("torchvision") for arg in argv):
                self.installed["torch"] = "2.8.0"
        return PipRecorder(on_run=install, **kwargs)


def constraints_of(argv: list[str]) -> str:
    return argv[argv.index("-c") + 1]


# ---------------------------------------------------------------- the "pip install install" defect


def test_pip_arguments_through_slicer_58_run_pip_install_once(tmp_path):
    """Before issue #12 the arguments began with "install", which pip_install adds again."""
    recorder = PipRecorder()
    util, _ = slicer_58(recorder)
    python = Python(torch="2.8.0")
    (step,) = dependency_install.plan_install(python.statuses()).steps
    args = dependency_install.legacy_pip_arguments(step, tmp_path / "constraints.txt")
    util.pip_install(args)
    (argv,) = recorder.commands
    assert argv[:4] == PIP and "install" not in argv[4:]
    assert argv[5].startswith("nnunetv2>=2.5.1") and argv[-2:] == ["-c", str(tmp_path / "constraints.txt")]


# ---------------------------------------------------------------- fresh installs per Slicer version


def test_fresh_install_on_slicer_58_python_39_uses_its_pins():
    python = Python()
    recorder = python.recorder()
    util, packaging = slicer_58(recorder)
    plan = dependency_install.plan_install(python.statuses(PYTHON_39), PYTHON_39, "linux")
    dependency_install.install_dependencies(plan, util, packaging, None, python.version)

    torch_run, rest_run = recorder.commands
    assert torch_run == [*PIP, PREFER_BINARY, "torch>=2.1.2", "-c", constraints_of(torch_run)]
    assert rest_run == [*PIP, PREFER_BINARY, "nnunetv2>=2.5.1,<2.6", "nibabel>=5.0", "scipy>=1.10", "acvl-utils==0.2",
                        "dynamic-network-architectures<0.4", "dicom2nifti<=2.5.1", "-c", constraints_of(rest_run)]
    # Slicer's packages pinned in both runs, torch in the second once it is there
    assert python.constraints_seen == [PROTECTED_PINS, [*PROTECTED_PINS, "torch==2.8.0"]]
    assert {pin.name for pin in plan.pins} == {"nnunetv2", "acvl-utils", "dynamic-network-architectures",
                                               "dicom2nifti"}


def test_fresh_install_on_slicer_58_for_macos_keeps_nnunet_25_and_pins_imagecodecs():
    """nnunetv2 2.7.0 (needed under Rosetta 2) requires Python 3.10, so Python 3.9 cannot have it."""
    plan = dependency_install.plan_install(Python().statuses(PYTHON_39, "darwin"), PYTHON_39, "darwin")
    (step,) = plan.steps
    assert step.requirements[0] == "nnunetv2>=2.5.1,<2.6"
    assert "imagecodecs<=2026.3.6" in step.requirements


def test_fresh_install_on_slicer_510_installs_torch_through_the_pytorch_extension():
    python = Python()
    recorder = python.recorder()
    util, packaging = slicer_58(recorder)  # 5.10's pip_install is 5.8's
    plan = dependency_install.plan_install(python.statuses(), PYTHON_312, "linux")
    dependency_install.install_dependencies(plan, util, packaging, pytorch_utils_module(util), python.version)

    torch_run, rest_run = recorder.commands
    assert torch_run == [PYTHON_SLICER, "-m", "light_the_torch", "install", "torch>=2.1.2", "torchvision"]
    assert rest_run == [*PIP, PREFER_BINARY, *ENGINE_PACKAGES, "-c", constraints_of(rest_run)]
    assert python.constraints_seen == [[*PROTECTED_PINS, "torch==2.8.0"]]


def test_fresh_install_on_slicer_512_passes_constraints_through_the_api():
    python = Python()
    recorder = python.recorder()
    util, packaging = slicer_512(recorder)
    plan = dependency_install.plan_install(python.statuses(), PYTHON_312, "linux")
    dependency_install.install_dependencies(plan, util, packaging, None, python.version)

    torch_run, rest_run = recorder.commands
    assert torch_run == [*PIP, PREFER_BINARY, "torch>=2.1.2", "-c", constraints_of(torch_run)]
    assert rest_run == [*PIP, PREFER_BINARY, *ENGINE_PACKAGES, "-c", constraints_of(rest_run)]
    assert [call["requirements"] for call in packaging.calls] == [
        [PREFER_BINARY, "torch>=2.1.2"], [PREFER_BINARY, *ENGINE_PACKAGES]]
    assert all(call["constraints"] and call["no_deps_requirements"] is None for call in packaging.calls)
    assert {call["requester"] for call in packaging.calls} == {"TotalSegmentator"}


def test_fresh_install_on_slicer_512_for_macos_needs_nnunet_27():
    python = Python(torch="2.8.0", nnunetv2="2.5.2", nibabel="5.3", scipy="1.14")
    statuses = python.statuses(PYTHON_312, "darwin")
    assert dependencies.summary(statuses) == "missing: nnunetv2"
    assert "needs >= 2.7.0" in next(s.describe() for s in statuses if s.requirement.name == "nnunetv2")
    plan = dependency_install.plan_install(statuses, PYTHON_312, "darwin")
    assert plan.steps == (PipStep(("nnunetv2>=2.7.0", "imagecodecs<=2026.3.6")),)


def test_plan_requirements_are_valid_for_slicer_512_pip_ensure():
    """pip_ensure parses every requirement with packaging.Requirement: the plan's strings must be valid."""
    from packaging.requirements import Requirement

    recorder = PipRecorder()
    util, packaging = slicer_512(recorder)
    plan = dependency_install.plan_install(Python().statuses(PYTHON_39), PYTHON_39, "darwin")
    packaging.pip_ensure(list(plan.steps[0].requirements), constraints="c.txt")
    (argv,) = recorder.commands
    assert argv == [*PIP, *(str(Requirement(r)) for r in plan.steps[0].requirements), "-c", "c.txt"]


# ---------------------------------------------------------------- reinstall


@pytest.mark.parametrize("slicer", [slicer_58, slicer_512])
def test_reinstall_repairs_nnunet_alone(slicer):
    python = Python(torch="2.8.0", nnunetv2="2.6.4", nibabel="5.3", scipy="1.14")
    recorder = python.recorder()
    util, packaging = slicer(recorder)
    assert dependency_install.plan_install(python.statuses(), PYTHON_312, "linux").empty
    plan = dependency_install.plan_install(python.statuses(), PYTHON_312, "linux", reinstall=True)
    dependency_install.install_dependencies(plan, util, packaging, None, python.version)
    (argv,) = recorder.commands
    repair = ["--force-reinstall", "--no-deps", PREFER_BINARY, "nnunetv2>=2.5.1"]
    assert argv == [*PIP, *repair, "-c", constraints_of(argv)]
    assert python.constraints_seen == [[*PROTECTED_PINS, "torch==2.8.0"]]


def test_reinstall_with_something_missing_installs_only_that():
    python = Python(torch="2.8.0", nnunetv2="2.6.4", nibabel="5.3")
    plan = dependency_install.plan_install(python.statuses(), PYTHON_312, "linux", reinstall=True)
    assert plan == InstallPlan(steps=(PipStep(("scipy>=1.10",)),))


# ---------------------------------------------------------------- Slicer's own packages


def test_slicer_packages_are_never_requirements_and_always_constrained():
    python = Python(SimpleITK="2.1.0")
    python.installed.pop("requests")
    plan = dependency_install.plan_install(python.statuses(PYTHON_39), PYTHON_39, "linux")
    named = " ".join(req for step in plan.steps for req in step.requirements)
    assert not any(name.lower() in named.lower() for name in dependencies.PROTECTED)
    assert [s.requirement.name for s in plan.blocked] == ["SimpleITK"]
    assert "SimpleITK 2.1.0: too old" in plan.describe()
    recorder = python.recorder()
    util, packaging = slicer_58(recorder)
    with pytest.raises(DependencyInstallError, match="newer Slicer"):
        dependency_install.install_dependencies(plan, util, packaging, None, python.version)
    assert recorder.commands == []
    assert dependencies.constraints_text(python.version) == "numpy==1.26.4\nSimpleITK==2.1.0\n"


def test_a_changed_slicer_package_is_reported():
    """The PyTorch extension takes no constraints: if its pip run replaced numpy, the user is told."""
    python = Python()
    util, packaging = slicer_58(PipRecorder(on_run=lambda argv: python.installed.update(numpy="2.1.0")))
    plan = InstallPlan(torch="torch>=2.1.2")
    with pytest.raises(DependencyInstallError, match=r"numpy 1\.26\.4 -> 2\.1\.0"):
        dependency_install.install_dependencies(plan, util, packaging, pytorch_utils_module(util), python.version)


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("slicer", [slicer_58, slicer_512, lambda recorder: slicer_512(recorder, gui=True)])
def test_a_failed_pip_run_raises_a_clear_error(slicer):
    python = Python(torch="2.8.0")
    recorder = python.recorder(fail_when=lambda argv: "nibabel>=5.0" in argv)
    util, packaging = slicer(recorder)
    plan = dependency_install.plan_install(python.statuses(PYTHON_39), PYTHON_39, "linux")
    with pytest.raises(DependencyInstallError) as failure:
        dependency_install.install_dependencies(plan, util, packaging, None, python.version)
    message = str(failure.value)
    assert "Installing nnunetv2>=2.5.1,<2.6, nibabel>=5.0," in message and "(pip exit status 1)" in message
    assert "Command: PythonSlicer -m pip install --prefer-binary 'nnunetv2>=2.5.1,<2.6' 'nibabel>=5.0'" in message
    assert "press Install beside 'Python packages'" in message
    assert isinstance(failure.value, RuntimeError)
    assert isinstance(failure.value.__cause__, subprocess.CalledProcessError)


def test_a_failed_torch_install_stops_before_nnunet():
    python = Python()
    recorder = python.recorder(fail_when=lambda argv: "light_the_torch" in argv)
    util, packaging = slicer_58(recorder)
    plan = dependency_install.plan_install(python.statuses(), PYTHON_312, "linux")
    with pytest.raises(DependencyInstallError, match="through the PyTorch extension failed") as failure:
        dependency_install.install_dependencies(plan, util, packaging, pytorch_utils_module(util), python.version)
    assert "PyTorch Utils module" in str(failure.value)
    assert len(recorder.commands) == 1


def test_pytorch_extension_returning_none_is_an_error():
    util, packaging = slicer_58(PipRecorder())
    with pytest.raises(DependencyInstallError, match="was not installed"):
        dependency_install.install_torch("torch>=2.1.2", util, packaging, Path("c.txt"),
                                         pytorch_utils_module(util, torch_module=None))


def test_pythonslicer_not_found_is_a_clear_error():
    def missing_python(requirements):
        raise RuntimeError("PythonSlicer executable not found")

    util = SimpleNamespace(pip_install=missing_python)
    with pytest.raises(DependencyInstallError, match="PythonSlicer executable not found"):
        dependency_install.run_pip(PipStep(("scipy>=1.10",)), util, None, Path("c.txt"))


def test_slicer_58_pip_install_rejects_a_tuple():
    """Why legacy_pip_arguments returns a list: slicer.util.pip_install checks ``type(...) == list``."""
    util, _ = slicer_58(PipRecorder())
    with pytest.raises(ValueError, match="must be string or list"):
        util.pip_install(("scipy",))


# ---------------------------------------------------------------- the API the module's Logic calls


def test_install_uses_the_pytorch_extension_when_importable(monkeypatch):
    python = Python()
    recorder = python.recorder()
    util, packaging = slicer_512(recorder)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", pytorch_utils_module(util))
    plan = dependency_install.plan_install(python.statuses())
    dependency_install.install_dependencies(plan, util, packaging, dependency_install.find_pytorch_utils())
    assert plan.torch == "torch>=2.1.2"
    assert [argv[2] for argv in recorder.commands] == ["light_the_torch", "pip"]


def test_install_without_the_pytorch_extension_uses_pip(monkeypatch):
    python = Python()
    recorder = python.recorder()
    util, packaging = slicer_58(recorder)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # not installed: import raises ImportError
    dependency_install.install_dependencies(dependency_install.plan_install(python.statuses()), util, packaging,
                                            dependency_install.find_pytorch_utils())
    torch_run, rest_run = recorder.commands
    assert torch_run[4:6] == [PREFER_BINARY, "torch>=2.1.2"] and rest_run[5].startswith("nnunetv2>=2.5.1")


def test_missing_message_says_what_and_where():
    message = dependencies.missing_message(dependencies.missing(Python(torch="2.0.1").statuses()))
    assert "torch 2.0.1: too old (needs >= 2.1.2); nnunetv2: missing (needs >= 2.5.1)" in message
    assert "Advanced section" in message



def test_check_missing_summary_still_work():
    python = Python(torch="2.13.0+cpu", nnunetv2="2.5.1", nibabel="5.3", scipy="1.14")
    statuses = python.statuses(PYTHON_39)
    assert dependencies.missing(statuses) == [] and dependencies.summary(statuses) == "all installed"
    python.installed.pop("scipy")
    assert dependencies.summary(python.statuses()) == "missing: scipy"
    assert dependencies.check(python.version)[0].requirement.name == "torch"  # defaults: this Python


# ---------------------------------------------------------------- devices: the child's side


def fake_torch(gpus=(), mps=False, broken=False):
    def device_count():
        if broken:
            raise RuntimeError("CUDA driver version is insufficient")
        return len(gpus)

    cuda = SimpleNamespace(device_count=device_count, get_device_name=lambda i: gpus[i])
    return SimpleNamespace(cuda=cuda, backends=SimpleNamespace(mps=SimpleNamespace(is_available=lambda: mps)))


def test_list_devices_names_every_gpu_and_mps():
    listed, note = devices.list_devices(fake_torch(gpus=("NVIDIA H200", "NVIDIA A100"), mps=True))
    assert [(d["label"], d["value"]) for d in listed] == [
        ("auto (GPU if available)", "auto"), ("GPU 0: NVIDIA H200", "gpu:0"), ("GPU 1: NVIDIA A100", "gpu:1"),
        ("Apple MPS", "mps"), ("CPU", "cpu")]
    assert note == ""


@pytest.mark.parametrize("torch", [None, fake_torch(broken=True)])
def test_list_devices_without_a_working_torch_offers_auto_and_cpu(torch):
    listed, note = devices.list_devices(torch)
    assert [(d["label"], d["value"]) for d in listed] == AUTO_CPU
    assert note


@pytest.mark.parametrize("error", [ImportError("No module named 'torch'"), OSError("[WinError 126] c10.dll")])
def test_import_torch_never_raises(monkeypatch, error):
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "torch":
            raise error
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    torch, note = devices.import_torch()
    assert torch is None and type(error).__name__ in note


def run_devices_module(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "totalseg_engine.inference.devices"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def test_devices_module_lists_auto_and_cpu_with_cpu_torch():
    done = run_devices_module(child_environment())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"label": label, "value": value} for label, value in AUTO_CPU]


def test_devices_module_survives_a_torch_that_fails_to_load(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise OSError('[WinError 126] fbgemm.dll not found')\n")
    env = child_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    done = run_devices_module(env)
    assert done.returncode == 0
    assert [(d["label"], d["value"]) for d in json.loads(done.stdout)] == AUTO_CPU
    assert "OSError" in done.stderr and "fbgemm.dll" in done.stderr


# ---------------------------------------------------------------- devices: Slicer's side


@pytest.fixture(autouse=True)
def fresh_device_cache():
    slicer_devices.query_devices.cache_clear()
    yield
    slicer_devices.query_devices.cache_clear()


def script(tmp_path: Path, body: str) -> str:
    """An executable standing in for PythonSlicer that ignores its arguments."""
    path = tmp_path / "PythonSlicer"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(os.name == "nt", reason="shell scripts stand in for PythonSlicer")
def test_query_devices_asks_the_child_once_until_refreshed(tmp_path):
    assert slicer_devices.query_devices(sys.executable) == AUTO_CPU  # the real child, with CPU-only torch
    counter = tmp_path / "runs"
    python = script(tmp_path, f"echo run >> {counter}\n"
                              "echo '[{\"label\": \"auto (GPU if available)\", \"value\": \"auto\"}, "
                              "{\"label\": \"GPU 0: NVIDIA H200\", \"value\": \"gpu:0\"}, "
                              "{\"label\": \"CPU\", \"value\": \"cpu\"}]'")
    first = slicer_devices.query_devices(python)
    first.append(("mutated", "x"))
    assert slicer_devices.query_devices(python) == [AUTO_CPU[0], ("GPU 0: NVIDIA H200", "gpu:0"), AUTO_CPU[1]]
    assert counter.read_text().split() == ["run"]
    slicer_devices.query_devices.cache_clear()
    slicer_devices.query_devices(python)
    assert counter.read_text().split() == ["run", "run"]


@pytest.mark.skipif(os.name == "nt", reason="shell scripts stand in for PythonSlicer")
def test_query_devices_reads_the_last_line_after_startup_noise(tmp_path):
    python = script(tmp_path, "echo 'Slicer startup: loading extensions'\n"
                              "echo '[{\"label\": \"CPU\", \"value\": \"cpu\"}]'")
    assert slicer_devices.query_devices(python) == [("CPU", "cpu")]


@pytest.mark.skipif(os.name == "nt", reason="shell scripts stand in for PythonSlicer")
@pytest.mark.parametrize(("body", "timeout_s", "reason"), [
    ("echo 'Traceback: garbage'", 30, "unexpected output"),
    ("echo '[{\"label\": \"CPU\"}]'", 30, "lacks a label or value"),
    ("echo '{\"label\": \"CPU\", \"value\": \"cpu\"}'", 30, "not a non-empty JSON list"),
    ("echo 'Segmentation fault' >&2; exit 139", 30, "exited with status 139: Segmentation fault"),
    ("sleep 10", 0.5, "did not answer within 0.5 s"),
])
def test_query_devices_falls_back_to_auto_and_cpu(tmp_path, caplog, body, timeout_s, reason):
    with caplog.at_level(logging.WARNING, logger=slicer_devices.__name__):
        assert slicer_devices.query_devices(script(tmp_path, body), timeout_s=timeout_s) == AUTO_CPU
    assert reason in caplog.text


def test_query_devices_with_a_bogus_python(caplog):
    with caplog.at_level(logging.WARNING, logger=slicer_devices.__name__):
        assert slicer_devices.query_devices("/nonexistent/PythonSlicer") == AUTO_CPU
    assert "could not be started" in caplog.text
