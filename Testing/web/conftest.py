"""What the browser test modules share: one weights home, one data root, one launcher and one Chromium per run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from model_factory import SMALL_3MM, write_task_models
from playwright.sync_api import sync_playwright
from totalseg_engine.weights import paths
from web_support import MAX_UPLOAD_MB, launch_chromium, start_launcher, stop_launcher


@pytest.fixture(scope="session")
def home(tmp_path_factory):
    """Untrained fast ``total`` weights in the release layout; ``TOTALSEG_WEB_WEIGHTS_HOME`` names another home.

    The README's screenshots were taken with the trained fixture (``benchmarks/train_fixture.py``) given that way:
    the untrained weights segment noise, which the tests accept but which shows nothing to a reader.
    """
    if os.environ.get("TOTALSEG_WEB_WEIGHTS_HOME"):
        return Path(os.environ["TOTALSEG_WEB_WEIGHTS_HOME"])
    home = tmp_path_factory.mktemp("home")
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    write_task_models(paths.weights_dir(), "total", "fast", SMALL_3MM, seed=5)
    return home


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("data-root")
    shutil.copy(data_dir / "example_ct.nii.gz", root / "example_ct.nii.gz")
    shutil.copytree(data_dir / "example_ct_dicom", root / "ct_dicom")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "private.nii.gz").write_bytes((data_dir / "example_ct_sm.nii.gz").read_bytes())
    (root / "private.nii.gz").symlink_to(outside / "private.nii.gz")
    return root


@pytest.fixture(scope="session")
def server(home, data_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("web-work")
    process, port = start_launcher(home, work, "--data-root", str(data_root), "--max-upload-mb",
                                   str(MAX_UPLOAD_MB), "--session-timeout", "5")
    yield {"url": f"http://127.0.0.1:{port}/", "work": work, "process": process}
    stop_launcher(process, work)
    assert not any(work.iterdir()), "the launcher left files behind"


@pytest.fixture(scope="module")
def browser():
    """Per module: Playwright's sync API keeps an event loop running in this thread while it is open, which the
    plain-Python tests after the browser modules (asyncio.run) cannot share."""
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()
