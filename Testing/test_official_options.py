"""The official 2.18 options that were refused until now: -sl, -rp, -sx, statistics_normalized_intensities, -r, -v1o,
-ro, --higher_order_resampling_LEGACY, -ss and -ms small, each with the official's file names, JSON keys and values.

Where the official package is installed beside the checkout (``.venv-official``), both tools run on the same
release-shaped weights and their outputs are compared; the official's own functions (statistics, the version 1
reordering, the legacy one-hot upsampling) are run on the same arrays. Without it, the rules are checked on our side.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from importlib.util import find_spec
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from model_factory import NetworkSize, write_task_models
from test_cli_official import OFFICIAL_VENV, ct, run_cli, runs  # noqa: F401 (fixtures)
from totalseg_engine import Result, geometry, get_task, imageio
from totalseg_engine.cli import main as cli
from totalseg_engine.core.statistics import EMPTY_EXTRA, compute_statistics
from totalseg_engine.weights import paths

OFFICIAL_PYTHON = OFFICIAL_VENV / "bin" / "python"
needs_official = pytest.mark.skipif(not OFFICIAL_PYTHON.exists(), reason="the official package is not installed")
TINY = NetworkSize(features=(4, 8, 16), patch_size=(64, 64, 64))
REPORT_KEYS = ["totalsegmentator_version", "nnunetv2_version", "torch_version", "task", "modality", "license_required",
               "device", "fast", "fastest", "save_lowres", "multilabel", "output_type", "roi_subset", "input", "output",
               "num_classes", "classes", "runtime_seconds", "output_files"]
"""The keys of the official 2.18 ``build_run_report``, in its order (python_api.py)."""


def official(script: str, *args: str, env: dict = None, timeout: int = 600) -> str:
    """Run Python code in the official package's environment; its stdout."""
    done = subprocess.run([str(OFFICIAL_PYTHON), "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def weights_home(tmp_path_factory) -> Path:
    """total's 3 mm and 6 mm models, tiny, as the release holds them; a trainer class the official can look up."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOTALSEG_HOME_DIR", str(home))
        for speed in ("fast", "fastest"):
            write_task_models(paths.weights_dir(), "total", speed, TINY, seed=3, checkpoint_trainer="nnUNetTrainer")
    return home


@pytest.fixture
def home(weights_home, monkeypatch) -> Path:
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(weights_home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    return weights_home


def ours(argv: list[str], capsys) -> str:
    code = cli.main([*argv, "-d", "cpu", "--offline", "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def labels_of(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


# ---------------------------------------------------------------- statistics


def test_extra_metrics_of_a_known_structure():
    seg = np.zeros((12, 10, 9), np.uint8)
    seg[4:7, 3:5, 4:6] = 2  # 12 voxels, inside the border
    seg[0:2, 0:2, 0:2] = 1  # cut off by the first slices
    image = np.arange(seg.size, dtype=np.float64).reshape(seg.shape)
    stats = compute_statistics(seg, image, (1.0, 1.0, 2.0), {1: "a", 2: "b", 3: "c"}, extra=True)
    inside = image[seg == 2]
    assert list(stats["b"]) == ["volume", "intensity", *EMPTY_EXTRA]
    assert stats["b"]["n_voxels"] == 12 and stats["b"]["volume"] == 24.0
    assert stats["b"]["intensity_std"] == round(float(np.std(inside)), 5)
    assert (stats["b"]["intensity_min"], stats["b"]["intensity_max"]) == (inside.min(), inside.max())
    assert stats["b"]["centroid_vox"] == [5.0, 3.5, 4.5] and stats["b"]["bbox_vox"] == [[4, 6], [3, 4], [4, 5]]
    assert stats["a"] == {"volume": 0.0, "intensity": 0.0, **EMPTY_EXTRA} == stats["c"]


def test_normalized_intensities_scale_the_int16_image_to_0_1():
    seg = np.zeros((12, 12, 12), np.uint8)
    seg[4:8, 4:8, 4:8] = 1
    image = np.full(seg.shape, -1000.0)
    image[seg == 1] = 40.0
    image[0, 0, 0] = 3000.0
    stats = compute_statistics(seg, image, (1, 1, 1), {1: "liver"}, normalized=True, extra=True)
    assert stats["liver"]["intensity"] == round(1040 / 4000, 5) and stats["liver"]["intensity_std"] == 0.0


@needs_official
@pytest.mark.parametrize("metric, normalized, extra, exclude", [
    ("mean", False, True, True), ("median", True, True, False), ("mean", True, False, True)])
def test_statistics_equal_the_official_functions(data_dir, tmp_path, metric, normalized, extra, exclude):
    """The official get_basic_statistics on the official total segmentation of example_ct_sm, and ours."""
    ct_path, seg_path = data_dir / "example_ct_sm.nii.gz", data_dir / "example_seg.nii.gz"
    script = ("import sys, json, nibabel as nib, numpy as np\n"
              "from totalsegmentator.statistics import get_basic_statistics\n"
              "seg = nib.load(sys.argv[2]).get_fdata()\n"
              "s = get_basic_statistics(seg, nib.load(sys.argv[1]), None, True, 'total', sys.argv[6] == '1', None,\n"
              "    metric=sys.argv[3], normalized_intensities=sys.argv[4] == '1', extra_metrics=sys.argv[5] == '1')\n"
              "print(json.dumps(s, default=float))\n")
    theirs = json.loads(official(script, str(ct_path), str(seg_path), metric, str(int(normalized)), str(int(extra)),
                                 str(int(exclude))))
    image = nib.load(ct_path)
    mine = compute_statistics(labels_of(seg_path), image.get_fdata(), geometry.header_spacing(image),
                              get_task("total").classes, exclude_masks_at_border=exclude, metric=metric, extra=extra,
                              normalized=normalized)
    assert json.loads(json.dumps(mine)) == theirs
    assert any(values.get("n_voxels") for values in mine.values()) == extra


def test_statistics_extra_is_left_out_with_fast_as_in_the_official(home, data_dir, tmp_path, capsys):
    """The official's --fast statistics come from its nnunet.py, which does not pass the extra metrics on."""
    source = data_dir / "example_ct_sm.nii.gz"
    for speed, extra in (("-f", False), ("-ff", True)):
        ours(["-i", str(source), "-o", str(tmp_path / speed / "seg.nii.gz"), "--ml", speed, "-s", "-sx"], capsys)
        stats = json.loads((tmp_path / speed / "statistics.json").read_text())
        assert ("n_voxels" in stats["liver"]) == extra


# ---------------------------------------------------------------- save_lowres, resampling order, legacy upsampling


def test_save_lowres_keeps_the_models_grid_in_the_inputs_orientation(home, data_dir, tmp_path, capsys):
    source = data_dir / "example_mr_sm.nii.gz"  # LPS
    ours(["-i", str(source), "-o", str(tmp_path / "low.nii.gz"), "--ml", "-ff", "-sl", "-ta", "total"], capsys)
    low, image = nib.load(tmp_path / "low.nii.gz"), nib.load(source)
    assert nib.aff2axcodes(low.affine) == nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert np.allclose(np.abs(np.diag(low.affine)[:3]), 6.0)
    expected = geometry.resample_image(geometry.to_canonical(image), (6.0, 6.0, 6.0)).shape
    assert sorted(low.shape) == sorted(expected) and low.header.get_data_dtype() == np.uint8
    assert np.unique(labels_of(tmp_path / "low.nii.gz")).size > 5


@pytest.mark.parametrize("argv, code, message", [
    (["-sl"], 2, "save_lowres only works together with fast or fastest"),
    (["-f", "-sl", "-ot", "dicom_seg"], 2, "save_lowres writes NIfTI"),
    (["-f", "-sl", "-rs", "liver"], 1, "save_lowres is not supported together with cropping"),
])
def test_save_lowres_is_refused_where_the_official_refuses_it(home, data_dir, tmp_path, capsys, argv, code, message):
    result = run_cli(["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "s.nii.gz"), "--ml",
                      "-d", "cpu", "--offline", *argv], capsys)
    assert result[0] == code and message in result[1] and not (tmp_path / "s.nii.gz").exists()


def test_legacy_upsampling_interpolates_each_label_and_keeps_the_later_label_on_top():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[2:4, 2:4, 2:4] = 2
    up = geometry.resample_labels_one_hot(labels, (12, 12, 12))
    # a 2-voxel cube doubled: voxels 4..7 on each axis, less the 8 corners where trilinear weights give 0.75**3 < 0.5
    assert (up == 2).sum() == 4 ** 3 - 8
    assert np.argwhere(up == 2).min(axis=0).tolist() == [4, 4, 4] and up[4, 4, 4] == 0 and up[4, 4, 5] == 2
    labels[1:3, 1:3, 1:3] = 1
    labels[2:4, 2:4, 2:4] = 2
    up = geometry.resample_labels_one_hot(labels, (12, 12, 12))
    assert (up == 2).sum() == 4 ** 3 - 8 and up[3, 3, 3] == 1  # where both reach 0.5, the higher label wins
    assert not geometry.resample_labels_one_hot(np.zeros((3, 3, 3), np.uint8), (6, 6, 6)).any()


@needs_official
def test_legacy_upsampling_equals_the_officials(data_dir, tmp_path):
    labels = labels_of(data_dir / "example_seg_fast.nii.gz")[::2, ::2, ::2].copy()
    np.save(tmp_path / "labels.npy", labels)
    script = ("import sys, numpy as np\nfrom totalsegmentator.resampling import resample_one_hot_crop\n"
              "a = np.load(sys.argv[1]).astype(np.float64)\n"
              "np.save(sys.argv[2], resample_one_hot_crop(a, [int(v) for v in sys.argv[3:]], order=1))\n")
    shape = [2 * s + 1 for s in labels.shape]
    official(script, str(tmp_path / "labels.npy"), str(tmp_path / "theirs.npy"), *map(str, shape))
    theirs = np.load(tmp_path / "theirs.npy")
    np.testing.assert_array_equal(geometry.resample_labels_one_hot(labels, shape), theirs.astype(np.uint8))


# ---------------------------------------------------------------- version 1 order, report, model size, radiomics


def _differently_numbered_class() -> tuple[str, int, int]:
    v2, v1 = get_task("total").classes, get_task("total").v1_classes
    by_name = {name: label for label, name in v1.items()}
    return next((name, label, by_name[name]) for label, name in v2.items() if by_name.get(name, label) != label)


def test_v1_order_gives_version_1_values_and_table(ct, tmp_path, runs, capsys):  # noqa: F811
    name, v2_label, v1_label = _differently_numbered_class()
    code, err = run_cli(["-i", str(ct), "-o", str(tmp_path / "v1.nii.gz"), "--ml", "-v1o", "-rs", name], capsys)
    assert code == 0, err
    assert set(np.unique(labels_of(tmp_path / "v1.nii.gz"))) == {0, v1_label} and v1_label != v2_label
    assert imageio.read_label_map(tmp_path / "v1.nii.gz") == {v1_label: name}
    assert run_cli(["-i", str(ct), "-o", str(tmp_path / "files"), "-v1o", "-rs", name], capsys)[0] == 0
    assert labels_of(tmp_path / "files" / f"{name}.nii.gz").sum() == (labels_of(tmp_path / "v1.nii.gz") > 0).sum()


@needs_official
def test_v1_order_equals_the_officials_reordering(tmp_path):
    data = np.arange(120, dtype=np.uint8).reshape(4, 5, 6) % 118
    np.save(tmp_path / "v2.npy", data)
    script = ("import sys, numpy as np\nfrom totalsegmentator.libs import reorder_multilabel_like_v1\n"
              "from totalsegmentator.map_to_binary import class_map\n"
              "np.save(sys.argv[2], reorder_multilabel_like_v1(np.load(sys.argv[1]), class_map['total'], "
              "class_map['total_v1']))\n")
    official(script, str(tmp_path / "v2.npy"), str(tmp_path / "v1.npy"))
    image = nib.Nifti1Image(data, np.eye(4))
    result = Result(image, dict(get_task("total").classes))
    from totalseg_engine.case import _in_requested_order
    from totalseg_engine.request import SegmentationRequest

    ordered = _in_requested_order(result, SegmentationRequest(v1_order=True))
    np.testing.assert_array_equal(ordered.data, np.load(tmp_path / "v1.npy"))
    assert ordered.label_map == get_task("total").v1_classes


def test_report_has_the_official_keys_and_values(ct, tmp_path, runs, capsys):  # noqa: F811
    out = tmp_path / "out"
    assert run_cli(["-i", str(ct), "-o", str(out), "-rs", "liver", "spleen", "-ff", "-rp", str(tmp_path / "r.json")],
                   capsys)[0] == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert list(report) == REPORT_KEYS
    assert (report["task"], report["modality"], report["fast"], report["fastest"], report["multilabel"]) == \
        ("total", "CT", False, True, False)
    assert report["output_type"] == "nifti" and report["roi_subset"] == ["liver", "spleen"]
    assert report["classes"] == {"1": "spleen", "5": "liver"} and report["num_classes"] == 2
    assert report["input"] == str(ct) and report["output"] == str(out) and report["device"] in ("cpu", "gpu")
    assert report["output_files"] == ["liver.nii.gz", "spleen.nii.gz"]


def test_model_size_small_runs_total_v3s_small_models(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    source, out = data_dir / "example_ct_sm.nii.gz", tmp_path / "seg.nii.gz"
    argv = ["-i", str(source), "-o", str(out), "--ml", "-ta", "total_v3", "-f", "-d", "cpu", "--offline"]
    code, err = run_cli([*argv, "-ms", "small"], capsys)
    assert code == 1 and "nnUNetResEncUNetLPlans_8" in err  # names what is missing
    [folder] = write_task_models(paths.weights_dir(), "total_v3", "fast", TINY, model_size="small")
    assert folder.name.endswith("__nnUNetResEncUNetLPlans_8__3d_fullres")
    code, err = run_cli([*argv, "-ms", "small"], capsys)
    assert code == 0 and np.unique(labels_of(out)).size > 5, err
    assert run_cli(argv, capsys)[0] == 1  # the big models are not installed: small ran its own


@pytest.mark.skipif(find_spec("radiomics") is not None, reason="pyradiomics is installed here")
def test_radiomics_without_pyradiomics_says_which_extra_and_why(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    code, err = run_cli(["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "out"), "-r", "-f",
                         "-d", "cpu"], capsys)
    assert code == 1 and "pip install '.[radiomics]'" in err and "Python 3.9" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "home").exists()  # before any work
    code, err = run_cli(["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "s.nii.gz"), "-r",
                         "--ml"], capsys)
    assert code == 2 and "radiomics needs the class-file output" in err


@pytest.mark.parametrize("types", [("nifti", "seg_nrrd"), ("nifti", "stl"), ("stl",)])
def test_radiomics_beside_other_outputs_is_refused_before_any_work(types, data_dir, tmp_path, monkeypatch):
    """Regression: with several output types the NIfTI is one multilabel file, which radiomics measured as a mask."""
    from totalseg_engine import SegmentationRequest
    from totalseg_engine.errors import InvalidOptionError
    from totalseg_engine.outputs import radiomics, targets

    monkeypatch.setattr(radiomics, "find_spec", lambda name: object())  # as if pyradiomics were installed
    request = SegmentationRequest(output_types=types, radiomics=True)
    source = data_dir / "example_ct_sm.nii.gz"
    planned = targets.planned_targets(source, tmp_path / "case", request)
    with pytest.raises(InvalidOptionError, match="output type nifti alone"):
        radiomics.check_can_run(source, planned, request)
    radiomics.check_can_run(source, {"nifti": tmp_path / "folder"}, SegmentationRequest(radiomics=True))


RADIOMICS_PYTHON = os.environ.get("TOTALSEG_RADIOMICS_PYTHON")
"""A Python with pyradiomics and the official package (``--no-deps``): pyradiomics installs on Python 3.9 only."""


@pytest.mark.skipif(not RADIOMICS_PYTHON, reason="set TOTALSEG_RADIOMICS_PYTHON to a Python 3.9 with pyradiomics 3.1, "
                                                 "numpy<2, nibabel, scipy and totalsegmentator (--no-deps)")
def test_radiomics_equal_the_officials(data_dir, tmp_path):
    """Our features and the official's for the same masks, the empty one's zero list included."""
    seg = nib.load(data_dir / "example_seg.nii.gz")
    (tmp_path / "masks").mkdir()
    for label, name in ((5, "liver"), (1, "spleen"), (250, "empty")):
        nib.save(nib.Nifti1Image((labels_of(data_dir / "example_seg.nii.gz") == label).astype(np.uint8), seg.affine),
                 tmp_path / "masks" / f"{name}.nii.gz")
    script = ("import sys, json, warnings\nfrom pathlib import Path\nsys.path.insert(0, sys.argv[4])\n"
              "warnings.simplefilter('ignore')\n"
              "from totalsegmentator.statistics import get_radiomics_features_for_entire_dir as official\n"
              "from totalseg_engine.outputs.radiomics import write_radiomics\n"
              "ct, masks, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])\n"
              "official(ct, masks, out / 'official.json')\n"
              "write_radiomics(ct, masks, out / 'ours.json', lambda event: None)\n")
    module_root = Path(__file__).resolve().parents[1] / "TotalSegmentator"
    done = subprocess.run([RADIOMICS_PYTHON, "-c", script, str(data_dir / "example_ct_sm.nii.gz"),
                           str(tmp_path / "masks"), str(tmp_path), str(module_root)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs, mine = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("official", "ours"))
    assert mine == theirs and list(mine) == ["empty", "liver", "spleen"] and set(mine["empty"].values()) == {0.0}


# ---------------------------------------------------------------- both tools, same weights


OPTION_SETS = {
    "save_lowres": (["--ml", "-ff", "-sl"], "example_mr_sm.nii.gz"),
    "resampling_order_3_statistics_extra": (["--ml", "-ff", "-ro", "3", "-s", "-sx"], "example_ct_sm.nii.gz"),
    "legacy_upsampling_v1_order": (["--ml", "-ff", "--higher_order_resampling_LEGACY", "-v1o"],
                                   "example_mr_sm.nii.gz"),
    "fast_statistics_extra_median_report": (["-f", "-s", "-sx", "-sa", "median", "-rp"], "example_ct_sm.nii.gz"),
    "skip_saving_statistics": (["--ml", "-ff", "-ss", "-s", "-ro", "0"], "example_ct_sm.nii.gz"),  # (the official
    # writes -ss -s without --ml into a folder it has not made, and fails)
    "probabilities": (["--ml", "-f", "-sp"], "example_ct_sm.nii.gz"),
    "probabilities_of_a_roi_crop": (["--ml", "-f", "-rs", "liver", "spleen", "-sp"], "example_ct_sm.nii.gz"),
    "probabilities_of_the_first_slab": (["--ml", "-f", "-fs", "-sp"], "example_ct.nii.gz"),
}
PATH_OPTIONS = {"-rp": "report.json", "-sp": "probabilities.npz"}


@needs_official
@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_both_tools_write_the_same_files_on_the_same_weights(name, home, data_dir, tmp_path, capsys):
    argv, input_name = OPTION_SETS[name]
    source = data_dir / input_name
    folders = {}
    for tool in ("official", "ours"):
        folder = tmp_path / tool
        folder.mkdir()
        target = folder / ("seg.nii.gz" if "--ml" in argv else "seg")
        full = ["-i", str(source), "-o", str(target), *argv]
        for flag, name in PATH_OPTIONS.items():
            if flag in full:
                full.insert(full.index(flag) + 1, str(folder / name))
        if tool == "official":
            env = {"TOTALSEG_HOME_DIR": str(home), "no_proxy": "*", "PATH": "/usr/bin:/bin"}
            done = subprocess.run([str(OFFICIAL_VENV / "bin" / "TotalSegmentator"), *full, "-d", "cpu", "-q"],
                                  capture_output=True, text=True, timeout=600, env=env)
            assert done.returncode == 0, done.stderr[-3000:]
        else:
            ours(full, capsys)
        folders[tool] = folder
    assert _files(folders["official"]) == _files(folders["ours"])
    for relative in _files(folders["official"]):
        _assert_same_file(folders["official"] / relative, folders["ours"] / relative)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _assert_same_file(theirs: Path, mine: Path) -> None:
    if theirs.name.endswith(".nii.gz"):
        a, b = nib.load(theirs), nib.load(mine)
        assert a.shape == b.shape and np.allclose(a.affine, b.affine), theirs.name
        np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj), err_msg=theirs.name)
        assert imageio.read_label_map(a) == imageio.read_label_map(b), theirs.name
    elif theirs.suffix == ".npz":
        with np.load(theirs) as a, np.load(mine) as b:
            assert a.files == b.files == ["probabilities"]
            assert a["probabilities"].dtype == b["probabilities"].dtype and a["probabilities"].ndim == 4
            np.testing.assert_array_equal(a["probabilities"], b["probabilities"])
    elif theirs.suffix == ".pkl":
        a, b = (pickle.loads(path.read_bytes()) for path in (theirs, mine))
        assert list(a) == list(b) and list(a["nibabel_stuff"]) == list(b["nibabel_stuff"])
        assert all(np.array_equal(a["nibabel_stuff"][key], b["nibabel_stuff"][key]) for key in a["nibabel_stuff"])
        assert {k: v for k, v in a.items() if k != "nibabel_stuff"} == {k: v for k, v in b.items()
                                                                          if k != "nibabel_stuff"}
    elif theirs.name == "report.json":
        a, b = json.loads(theirs.read_text()), json.loads(mine.read_text())
        assert list(a) == list(b)
        differing = {key for key in a if a[key] != b[key]}
        assert differing <= {"totalsegmentator_version", "torch_version", "runtime_seconds", "output"}, differing
    else:
        assert json.loads(theirs.read_text()) == json.loads(mine.read_text()), theirs.name
