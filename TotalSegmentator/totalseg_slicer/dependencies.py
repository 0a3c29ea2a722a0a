"""Which Python packages the engine needs in Slicer's Python, and which versions work where.

Slicer ships its own numpy, SimpleITK, requests and vtk; replacing them breaks Slicer (or needs a restart), so
they are never install targets and every install is constrained to the versions already present (torch too,
once it is there). Some versions of nnU-Net's dependencies fail on Slicer 5.8's Python 3.9 or on macOS; those
rules are :data:`PINS`, data with the place each was learned. How the install runs is in
``dependency_install``; this module only says what is needed and what is there.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from typing import Callable, Optional

# Packages Slicer itself provides: never upgraded or replaced by our installs. requests: SlicerNNUNet skips it
# too, as a new version would only take effect after a restart (SlicerNNUNet InstallLogic.py:148-161).
PROTECTED = ("numpy", "SimpleITK", "requests", "vtk")
# SlicerNNUNet's test for "Slicer 5.8 or earlier" (Python 3.9): ``sys.version_info < (3, 12)``
# (InstallLogic.py:91 and 162). Slicer 5.8 ships Python 3.9.10, 5.10 and 5.12 ship 3.12.10.
SLICER_58_PYTHON = (3, 12)

PythonVersion = tuple[int, ...]
Lookup = Callable[[str], str]


@dataclass(frozen=True)
class Requirement:
    name: str
    minimum: str
    note: str = ""


REQUIREMENTS = (
    Requirement("torch", "2.1.2", "installed first, through the PyTorch extension when available (right CUDA "
                                  "build); nnunetv2 2.5.1 requires torch>=2.1.2"),
    Requirement("nnunetv2", "2.5.1", "the first release that rebuilds ResidualEncoderUNet from old-format plans"),
    Requirement("SimpleITK", "2.2"),
    Requirement("nibabel", "5.0"),
    Requirement("scipy", "1.10"),
)


@dataclass(frozen=True)
class Pin:
    """A version rule for one package on some Pythons or one platform, and where it was learned."""

    name: str
    specifier: str
    source: str
    python_below: Optional[PythonVersion] = None
    python_from: Optional[PythonVersion] = None
    platform: Optional[str] = None  # a ``sys.platform`` value

    def applies(self, python_version: PythonVersion, platform: str) -> bool:
        version = tuple(python_version[:2])
        return ((self.python_below is None or version < self.python_below)
                and (self.python_from is None or version >= self.python_from)
                and (self.platform is None or platform == self.platform))

    @property
    def minimum(self) -> Optional[str]:
        """The version a ``>=`` pin raises the minimum to; None for other pins."""
        return self.specifier[2:] if self.specifier.startswith(">=") else None


PINS = (
    # nnunetv2 2.6.0 and later declare Requires-Python >=3.10 (their PyPI metadata); 2.5.1 and 2.5.2 declare
    # >=3.9, so Slicer 5.8 gets 2.5.x. Said explicitly so that pip does not walk through newer sdists.
    Pin("nnunetv2", "<2.6", "PyPI metadata of nnunetv2 2.6.0: Requires-Python >=3.10", python_below=(3, 10)),
    # macOS under Rosetta 2 needs nnunetv2 2.7.0 (MIC-DKFZ/nnUNet#2742). 2.7.0 needs Python 3.10, so on
    # Slicer 5.8 for macOS this pin cannot apply and 2.5.x stays.
    Pin("nnunetv2", ">=2.7.0", "SlicerNNUNet InstallLogic.py:68-70; SlicerTotalSegmentator TotalSegmentator.py:855-857",
        python_from=(3, 10), platform="darwin"),
    # acvl-utils 0.2.1 imports blosc2 without requiring it and 0.2.2+ require blosc2>=3.0.0b4, which has no
    # Python 3.9 build (MIC-DKFZ/acvl_utils#2, #4); 0.2 is the last that works there. nnunetv2 2.5.x accepts it
    # (acvl-utils>=0.2,<0.3). Installed after torch, as acvl-utils requires torch.
    Pin("acvl-utils", "==0.2", "SlicerNNUNet InstallLogic.py:91-94, 162-164, 200-219", python_below=SLICER_58_PYTHON),
    # SlicerNNUNet replaces dynamic-network-architectures 0.4 by 0.2.0 on Python < 3.12. nnunetv2 2.5.x requires
    # >=0.3.1,<0.4 (its metadata), so ==0.2.0 would conflict with it; "<0.4" keeps the intent. 0.3.1 defines
    # ResidualEncoderUNet in architectures/unet.py, where runtimes.network_class_path looks.
    Pin("dynamic-network-architectures", "<0.4", "SlicerNNUNet InstallLogic.py:91-94, 182-190",
        python_below=SLICER_58_PYTHON),
    # nnunetv2 2.5.x requires dicom2nifti; 2.6 needs pydicom 3 (Python >= 3.10) though its metadata says
    # pydicom>=2.2.0, so it breaks on Python 3.9.
    Pin("dicom2nifti", "<=2.5.1", "SlicerTotalSegmentator TotalSegmentator.py:818-824", python_below=(3, 10)),
    # imagecodecs after 2026.3.6 has macOS wheels for ARM only; Intel Macs would try to build it and fail.
    Pin("imagecodecs", "<=2026.3.6", "SlicerNNUNet InstallLogic.py:166-168, 221-235", platform="darwin"),
)


@dataclass(frozen=True)
class Status:
    requirement: Requirement
    installed: Optional[str]

    @property
    def ok(self) -> bool:
        return self.installed is not None and version_tuple(self.installed) >= version_tuple(self.requirement.minimum)

    def describe(self) -> str:
        req = self.requirement
        if self.installed is None:
            return f"{req.name}: missing (needs >= {req.minimum})"
        state = "ok" if self.ok else f"too old (needs >= {req.minimum})"
        return f"{req.name} {self.installed}: {state}"


def version_tuple(text: str) -> tuple[int, ...]:
    """Numeric prefix of a version string ("2.13.0+cpu" -> (2, 13, 0)) for comparisons."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def installed_version(name: str, lookup: Lookup = importlib.metadata.version) -> Optional[str]:
    try:
        return lookup(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def current_python() -> PythonVersion:
    return tuple(sys.version_info[:2])


def pins_for(python_version: PythonVersion, platform: str) -> tuple[Pin, ...]:
    """The pins that hold for this Python and platform."""
    return tuple(pin for pin in PINS if pin.applies(python_version, platform))


def with_pins(requirement: Requirement, pins: tuple[Pin, ...]) -> Requirement:
    """``requirement`` with its minimum raised by the ``>=`` pins on it (nnunetv2 on macOS: 2.7.0)."""
    minimums = [requirement.minimum] + [p.minimum for p in pins if p.name == requirement.name and p.minimum]
    return dataclasses.replace(requirement, minimum=max(minimums, key=version_tuple))


def requirement_text(name: str, minimum: Optional[str], pins: tuple[Pin, ...]) -> str:
    """One pip requirement: the minimum and every other pin on the package (``nnunetv2>=2.5.1,<2.6``)."""
    specifiers = [f">={minimum}"] if minimum else []
    specifiers += [p.specifier for p in pins if p.name == name and not p.minimum]
    return name + ",".join(dict.fromkeys(specifiers))


def check(lookup: Lookup = importlib.metadata.version, python_version: Optional[PythonVersion] = None,
          platform: Optional[str] = None) -> list[Status]:
    """The state of every requirement in this Python (minimums raised by the pins for ``python_version``)."""
    importlib.invalidate_caches()  # a pip child may just have added packages
    pins = pins_for(python_version or current_python(), platform or sys.platform)
    return [Status(with_pins(req, pins), installed_version(req.name, lookup)) for req in REQUIREMENTS]


def missing(statuses: list[Status]) -> list[Status]:
    return [s for s in statuses if not s.ok]


def constraints_text(lookup: Lookup = importlib.metadata.version) -> str:
    """pip constraints pinning Slicer's own packages (and torch once present) to their current versions."""
    importlib.invalidate_caches()
    pins = []
    for name in (*PROTECTED, "torch"):
        version = installed_version(name, lookup)
        if version:
            pins.append(f"{name}=={version}")
    return "\n".join(pins) + "\n"


def missing_message(bad: list[Status]) -> str:
    """Why the engine cannot run yet and how to fix it, for errors and skipped tests."""
    return ("TotalSegmentator's Python packages are missing or too old: " + "; ".join(s.describe() for s in bad)
            + ". Install them with the Install button beside 'Python packages' in the module's Advanced section.")


def summary(statuses: list[Status]) -> str:
    """One line for the panel: all good, or what is missing."""
    bad = missing(statuses)
    if not bad:
        return "all installed"
    return "missing: " + ", ".join(s.requirement.name for s in bad)
