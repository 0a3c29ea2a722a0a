"""The ``TotalSegmentator`` command: listing, first-use download, progress lines, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from model_factory import SMALL_3MM, release_zip, write_task_models
from totalseg_engine import imageio, tasks
from totalseg_engine.cli import main as cli
from totalseg_engine.progress import parse_event_line
from totalseg_engine.weights import cache as weights
from totalseg_engine.weights import paths
from weights_server import serving

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", "http://127.0.0.1:9/{version}/{folder}.zip")  # nothing listens
    return tmp_path / "home"


@pytest.fixture(scope="module")
def release_297(tmp_path_factory) -> bytes:
    """The fast total model as a release zip (one DatasetXXX folder at the zip's root, made by ``zip -r``)."""
    root = tmp_path_factory.mktemp("release")
    write_task_models(root, "total", "fast", SMALL_3MM, seed=5)
    return release_zip(root)


def test_list_tasks_shows_every_task_with_licence(capsys):
    assert cli.main(["--list-tasks"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()[1:]
    assert len(lines) == len(tasks.all_tasks()) == 53
    assert any(line.startswith("heartchambers_highres") and line.endswith("required") for line in lines)
    assert any(line.startswith("total ") and "normal,fast,fastest" in line for line in lines)


def test_list_classes(capsys):
    assert cli.main(["--list-classes", "total_mr"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(tasks.get_task("total_mr").classes)
    assert out[0].split() == ["1", tasks.get_task("total_mr").classes[1]]


@pytest.mark.parametrize("argv, expected", [
    (["--list-classes", "lvier"], "Unknown task 'lvier'"),
    (["-ta", "totl"], "Did you mean: total"),
    (["-rs", "lvier"], "Unknown class 'lvier' in task 'total'. Did you mean: liver"),
    (["-ta", "liver_segments", "--fast"], "has no fast mode"),
    (["-rs", "liver", "-ta", "lung_vessels"], "--roi_subset works only with"),
])
def test_bad_names_say_what_is_valid(home, data_dir, tmp_path, capsys, argv, expected):
    full = argv if argv[0] == "--list-classes" else ["-i", str(data_dir / "example_ct_sm.nii.gz"),
                                                     "-o", str(tmp_path / "out"), *argv]
    assert cli.main(full) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def write_bad(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.nii.gz"
    if kind == "2d":
        nib.save(nib.Nifti1Image(np.zeros((20, 20), np.int16), np.eye(4)), path)
    elif kind == "nan":
        data = np.zeros((20, 20, 20), np.float32)
        data[3, 4, 5] = np.nan
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    elif kind == "empty":
        nib.save(nib.Nifti1Image(np.zeros((20, 0, 20), np.int16), np.eye(4)), path)
    elif kind == "garbage":
        path.write_bytes(b"this is not an image")
    return path


@pytest.mark.parametrize("kind, message", [
    ("2d", "3-D"), ("nan", "NaN"), ("empty", "empty"), ("garbage", "read"), ("missing", "not found"),
])
def test_bad_input_gives_message_and_writes_nothing(home, tmp_path, capsys, kind, message):
    source = write_bad(kind, tmp_path)
    out = tmp_path / "out"
    assert cli.main(["-i", str(source), "-o", str(out), "--fast", "-d", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "\nERROR: " in "\n" + err and message.lower() in err.lower() and "Traceback" not in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ([source.name] if source.exists() else [])


def test_missing_weights_offline_explains_both_fixes(home, data_dir, tmp_path, capsys):
    code = cli.main(["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "out"), "--fast",
                     "-d", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    folder = tasks.get_task("total").mode("fast").models[0].folder
    assert folder in err and "totalseg_download_weights" in err and "totalseg_import_weights" in err
    assert not (tmp_path / "out").exists()
    assert not any(paths.weights_dir().glob("Dataset297*"))


def test_first_run_downloads_weights_then_segments(home, data_dir, tmp_path, monkeypatch, release_297, capsys):
    spec = tasks.get_task("total").mode("fast").models[0]
    with serving(monkeypatch) as server:
        server.serve(f"/{spec.release}/{spec.folder}.zip", release_297)
        code = cli.main(["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "seg.nii.gz"),
                         "--ml", "--fast", "-d", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert weights.is_installed(spec)
    seg = nib.load(tmp_path / "seg.nii.gz")
    assert seg.shape == nib.load(data_dir / "example_ct_sm.nii.gz").shape
    assert imageio.read_label_map(tmp_path / "seg.nii.gz") == tasks.get_task("total").classes
    # the second run reuses the cache: no server at all now
    code = cli.main(["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "seg2.nii.gz"),
                     "--ml", "--fast", "-d", "cpu", "--offline"])
    assert code == 0
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "seg2.nii.gz").dataobj),
                                  np.asanyarray(seg.dataobj))


def test_progress_json_lines_from_a_child_process(home, data_dir, tmp_path):
    write_task_models(paths.weights_dir(), "total", "fast", SMALL_3MM, seed=5)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "TotalSegmentator")}
    proc = subprocess.run([sys.executable, "-m", "totalseg_engine", "-i", str(data_dir / "example_ct_sm.nii.gz"),
                           "-o", str(tmp_path / "seg.nii.gz"), "--ml", "--fast", "-d", "cpu", "--offline",
                           "--progress-json"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [parse_event_line(line) for line in proc.stdout.splitlines()]
    assert all(events), f"non-event lines on stdout: {proc.stdout!r}"
    stages = [e.stage for e in events]
    assert stages[0] == "read" and stages[-1] == "done"
    predict = [e for e in events if e.stage == "predict" and e.fraction is not None]
    assert predict and predict[-1].fraction == 1.0 and predict[-1].model == predict[-1].of == 1
    assert [e.fraction for e in predict] == sorted(e.fraction for e in predict)
    assert (tmp_path / "seg.nii.gz").is_file()


def test_program_exit_keeps_every_line_and_the_exit_code(home, tmp_path):
    """The program ends without Python's teardown: what is still buffered for a pipe must arrive all the same."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "TotalSegmentator")}
    env.pop("PYTHONUNBUFFERED", None)  # buffered, as a terminal-less child usually is
    listing = subprocess.run([sys.executable, "-m", "totalseg_engine", "--list-tasks"], capture_output=True,
                             text=True, env=env, timeout=120)
    assert listing.returncode == 0
    assert listing.stdout.strip() == cli.format_tasks().strip() and len(listing.stdout) > 4096
    failed = subprocess.run([sys.executable, "-m", "totalseg_engine", "-i", str(tmp_path / "missing.nii.gz"),
                             "-o", str(tmp_path / "seg.nii.gz"), "--offline"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert failed.returncode == 1 and "ERROR: Input not found" in failed.stderr and "missing.nii.gz" in failed.stderr


def test_output_exists_needs_overwrite(home, data_dir, tmp_path, capsys):
    write_task_models(paths.weights_dir(), "total", "fast", SMALL_3MM, seed=5)
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"keep me")
    argv = ["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(target), "--ml", "--fast", "-d", "cpu"]
    assert cli.main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err and target.read_bytes() == b"keep me"
    assert cli.main([*argv, "--overwrite"]) == 0
    assert nib.load(target).shape == nib.load(data_dir / "example_ct_sm.nii.gz").shape


def test_a_multilabel_output_without_suffix_is_written_as_nii_like_the_official(home, data_dir, tmp_path, capsys):
    """The official saves --ml with nibabel, which adds .nii to a name without one; a script relying on that works."""
    write_task_models(paths.weights_dir(), "total", "fast", SMALL_3MM, seed=5)
    argv = ["-i", str(data_dir / "example_ct_sm.nii.gz"), "--ml", "--fast", "-d", "cpu", "--offline"]
    assert cli.main([*argv, "-o", str(tmp_path / "case00")]) == 0, capsys.readouterr().err
    assert str(tmp_path / "case00.nii") in capsys.readouterr().err
    assert nib.load(tmp_path / "case00.nii").shape == nib.load(data_dir / "example_ct_sm.nii.gz").shape
    assert imageio.read_label_map(tmp_path / "case00.nii") == tasks.get_task("total").classes


def test_a_multilabel_output_with_another_suffix_is_refused_before_computing(home, data_dir, tmp_path, capsys):
    """nibabel (and so the official) fails on seg.txt only after the whole run; here before any model loads."""
    argv = ["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "seg.txt"), "--ml", "--fast",
            "-d", "cpu", "--offline"]  # no weights installed: a run would fail on them, not on the name
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "seg.txt" in err and ".nii.gz" in err and "weights" not in err.lower()
    assert list(tmp_path.iterdir()) == []
