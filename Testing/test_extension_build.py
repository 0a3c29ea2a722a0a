"""The extension as Slicer builds and installs it: real CMake on the real CMakeLists.txt, a stand-in for Slicer.

Slicer's build copies each SCRIPTS entry (with ".py" appended when its extension does not match "py") and each
RESOURCES entry, with the relative path it is given, into ``<build>/lib/Slicer-X.Y/qt-scripted-modules``, and
installs that folder as it is. ``slicer_cmake_stand_in/`` reproduces those rules (see its files for the Slicer and
CTK sources and lines), so a data file listed as a script fails this build as it fails Slicer's, and a data file
that is not shipped, or lands where ``totalseg_engine`` does not look, fails the installed-engine tests.

The installed module folder is run in a Python that sees only that folder and the environment's site-packages:
``-S`` keeps ``site`` from processing the ``.pth`` of this repository's editable install, which would otherwise
put ``TotalSegmentator/`` of the source tree on the path and hide a missing file.

Hook for further checks of the installed folder: the module-scoped fixture :func:`installed_module_dir` (or,
from another test module, :func:`build_extension` then :attr:`ExtensionBuild.module_dir`), and
:func:`isolated_python` to run code against it (``extra_paths`` for stand-ins such as a Qt one).
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_SOURCE = ROOT / "TotalSegmentator"
STAND_IN = ROOT / "Testing" / "slicer_cmake_stand_in"
SCRIPTED_MODULES_DIR = "lib/Slicer-5.10/qt-scripted-modules"
"""Slicer_QTSCRIPTEDMODULES_LIB_DIR of the stand-in (Slicer 5.10), in the build tree and below the install prefix."""
PACKAGES = ("totalseg_engine", "totalseg_slicer", "totalseg_remote")  # totalseg_remote: the panel's remote server
FOREIGN_REPOSITORIES = ("lassoan/SlicerTotalSegmentator", "wasserth/TotalSegmentator", "Slicer/Slicer")
"""Other projects' repositories this extension's metadata once pointed into, or could be confused with."""
APACHE_2_TERMS_SHA256 = "b316b715c7f48af32f6265b3de80b9656fdbddc57f5854215c8a4c6e0ad42c05"
"""sha256 of the Apache License 2.0's terms (from "TERMS AND CONDITIONS" to "END OF TERMS AND CONDITIONS"),
whitespace collapsed: the same for apache.org's LICENSE-2.0.txt and the reflowed copies many projects ship."""


@dataclass(frozen=True)
class ExtensionBuild:
    """One configure + build (+ install when the build succeeded) of the extension against the Slicer stand-in."""

    build_dir: Path
    install_prefix: Path
    returncode: int
    log: str
    seconds: float

    @property
    def module_dir(self) -> Path:
        """The installed qt-scripted-modules folder: what Slicer puts on its module path and sys.path."""
        return self.install_prefix / SCRIPTED_MODULES_DIR


def _cmake() -> str:
    """The cmake executable (the PyPI one of the test extra); skip only when there is none."""
    found = shutil.which("cmake", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        pytest.skip("cmake is not installed (pip install -e .[test] brings it)")
    return found


def _run(argv: Sequence[str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run a tool, keeping its output for the failure message."""
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=300)


def configure(source_dir: Path, build_dir: Path, *options: str) -> subprocess.CompletedProcess:
    """Configure ``source_dir`` against the Slicer stand-in, as an extension build configures against Slicer."""
    return _run([_cmake(), "-S", str(source_dir), "-B", str(build_dir), f"-DSlicer_DIR={STAND_IN}",
                 f"-DPYTHON_EXECUTABLE={sys.executable}", *options])


def build_extension(work_dir: Path, source_dir: Path = ROOT) -> ExtensionBuild:
    """Configure, build and (if that worked) install the extension below ``work_dir``; never raises on failure."""
    build_dir, prefix = work_dir / "build", work_dir / "install"
    start = time.monotonic()
    log = []
    returncode = 0
    steps = [lambda: configure(source_dir, build_dir),
             lambda: _run([_cmake(), "--build", str(build_dir), "--parallel", str(min(8, os.cpu_count() or 1))]),
             lambda: _run([_cmake(), "--install", str(build_dir), "--prefix", str(prefix)])]
    for step in steps:
        done = step()
        log.append(f"$ {' '.join(done.args)}\n{done.stdout}{done.stderr}")
        returncode = done.returncode
        if returncode != 0:
            break
    return ExtensionBuild(build_dir, prefix, returncode, "\n".join(log), time.monotonic() - start)


def isolated_python(module_dir: Path, argv: Sequence[str], cwd: Path, env: Optional[dict[str, str]] = None,
                    extra_paths: Sequence[Path] = (), timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -S <argv>`` with only ``module_dir``, ``extra_paths`` and site-packages on sys.path.

    ``-S``: no ``site``, so no ``.pth`` file runs and the editable install cannot map the packages to the
    source tree; ``cwd`` should be a folder outside the repository (sys.path[0] is the cwd for ``-m``/``-c``).
    """
    site_packages = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    path = [str(module_dir), *map(str, extra_paths)]
    # No inherited Python paths, and no weights or home folder of the caller's: ``env`` says which to use.
    child_env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "TOTALSEG_"))}
    child_env.update(env or {})
    child_env.update(PYTHONPATH=os.pathsep.join(path), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
    # site-packages go after the standard library, as ``site`` puts them: on PYTHONPATH they would come first,
    # and a PyPI backport installed there (argparse 1.4) would shadow the standard module.
    return subprocess.run([sys.executable, "-S", "-c", _BOOTSTRAP, json.dumps(site_packages), *argv], cwd=cwd,
                          env=child_env, capture_output=True, text=True, timeout=timeout)


_BOOTSTRAP = """
import json, runpy, sys
sys.path.extend(json.loads(sys.argv[1]))
option, target, *rest = sys.argv[2:]
sys.argv = [target if option == "-m" else "-c", *rest]
if option == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
"""


@pytest.fixture(scope="module")
def extension_build(tmp_path_factory: pytest.TempPathFactory) -> ExtensionBuild:
    """The extension built once for this module (build and install folders under pytest's tmp path)."""
    return build_extension(tmp_path_factory.mktemp("extension"))


@pytest.fixture(scope="module")
def installed_module_dir(extension_build: ExtensionBuild) -> Path:
    """The module folder as ``cmake --install`` laid it out from the build tree (not from the sources)."""
    if extension_build.returncode != 0:
        pytest.fail(f"the extension did not build:\n{extension_build.log[-4000:]}")
    return extension_build.module_dir


def _source_files(package: str) -> set[str]:
    """The package's .py files, relative to TotalSegmentator/: what the build must install."""
    return {p.relative_to(MODULE_SOURCE).as_posix() for p in (MODULE_SOURCE / package).rglob("*.py")
            if "__pycache__" not in p.parts}


def _pyproject() -> dict:
    """pyproject.toml, parsed."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _package_data_patterns() -> list[str]:
    """pyproject's package-data of totalseg_engine: what a wheel ships, so what the extension must ship too."""
    return _pyproject()["tool"]["setuptools"]["package-data"]["totalseg_engine"]


# ------------------------------------------------------------------------------------------------ the build


def test_extension_builds_against_slicer(extension_build: ExtensionBuild) -> None:
    assert extension_build.returncode == 0, f"the extension did not build:\n{extension_build.log[-4000:]}"
    assert extension_build.seconds < 60
    # The module's own unittest and Slicer's generic one are registered (the stand-in lists them as disabled).
    tests = _run([str(Path(_cmake()).with_name("ctest")), "-N"], cwd=extension_build.build_dir).stdout
    assert "py_TotalSegmentator" in tests and "py_nomainwindow_qSlicerTotalSegmentatorModuleGenericTest" in tests


def test_installed_module_has_every_script_and_no_renamed_data(installed_module_dir: Path) -> None:
    expected = {"TotalSegmentator.py"}.union(*(_source_files(p) for p in PACKAGES))
    installed = {p.relative_to(installed_module_dir).as_posix() for p in installed_module_dir.rglob("*.py")}
    assert installed == expected
    for name in expected:
        assert filecmp.cmp(MODULE_SOURCE / name, installed_module_dir / name, shallow=False), name


def test_installed_module_has_the_engine_data_and_the_panel_resources(installed_module_dir: Path) -> None:
    data = MODULE_SOURCE / "totalseg_engine" / "data"
    shipped = sorted({p.name for pattern in _package_data_patterns() for p in data.glob(Path(pattern).name)})
    assert {"tasks.json", "terminology.csv"} <= set(shipped)
    installed_data = installed_module_dir / "totalseg_engine" / "data"
    assert sorted(p.name for p in installed_data.iterdir()) == shipped
    # TotalSegmentator.py reads Resources/ beside itself: the icon, the .ui file and every *.term.json.
    resources = MODULE_SOURCE / "Resources"
    needed = ["Icons/TotalSegmentator.png", "UI/TotalSegmentator.ui", *(p.name for p in resources.glob("*.term.json"))]
    for name in needed:
        assert filecmp.cmp(resources / name, installed_module_dir / "Resources" / name, shallow=False), name
    for name in shipped:
        assert filecmp.cmp(data / name, installed_data / name, shallow=False), name


IMPORT_CHECK = """
import importlib, json, pkgutil, sys
from importlib import resources
from pathlib import Path

root = Path(sys.argv[1]).resolve()
modules = {}
for package in ("totalseg_engine", "totalseg_slicer", "totalseg_remote"):
    top = importlib.import_module(package)
    modules[package] = top.__file__
    for info in pkgutil.walk_packages(top.__path__, package + "."):
        if not info.name.endswith(".__main__"):  # __main__ runs the command line
            modules[info.name] = importlib.import_module(info.name).__file__
from totalseg_engine import terminology
from totalseg_engine import tasks
print(json.dumps({
    "outside": [name for name, file in modules.items() if root not in Path(file).resolve().parents],
    "modules": sorted(modules),
    "tasks_json": str(resources.files("totalseg_engine").joinpath("data", "tasks.json")),
    "tasks": sorted(tasks.all_tasks()),
    "terminology": sorted(terminology.entries()),
    "sys_path": sys.path,
}))
"""


def test_installed_packages_import_and_load_their_data(installed_module_dir: Path, tmp_path: Path) -> None:
    from totalseg_engine import tasks, terminology

    done = isolated_python(installed_module_dir, ["-c", IMPORT_CHECK, str(installed_module_dir)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert not any(str(MODULE_SOURCE) in entry for entry in found["sys_path"])
    assert found["outside"] == []
    expected = {name.replace("/", ".")[:-3].removesuffix(".__init__") for p in PACKAGES for name in _source_files(p)}
    assert set(found["modules"]) == expected - {"totalseg_engine.__main__"}
    assert Path(found["tasks_json"]).resolve() == (installed_module_dir / "totalseg_engine/data/tasks.json").resolve()
    assert found["tasks"] == sorted(tasks.all_tasks()) and len(found["tasks"]) > 50
    assert found["terminology"] == sorted(terminology.entries())


def _small_ct(path: Path) -> None:
    """A 120 x 120 x 90 mm CT-like phantom at 3 mm: air, a soft-tissue body, a bony spine (deterministic)."""
    import nibabel as nib
    import numpy as np

    x, y, z = np.meshgrid(np.arange(40), np.arange(40), np.arange(30), indexing="ij")
    hu = np.full(x.shape, -1000.0)
    hu[((x - 20) / 17) ** 2 + ((y - 20) / 13) ** 2 <= 1] = 40.0
    hu[(x - 20) ** 2 + (y - 28) ** 2 <= 9] = 700.0
    hu += np.random.default_rng(3).normal(0.0, 20.0, hu.shape)
    nib.save(nib.Nifti1Image(hu.astype(np.int16), np.diag([3.0, 3.0, 3.0, 1.0])), path)


def test_installed_engine_segments_a_ct(installed_module_dir: Path, tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np
    from model_factory import NetworkSize, write_task_models
    from totalseg_engine.tasks import get_task

    home = tmp_path / "home"
    write_task_models(home / "nnunet" / "results", "total", "fast", NetworkSize((2, 4, 8), (64, 64, 64)), seed=5)
    _small_ct(tmp_path / "ct.nii.gz")
    output = tmp_path / "seg.nii.gz"
    done = isolated_python(installed_module_dir,
                           ["-m", "totalseg_engine", "-i", "ct.nii.gz", "-o", str(output), "--fast", "--ml",
                            "--device", "cpu", "--offline"],
                           cwd=tmp_path, env={"TOTALSEG_HOME_DIR": str(home)})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    labels = np.unique(np.asarray(nib.load(output).dataobj))
    assert labels.size > 1 and set(labels.tolist()) <= {0, *get_task("total").classes}


# -------------------------------------------------------------------------------------- the stand-in itself


PROBE = """
cmake_minimum_required(VERSION 3.16.3...3.19.7)
project(Probe LANGUAGES NONE)
find_package(Slicer REQUIRED)
include(${Slicer_USE_FILE})
slicerMacroBuildScriptedModule(NAME Probe SCRIPTS Probe.py pkg/__init__.py @SCRIPTS@ RESOURCES @RESOURCES@)
"""


@pytest.mark.parametrize("data_as", ["SCRIPTS", "RESOURCES"])
def test_stand_in_builds_data_as_slicer_does(tmp_path: Path, data_as: str) -> None:
    """The stand-in fails on a data file among the scripts, and ships one among the resources, beside the package."""
    source = tmp_path / "src"
    (source / "pkg" / "data").mkdir(parents=True)
    (source / "Probe.py").write_text("")
    (source / "pkg" / "__init__.py").write_text("")
    (source / "pkg" / "data" / "table.json").write_text("{}")
    text = PROBE.replace(f"@{data_as}@", "pkg/data/table.json").replace("@SCRIPTS@", "").replace("@RESOURCES@", "")
    (source / "CMakeLists.txt").write_text(textwrap.dedent(text))
    built = build_extension(tmp_path, source)
    if data_as == "SCRIPTS":
        assert built.returncode != 0 and "pkg/data/table.json.py" in built.log
        assert "No rule to make target" in built.log or "missing and no known rule" in built.log
    else:
        assert built.returncode == 0, built.log
        assert (built.module_dir / "pkg" / "data" / "table.json").read_text() == "{}"
        assert (built.module_dir / "Probe.py").is_file() and (built.module_dir / "Probe.pyc").is_file()


# ---------------------------------------------------------------------------------------------- metadata


def _description(build_dir: Path) -> dict[str, str]:
    """The extension description the stand-in wrote from the EXTENSION_* variables (keyword, value)."""
    lines = (build_dir / "TotalSegmentator.s4ext").read_text(encoding="utf-8").splitlines()
    return dict((line.split(" ", 1) + [""])[:2] for line in lines if line and not line.startswith("#"))


def _github_repository(url: str) -> Optional[str]:
    """``owner/name`` of a github.com or raw.githubusercontent.com URL."""
    found = re.match(r"https://(?:github\.com|raw\.githubusercontent\.com)/([^/]+/[^/]+)", url)
    return found.group(1) if found else None


def _urls(description: dict[str, str]) -> list[str]:
    """Every URL of the description: homepage, icon, screenshots."""
    return [description["homepage"], description["iconurl"], *description["screenshoturls"].split()]


def test_metadata_urls_name_files_of_this_repository(extension_build: ExtensionBuild) -> None:
    description = _description(extension_build.build_dir)
    homepage = description["homepage"]
    repository = _github_repository(homepage)
    assert repository is not None and homepage.rstrip("/") == f"https://github.com/{repository}"
    for url in _urls(description):
        assert _github_repository(url) == repository, url
        assert not any(other.lower() in url.lower() for other in FOREIGN_REPOSITORIES), url
        if url.startswith("https://raw.githubusercontent.com/"):
            branch_and_path = url.split(f"/{repository}/", 1)[1]
            assert (ROOT / branch_and_path.split("/", 1)[1]).is_file(), url
    assert description["iconurl"].endswith("/TotalSegmentator.png")
    assert description["screenshoturls"].split(), "the index shows at least one screenshot"
    assert description["depends"] == "PyTorch"
    assert not any(other.lower() in (ROOT / "CMakeLists.txt").read_text().lower() for other in FOREIGN_REPOSITORIES)


def test_metadata_urls_follow_the_repository_setting(tmp_path: Path) -> None:
    done = configure(ROOT, tmp_path, "-DTotalSegmentator_REPOSITORY_URL=https://github.com/someone/SomeFork")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {_github_repository(url) for url in _urls(_description(tmp_path))} == {"someone/SomeFork"}


def test_package_names_this_repository_license_and_readme(extension_build: ExtensionBuild) -> None:
    cpack = (extension_build.build_dir / "CPackConfig.cmake").read_text(encoding="utf-8")
    assert f'set(CPACK_RESOURCE_FILE_LICENSE "{ROOT / "LICENSE"}")' in cpack
    assert f'set(CPACK_PACKAGE_DESCRIPTION_FILE "{ROOT / "README.md"}")' in cpack


def test_license_is_apache_2() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert " ".join(text.split()).startswith("Apache License Version 2.0, January 2004")
    terms = text[text.index("TERMS AND CONDITIONS FOR USE"):text.index("END OF TERMS AND CONDITIONS")]
    normalized = " ".join((terms + "END OF TERMS AND CONDITIONS").split())
    assert hashlib.sha256(normalized.encode()).hexdigest() == APACHE_2_TERMS_SHA256
    assert _pyproject()["project"]["license"] == {"text": "Apache-2.0"}


def test_installed_module_script_opens_its_panel(installed_module_dir: Path, mrml, monkeypatch, tmp_path) -> None:
    """The module script as installed, in the stand-in Slicer: its .ui and icon come from the installed folder."""
    pytest.importorskip("PySide6", reason="PySide6 stands in for PythonQt's Qt widgets")
    from slicer_app_stand_in import import_module, install, module_parent, open_panel

    script = installed_module_dir / "TotalSegmentator.py"
    harness = install(monkeypatch, mrml.scene, tmp_path, script)
    module = import_module(monkeypatch, script)
    assert Path(module.__file__) == script
    module.TotalSegmentator(module_parent(script))
    widget, panel = open_panel(module)
    try:
        assert widget.resourcePath("UI/TotalSegmentator.ui").startswith(str(installed_module_dir))
        assert widget.ui.taskComboBox.count == 53 and harness.connect_warnings == []
        assert (installed_module_dir / "Resources" / "Icons" / "TotalSegmentator.png").is_file()
    finally:
        panel.exit()
        widget.cleanup()
