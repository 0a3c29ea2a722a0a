"""Stand-ins for Slicer's pip entry points and the PyTorch extension, reproducing their argument handling.

Each class keeps the real function signatures and builds the command line exactly as Slicer does, then records
it instead of running pip; it can be told to fail as the real code fails (``CalledProcessError`` from
``logProcessOutput``). The docstrings name the Slicer file and tag each one reproduces.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional, Union

PYTHON_SLICER = "/opt/Slicer/bin/PythonSlicer"


class PipRecorder:
    """The command lines Slicer would have run, and which of them fail (by return code)."""

    def __init__(self, fail_when: Optional[Callable[[list[str]], bool]] = None, returncode: int = 1,
                 on_run: Optional[Callable[[list[str]], None]] = None) -> None:
        self.commands: list[list[str]] = []
        self.fail_when = fail_when or (lambda argv: False)
        self.returncode = returncode
        self.on_run = on_run or (lambda argv: None)  # what the run would change (installed versions)

    def run(self, command_line: list[str]) -> int:
        self.commands.append(list(command_line))
        if self.fail_when(command_line):
            return self.returncode
        self.on_run(command_line)
        return 0

    @property
    def pip_arguments(self) -> list[list[str]]:
        """What followed ``PythonSlicer -m pip`` in each recorded pip run."""
        return [argv[3:] for argv in self.commands if argv[1:3] == ["-m", "pip"]]


class SlicerUtil58:
    """``slicer.util``'s pip_install, _executePythonModule and logProcessOutput, as in Base/Python/slicer/util.py
    at v5.8.1 (lines 3830-3942; identical at v5.10.0, lines 3922-4034), run from PythonSlicer.

    pip_install takes one string (split with shlex) or a list (``type(...) == list``: a tuple is rejected),
    prepends ``install`` and runs ``PythonSlicer -m pip install ...``; a non-zero exit raises
    CalledProcessError(retcode, proc.args) from logProcessOutput.
    """

    def __init__(self, recorder: PipRecorder, python: str = PYTHON_SLICER) -> None:
        self.recorder = recorder
        self.python = python

    def pip_install(self, requirements):
        if type(requirements) == str:  # noqa: E721 - the real check, which rejects str subclasses
            args = "install", *(shlex.split(requirements))
        elif type(requirements) == list:  # noqa: E721 - the real check, which rejects tuples
            args = "install", *requirements
        else:
            raise ValueError("pip_install requirement input must be string or list")
        self._executePythonModule("pip", args)

    def _executePythonModule(self, module, args):
        commandLine = [self.python, "-m", module, *args]
        self.logProcessOutput(SimpleNamespace(args=commandLine, returncode=self.recorder.run(commandLine),
                                              stdout=None, stderr=None))

    def logProcessOutput(self, proc):
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, output=proc.stdout, stderr=proc.stderr)


class SlicerUtil512(SlicerUtil58):
    """``slicer.util`` at v5.12.3 (Base/Python/slicer/util.py lines 4256-4336): pip_install(requirements,
    **kwargs) delegates to ``slicer.packaging.pip_install``; executePythonModule(module, args, blocking=True,
    logCallback=None, completedCallback=None) runs ``PythonSlicer -m module args``; _executePythonModule is its
    deprecated alias.
    """

    def __init__(self, recorder: PipRecorder, python: str = PYTHON_SLICER) -> None:
        super().__init__(recorder, python)
        self.packaging = SlicerPackaging512(self)

    def pip_install(self, requirements, **kwargs):
        return self.packaging.pip_install(requirements, **kwargs)

    def executePythonModule(self, module, args, blocking=True, logCallback=None, completedCallback=None):
        self._executePythonModule(module, args)


class SlicerPackaging512:
    """``slicer.packaging`` at v5.12.3 (Base/Python/slicer/packaging.py; the same signatures since v5.12.0).

    pip_install (lines 528-698) with its parameters as in the file; without a running application it goes to
    _pip_install_simple (lines 701-717): the ``no_deps_requirements`` run first with ``--no-deps``, then the
    requirements, each built by _build_pip_args (lines 940-965: ``install`` prepended, ``--no-deps``, then
    ``-c constraints``). ``gui=True`` reproduces the progress-dialog path (lines 738-790), whose failure raises
    CalledProcessError(returnCode, "pip install") after an error dialog. pip_ensure (lines 329-502) installs only
    the requirements that pip_check finds unsatisfied, here those not in ``installed``.
    """

    def __init__(self, util: SlicerUtil512, gui: bool = False, installed: Optional[dict[str, str]] = None) -> None:
        self.util = util
        self.gui = gui
        self.installed = installed or {}
        self.calls: list[dict[str, Any]] = []
        self.error_dialogs = 0

    def pip_install(
        self,
        requirements: Union[str, list[str]],
        constraints: Union[str, Path, None] = None,
        no_deps_requirements: Union[str, list[str], None] = None,
        skip_packages: Optional[list[str]] = None,
        blocking: bool = True,
        show_progress: bool = True,
        requester: Optional[str] = None,
        parent: Any = None,
        logCallback: Optional[Callable[[str], None]] = None,
        completedCallback: Optional[Callable[[int], None]] = None,
    ) -> Optional[list[str]]:
        self.calls.append({"requirements": requirements, "constraints": constraints,
                           "no_deps_requirements": no_deps_requirements, "requester": requester})
        if skip_packages is not None:
            if no_deps_requirements is not None:
                raise ValueError("skip_packages and no_deps_requirements are mutually exclusive.")
            if not blocking:
                raise ValueError("skip_packages requires blocking=True.")
            raise NotImplementedError("the stand-in does not walk dependency trees")
        try:
            self._pip_install_simple(requirements, constraints, no_deps_requirements)
        except subprocess.CalledProcessError as err:
            if not self.gui:
                raise
            self.error_dialogs += 1
            raise subprocess.CalledProcessError(err.returncode, "pip install") from None
        return None

    def _pip_install_simple(self, requirements, constraints=None, no_deps_requirements=None) -> None:
        if no_deps_requirements is not None:
            self.util.executePythonModule("pip", self._build_pip_args(no_deps_requirements, constraints, no_deps=True))
        self.util.executePythonModule("pip", self._build_pip_args(requirements, constraints, no_deps=False))

    @staticmethod
    def _build_pip_args(requirements, constraints=None, no_deps=False) -> list[str]:
        if type(requirements) == str:  # noqa: E721 - as in the real file
            args = ["install", *(shlex.split(requirements))]
        elif type(requirements) == list:  # noqa: E721 - as in the real file
            args = ["install", *requirements]
        else:
            raise ValueError("pip_install requirement input must be string or list")
        if no_deps:
            args.append("--no-deps")
        if constraints is not None:
            args.extend(["-c", str(constraints)])
        return args

    def pip_ensure(self, requirements, constraints=None, skip_packages=None, prompt_install=True,
                   prompt_restart=True, requester=None, skip_in_testing=True, show_progress=True):
        from packaging.requirements import Requirement

        if isinstance(requirements, str):
            requirements = [requirements]
        parsed = [Requirement(r) if isinstance(r, str) else r for r in requirements]
        missing = [r for r in parsed
                   if r.name not in self.installed or self.installed[r.name] not in r.specifier]
        if not missing:
            return None
        return self.pip_install([str(r) for r in missing], constraints=constraints, skip_packages=skip_packages)


def slicer_58(recorder: PipRecorder) -> tuple[SlicerUtil58, None]:
    """``(slicer.util, slicer.packaging)`` of Slicer 5.8 or 5.10: no packaging module."""
    return SlicerUtil58(recorder), None


def slicer_512(recorder: PipRecorder, gui: bool = False) -> tuple[SlicerUtil512, SlicerPackaging512]:
    """``(slicer.util, slicer.packaging)`` of Slicer 5.12: util.pip_install delegates to packaging."""
    util = SlicerUtil512(recorder)
    util.packaging.gui = gui
    return util, util.packaging


class PyTorchUtilsLogic:
    """``PyTorchUtilsLogic.installTorch`` of SlicerPyTorch (PyTorchUtils/PyTorchUtils.py at e1c85cc, lines
    194-243): builds ``install torch<req> torchvision<req> [--pytorch-computation-backend=...]``, runs it with
    ``slicer.util._executePythonModule('light_the_torch', args)`` and returns the torch module; None when its
    confirmation is declined.
    """

    util: SlicerUtil58
    torch_module: Any = SimpleNamespace(__version__="2.13.0+cpu")
    user_confirms = True  # the answer to its own confirmation dialog

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                     torchvisionVersionRequirement=None):
        args = self._getPipInstallArguments(forceComputationBackend, torchVersionRequirement,
                                            torchvisionVersionRequirement)
        if askConfirmation and not self.user_confirms:
            return None
        self.util._executePythonModule("light_the_torch", args)
        return self.torch_module

    @staticmethod
    def _getPipInstallArguments(forceComputationBackend=None, torchVersionRequirement=None,
                                torchvisionVersionRequirement=None):
        if torchVersionRequirement is None:
            torchVersionRequirement = ""
        if torchvisionVersionRequirement is None:
            torchvisionVersionRequirement = ""
        args = ["install", "torch" + torchVersionRequirement, "torchvision" + torchvisionVersionRequirement]
        if forceComputationBackend is not None:
            args.append(f"--pytorch-computation-backend={forceComputationBackend}")
        return args


def pytorch_utils_module(util: SlicerUtil58, torch_module: Any = PyTorchUtilsLogic.torch_module) -> SimpleNamespace:
    """A ``PyTorchUtils`` module whose logic runs through ``util`` and returns ``torch_module`` (None: declined)."""
    logic = type("PyTorchUtilsLogic", (PyTorchUtilsLogic,), {"util": util, "torch_module": torch_module})
    return SimpleNamespace(PyTorchUtilsLogic=logic)
