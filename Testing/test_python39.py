"""Slicer 5.8 runs Python 3.9: every module of the extension must parse, and the stdlib-only ones import, there."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest

MODULE_ROOT = Path(__file__).resolve().parents[1] / "TotalSegmentator"
SOURCES = sorted(p for p in MODULE_ROOT.rglob("*.py") if "egg-info" not in p.parts)
# Modules the panel imports before any package is installed: they may use nothing outside the standard library.
STDLIB_ONLY = ("totalseg_engine", "totalseg_engine.tasks", "totalseg_engine.terminology", "totalseg_engine.request",
               "totalseg_engine.runner", "totalseg_engine.lifeline", "totalseg_engine.weights",
               "totalseg_engine.inference.devices",
               "totalseg_engine.cli.options", "totalseg_slicer.panel_state", "totalseg_slicer.dependencies",
               "totalseg_slicer.dependency_install", "totalseg_slicer.devices", "totalseg_slicer.legacy_api",
               "totalseg_slicer.job_request")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(MODULE_ROOT)))
def test_parses_with_python_39_grammar(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def python39() -> Optional[str]:
    """A working Python 3.9 interpreter (pyenv's shim on PATH may not be one), or None."""
    candidates = [shutil.which("python3.9"), *map(str, Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                               text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 9)":
            return candidate
    return None


@pytest.mark.skipif(python39() is None, reason="no Python 3.9 interpreter on this machine")
def test_real_python_39_compiles_everything_and_imports_the_stdlib_only_modules():
    script = (
        "import importlib, sys\n"
        "sys.dont_write_bytecode = True\n"
        f"for path in {[str(p) for p in SOURCES]!r}:\n"
        "    compile(open(path, encoding='utf-8').read(), path, 'exec')\n"
        f"for name in {list(STDLIB_ONLY)!r}:\n"
        "    importlib.import_module(name)\n"
        "from totalseg_engine.tasks import all_tasks\n"
        "from totalseg_slicer import panel_state\n"
        "assert len(all_tasks()) == 53 and panel_state.task_after_filter_change('MR', 'total') == 'total_mr'\n"
        "print(sys.version_info[:2])\n")
    done = subprocess.run([python39(), "-S", "-c", script], cwd=MODULE_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(3, 9)"
