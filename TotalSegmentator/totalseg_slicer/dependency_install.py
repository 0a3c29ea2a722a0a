"""Installing the engine's packages into Slicer's Python on Slicer 5.8, 5.10 and 5.12+, failing loudly.

Slicer's pip entry points add ``install`` to what they are given: ``slicer.util.pip_install(str | list)``
on 5.8/5.10 (Base/Python/slicer/util.py) and ``slicer.packaging.pip_install(requirements, constraints=...)``
on 5.12+ (Base/Python/slicer/packaging.py, ``_build_pip_args``; ``slicer.util.pip_install`` delegates to it).
So nothing here passes ``install``. On 5.12+ the constraints file goes through ``constraints=``; on 5.8/5.10,
which have no such argument, as ``-c FILE``. A failed pip raises ``subprocess.CalledProcessError`` in both;
it is turned into :class:`DependencyInstallError`, which says what failed, the command and what to do.

The functions take the ``slicer.util`` module, the optional ``slicer.packaging`` module and the optional
``PyTorchUtils`` module as arguments (duck-typed), so the tests run them against stand-ins that reproduce
Slicer's own argument handling, and nothing here imports slicer or Qt.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from . import dependencies
from .dependencies import PROTECTED, Lookup, Pin, PythonVersion, Status

REQUESTER = "TotalSegmentator"  # the name Slicer 5.12's progress and error dialogs show
# Slicer has no compiler: take an older wheel over a newer sdist. On Python 3.9 this is what makes the install
# work at all (pip --dry-run, Python 3.9.18): python-gdcm 3.2.6, pulled in by dicom2nifti, has no cp39 wheel
# and its sdist does not build, while 3.2.2 has one. On Python 3.12 it changes nothing.
PREFER_BINARY = ("--prefer-binary",)
# The repair of nnunetv2 alone, passed as options on every Slicer version. Slicer 5.12's
# ``no_deps_requirements=`` cannot say it: it adds no --force-reinstall, and it always runs a second pip with
# ``requirements``, which with none left is ``pip install -c FILE``, an error ("You must give at least one
# requirement to install").
FORCE_REINSTALL = ("--force-reinstall", "--no-deps")
PIP_HELP = ("pip's output is in the Python console and the application log. Check the network connection "
            "(and proxy settings), then press Install beside 'Python packages' in the module's Advanced section "
            "again; if a package was in use, restart Slicer first.")
TORCH_HELP = ("Open the PyTorch Utils module, uninstall PyTorch, restart Slicer and install it again there "
              "(it also shows which computation backend fits this computer).")
log = logging.getLogger(__name__)


class DependencyInstallError(RuntimeError):
    """An install step failed; the message names the packages, the command and what to do next."""


@dataclass(frozen=True)
class PipStep:
    """One pip run: the requirements it installs and the options before them."""

    requirements: tuple[str, ...]
    options: tuple[str, ...] = PREFER_BINARY

    def arguments(self) -> list[str]:
        """The arguments after ``pip install`` (Slicer adds ``install``; the constraints are added per API)."""
        return [*self.options, *self.requirements]


@dataclass(frozen=True)
class InstallPlan:
    """What an install does: torch first when missing, then the pip steps, each constrained to what is there."""

    torch: Optional[str] = None  # "torch>=2.1.2" when torch is missing or too old
    steps: tuple[PipStep, ...] = ()
    pins: tuple[Pin, ...] = ()  # the version rules applied (logged and shown for confirmation)
    blocked: tuple[Status, ...] = ()  # Slicer's own packages missing or too old: a newer Slicer is needed

    @property
    def empty(self) -> bool:
        return self.torch is None and not self.steps and not self.blocked

    def describe(self) -> str:
        """The packages, one per line, for the confirmation dialog and the log."""
        lines = [f"{self.torch} (through the PyTorch extension when it is installed)"] if self.torch else []
        for step in self.steps:
            lines += [" ".join((*step.options, req)) for req in step.requirements]
        lines += [f"{s.describe()}: Slicer's own package, needs a newer Slicer" for s in self.blocked]
        return "\n".join(lines)


def plan_install(statuses: list[Status], python_version: Optional[PythonVersion] = None,
                 platform: Optional[str] = None, reinstall: bool = False) -> InstallPlan:
    """What to install for ``statuses`` (from ``dependencies.check()``) on this Python and platform.

    torch is planned apart (it is installed first, so that the rest is constrained to it). With nnunetv2 go
    the pins on its dependencies. ``reinstall`` with nothing missing repairs nnunetv2 alone:
    ``--force-reinstall --no-deps``, leaving its dependencies as they are.
    """
    pins = dependencies.pins_for(python_version or dependencies.current_python(), platform or sys.platform)
    todo = dependencies.missing(statuses)
    torch = next((s.requirement for s in todo if s.requirement.name == "torch"), None)
    # name -> minimum (None: only the pins), in install order
    ours: dict[str, Optional[str]] = {s.requirement.name: s.requirement.minimum for s in todo
                                      if s.requirement.name not in (*PROTECTED, "torch")}
    options = PREFER_BINARY
    if "nnunetv2" in ours:  # the pins on its dependencies go with it
        ours.update((pin.name, None) for pin in pins if pin.name not in ours)
    elif reinstall and not ours:
        ours = {s.requirement.name: s.requirement.minimum for s in statuses if s.requirement.name == "nnunetv2"}
        options = (*FORCE_REINSTALL, *PREFER_BINARY)
    requirements = tuple(dependencies.requirement_text(name, minimum, pins) for name, minimum in ours.items())
    return InstallPlan(
        torch=dependencies.requirement_text("torch", torch.minimum, pins) if torch else None,
        steps=(PipStep(requirements, options),) if requirements else (),
        pins=tuple(pin for pin in pins if pin.name in ours),
        blocked=tuple(s for s in todo if s.requirement.name in PROTECTED),
    )


def legacy_pip_arguments(step: PipStep, constraints_path: Path) -> list[str]:
    """What Slicer 5.8/5.10's ``slicer.util.pip_install`` takes (a list: it rejects tuples) for ``step``."""
    return [*step.arguments(), "-c", str(constraints_path)]


def pip_command(step: PipStep, constraints_path: Path) -> str:
    """The command Slicer runs for ``step``, for error messages (the same on every Slicer version)."""
    return "PythonSlicer -m pip " + shlex.join(["install", *legacy_pip_arguments(step, constraints_path)])


def run_pip(step: PipStep, util_module: Any, packaging_module: Optional[Any], constraints_path: Path) -> None:
    """One pip run through Slicer's API: ``slicer.packaging`` (5.12+) when given, else ``slicer.util`` (5.8/5.10).

    Raises DependencyInstallError when pip fails (CalledProcessError), PythonSlicer is not found (RuntimeError)
    or cannot be started (OSError).
    """
    log.info("Installing with %s", pip_command(step, constraints_path))
    try:
        if packaging_module is not None:
            packaging_module.pip_install(step.arguments(), constraints=str(constraints_path), requester=REQUESTER)
        else:
            util_module.pip_install(legacy_pip_arguments(step, constraints_path))
    except (subprocess.CalledProcessError, RuntimeError, OSError) as err:
        status = f" (pip exit status {err.returncode})" if isinstance(err, subprocess.CalledProcessError) else ""
        raise DependencyInstallError(
            f"Installing {', '.join(step.requirements)} into Slicer's Python failed{status}: {err}\n"
            f"Command: {pip_command(step, constraints_path)}\n{PIP_HELP}") from err


def run_install(plan: InstallPlan, util_module: Any, packaging_module: Optional[Any], constraints_path: Path) -> None:
    """Every pip step of ``plan`` (torch excepted: see :func:`install_torch`), constrained by ``constraints_path``."""
    for step in plan.steps:
        run_pip(step, util_module, packaging_module, constraints_path)


def install_torch(requirement: str, util_module: Any, packaging_module: Optional[Any], constraints_path: Path,
                  pytorch_utils: Optional[ModuleType] = None) -> None:
    """torch through the PyTorch extension when given (it picks the CUDA build for this computer), else pip.

    ``PyTorchUtilsLogic().installTorch(askConfirmation=False, forceComputationBackend=None,
    torchVersionRequirement=None, torchvisionVersionRequirement=None)`` (SlicerPyTorch PyTorchUtils.py) runs
    ``light_the_torch install torch<requirement> torchvision`` and returns the torch module, or None when its
    own confirmation was declined; a failed run raises CalledProcessError, a torch that does not load
    ImportError or OSError. It takes no constraints, but torch depends on none of Slicer's packages and
    torchvision only on an unversioned numpy, which pip leaves as it is.
    """
    if pytorch_utils is None:
        run_pip(PipStep((requirement,)), util_module, packaging_module, constraints_path)
        return
    specifier = requirement[len("torch"):]
    command = f"PythonSlicer -m light_the_torch install torch{specifier} torchvision"
    try:
        torch = pytorch_utils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                              torchVersionRequirement=specifier)
    except (subprocess.SubprocessError, RuntimeError, ImportError, OSError) as err:
        raise DependencyInstallError(f"Installing PyTorch ({requirement}) through the PyTorch extension failed: "
                                     f"{err}\nCommand: {command}\n{TORCH_HELP}") from err
    if torch is None:
        raise DependencyInstallError(f"PyTorch ({requirement}) was not installed: the PyTorch extension's "
                                     f"installation was cancelled.\n{TORCH_HELP}")


def find_pytorch_utils() -> Optional[ModuleType]:
    """The PyTorch extension's ``PyTorchUtils`` module when it is installed in this Slicer, else None."""
    try:
        return importlib.import_module("PyTorchUtils")
    except ImportError:
        return None


def write_constraints(folder: Path, lookup: Lookup = importlib.metadata.version) -> Path:
    """A constraints file pinning Slicer's packages (and torch once present) as they are now."""
    path = Path(folder) / "constraints.txt"
    path.write_text(dependencies.constraints_text(lookup), encoding="utf-8")
    return path


def install_dependencies(plan: InstallPlan, util_module: Any, packaging_module: Optional[Any] = None,
                         pytorch_utils: Optional[ModuleType] = None,
                         lookup: Lookup = importlib.metadata.version) -> None:
    """Carry out ``plan``: torch first, then the rest constrained to the torch just installed.

    Raises DependencyInstallError before anything runs when Slicer's own packages are too old, when a step
    fails, and afterwards if one of Slicer's packages changed version after all.
    """
    if plan.blocked:
        raise DependencyInstallError("Slicer's own packages do not fit: " + ", ".join(
            s.describe() for s in plan.blocked) + ". They are not replaced here; use a newer Slicer.")
    before = _protected_versions(lookup)
    with tempfile.TemporaryDirectory(prefix="totalseg-pip-") as folder:
        if plan.torch:
            install_torch(plan.torch, util_module, packaging_module, write_constraints(Path(folder), lookup),
                          pytorch_utils)
        if plan.steps:
            run_install(plan, util_module, packaging_module, write_constraints(Path(folder), lookup))
    after = _protected_versions(lookup)
    changed = [f"{name} {old} -> {after[name]}" for name, old in before.items() if old and after[name] != old]
    if changed:
        raise DependencyInstallError("The installation changed Slicer's own packages: " + ", ".join(changed)
                                     + ". Restart Slicer; if it misbehaves, reinstall Slicer.")


def _protected_versions(lookup: Lookup) -> dict[str, Optional[str]]:
    importlib.invalidate_caches()  # see what the pip child just wrote
    return {name: dependencies.installed_version(name, lookup) for name in PROTECTED}
