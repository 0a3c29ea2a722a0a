"""Shared pytest setup: import path, the real test images, and small model folders."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TotalSegmentator"))
sys.path.insert(0, str(ROOT / "Testing"))

DATA_DIR = ROOT.parent / "shared" / "data" / "totalsegmentator-tests"

# The browser tests need the web extra (trame-slicer pins its own slicer-core and VTK) and Chromium: they run in
# their own environment, which sets TOTALSEG_WEB_TESTS=1 (see .ci/run), and there they fail, never skip.
import os  # noqa: E402

collect_ignore = [] if os.environ.get("TOTALSEG_WEB_TESTS") == "1" else ["web"]


@pytest.fixture(autouse=True)
def engine_environment():
    """Put back the engine's environment variables after every test.

    The Slicer logic sets ``TOTALSEG_WEIGHTS_PATH`` in its own process on purpose (its child processes inherit
    it), and monkeypatch's ``delenv`` of a variable that was absent records nothing to undo, so without this
    one test's weights folder would leak into every later test and its child processes.
    """
    import os

    before = {key: value for key, value in os.environ.items() if key.startswith("TOTALSEG_")}
    yield
    for key in [key for key in os.environ if key.startswith("TOTALSEG_")]:
        del os.environ[key]
    os.environ.update(before)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real CT/MR images and official outputs shipped beside the checkout."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"test data folder {DATA_DIR} is missing")
    return DATA_DIR


@pytest.fixture
def mrml():
    """A slicer-core scene with the logics Slicer's application would set up (kept alive with it)."""
    slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML without Qt) is not installed")
    scene = slicer.vtkMRMLScene()
    logics = {
        "colors": slicer.vtkMRMLColorLogic(),
        "segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
        "hierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic(),
        "sequences": slicer.vtkSlicerSequencesLogic(),
    }
    for logic in logics.values():
        logic.SetMRMLScene(scene)
    yield SimpleNamespace(scene=scene, **logics)
    scene.Clear(1)


@pytest.fixture(scope="session")
def server_home(tmp_path_factory) -> Path:
    """A weights home for the remote-server tests: untrained fast ``total`` weights at test size (seconds a job)."""
    from model_factory import SMALL_3MM, write_task_models

    home = tmp_path_factory.mktemp("server-home")
    write_task_models(home / "nnunet" / "results", "total", "fast", SMALL_3MM, seed=5)
    return home


@pytest.fixture(scope="session")
def slow_home(tmp_path_factory) -> Path:
    """The same task with a larger network: a job on example_ct_sm predicts for about ten seconds on 2 cores, long
    enough to cancel it or kill its server mid-run."""
    from model_factory import SMALL, write_task_models

    home = tmp_path_factory.mktemp("slow-home")
    write_task_models(home / "nnunet" / "results", "total", "fast", SMALL, seed=5)
    return home
