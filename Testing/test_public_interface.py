"""The engine's public interface: what ``totalseg_engine`` exports is all the packages above it may import.

``totalseg_slicer``, ``totalseg_web``, ``totalseg_batch`` and the Slicer module script import engine names only as
``from totalseg_engine import name`` with ``name`` in ``totalseg_engine.__all__``; the engine's folders are its
own to rearrange. ``import totalseg_engine`` stays light: Slicer imports it at start-up, before nibabel or torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import totalseg_engine

MODULE_ROOT = Path(__file__).resolve().parents[1] / "TotalSegmentator"
ABOVE_THE_ENGINE = sorted([*MODULE_ROOT.glob("totalseg_slicer/**/*.py"), *MODULE_ROOT.glob("totalseg_web/**/*.py"),
                           *MODULE_ROOT.glob("totalseg_batch/**/*.py"), MODULE_ROOT / "TotalSegmentator.py"])
ENGINE_MODULES = sorted(MODULE_ROOT.glob("totalseg_engine/**/*.py"))
MAX_MODULE_LINES = 500


def non_public_engine_imports(source: str, public: set[str]) -> list[str]:
    """Every import in ``source`` that reaches into the engine past its public names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("totalseg_engine.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("totalseg_engine"):
            if node.module != "totalseg_engine":
                found.append(f"from {node.module} import ...")
            else:
                found += [f"totalseg_engine.{alias.name}" for alias in node.names if alias.name not in public]
    return found


@pytest.mark.parametrize("path", ABOVE_THE_ENGINE, ids=lambda p: str(p.relative_to(MODULE_ROOT)))
def test_packages_above_the_engine_import_only_its_public_names(path: Path):
    assert non_public_engine_imports(path.read_text(encoding="utf-8"), set(totalseg_engine.__all__)) == []


def test_the_check_finds_each_way_of_reaching_in():
    public = {"get_task"}
    source = ("from totalseg_engine import get_task, imageio\nfrom totalseg_engine.core import pipeline\n"
              "import totalseg_engine.runner\ndef later():\n    from totalseg_engine.tasks import all_tasks\n")
    assert non_public_engine_imports(source, public) == [
        "totalseg_engine.imageio", "from totalseg_engine.core import ...", "totalseg_engine.runner",
        "from totalseg_engine.tasks import ..."]


def test_every_public_name_resolves():
    for name in totalseg_engine.__all__:
        assert getattr(totalseg_engine, name) is not None, name
    with pytest.raises(AttributeError, match="no public name 'imageio_internals'"):
        _ = totalseg_engine.imageio_internals


def test_importing_the_engine_imports_no_third_party_package():
    script = ("import sys, totalseg_engine\n"
              "from totalseg_engine import SegmentationRequest, State, get_task, engine_command, segment_info\n"
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'nibabel', 'scipy', 'torch', "
              "'SimpleITK', 'nnunetv2'))\n"
              "print(heavy)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=MODULE_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("path", ENGINE_MODULES, ids=lambda p: str(p.relative_to(MODULE_ROOT)))
def test_engine_modules_stay_small(path: Path):
    """A module over 500 lines usually holds two concepts: split it by job when it grows past that."""
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_MODULE_LINES
