"""Which Python packages the engine needs in Slicer's Python, and how to install them safely.

Slicer ships its own numpy, SimpleITK and vtk; replacing them breaks Slicer, so every install is
constrained to the versions already present. torch is installed through the PyTorch extension when it
is there, because it picks the CUDA build that matches the machine.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

# Packages Slicer itself depends on: never upgraded or replaced by our installs.
PROTECTED = ("numpy", "SimpleITK", "vtk")


@dataclass(frozen=True)
class Requirement:
    name: str
    minimum: str
    note: str = ""


REQUIREMENTS = (
    Requirement("torch", "2.1", "installed through the PyTorch extension when available (right CUDA build)"),
    Requirement("nnunetv2", "2.5.1", "the first release that rebuilds ResidualEncoderUNet from old-format plans"),
    Requirement("SimpleITK", "2.2"),
    Requirement("nibabel", "5.0"),
    Requirement("scipy", "1.10"),
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


def installed_version(name: str, lookup: Callable[[str], str] = importlib.metadata.version) -> Optional[str]:
    try:
        return lookup(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check(lookup: Callable[[str], str] = importlib.metadata.version) -> list[Status]:
    """The state of every requirement in this Python."""
    return [Status(req, installed_version(req.name, lookup)) for req in REQUIREMENTS]


def missing(statuses: list[Status]) -> list[Status]:
    return [s for s in statuses if not s.ok]


def constraints_text(lookup: Callable[[str], str] = importlib.metadata.version) -> str:
    """pip constraints pinning Slicer's own packages (and torch once present) to their current versions."""
    pins = []
    for name in (*PROTECTED, "torch"):
        version = installed_version(name, lookup)
        if version:
            pins.append(f"{name}=={version}")
    return "\n".join(pins) + "\n"


def pip_arguments(statuses: list[Status], constraints_file: Path) -> list[str]:
    """Arguments for one ``pip install`` of every missing requirement except torch, constrained."""
    names = [f"{s.requirement.name}>={s.requirement.minimum}" for s in missing(statuses)
             if s.requirement.name != "torch" and s.requirement.name not in PROTECTED]
    if not names:
        return []
    return ["install", *names, "-c", str(constraints_file)]


def summary(statuses: list[Status]) -> str:
    """One line for the panel: all good, or what is missing."""
    bad = missing(statuses)
    if not bad:
        return "all installed"
    return "missing: " + ", ".join(s.requirement.name for s in bad)
