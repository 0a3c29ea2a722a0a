"""Every official TotalSegmentator 2.18 flag on our command line: same meaning, ignored with a notice, or refused.

The official argparse is written out below as data (read from its ``bin/TotalSegmentator.py``); where the
official package is installed beside the checkout, a test checks the table against its source text.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from model_factory import NetworkSize, write_task_models
from totalseg_engine import __version__, api, imageio
from totalseg_engine.cli import main as cli
from totalseg_engine.cli import options as cli_options
from totalseg_engine.core import pipeline
from totalseg_engine.outputs.body_masks import body_and_skin
from totalseg_engine.request import SegmentationRequest
from totalseg_engine.tasks import get_task
from totalseg_engine.weights import licensing, paths

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_VENV = ROOT / ".venv-official"
OFFICIAL_CLI = OFFICIAL_VENV / "lib/python3.11/site-packages/totalsegmentator/bin/TotalSegmentator.py"

ACCEPTED, IGNORED, REFUSED = "accepted", "ignored", "refused"

# (names as the official registers them, arity: "0" switch / "1" one value / "?" optional / "+" one or more,
#  literal choices, our status)
OFFICIAL_FLAGS: list[tuple[tuple[str, ...], str, Optional[tuple], str]] = [
    (("-i",), "1", None, ACCEPTED),
    (("-o",), "1", None, ACCEPTED),
    (("-ot", "--output_type"), "+", None, ACCEPTED),
    (("-ml", "--ml"), "0", None, ACCEPTED),
    (("-nr", "--nr_thr_resamp"), "1", None, IGNORED),
    (("-ro", "--resampling_order"), "1", None, ACCEPTED),
    (("-ns", "--nr_thr_saving"), "1", None, IGNORED),
    (("-f", "--fast"), "0", None, ACCEPTED),
    (("-ff", "--fastest"), "0", None, ACCEPTED),
    (("-sl", "--save_lowres"), "0", None, ACCEPTED),
    (("-t", "--nora_tag"), "1", None, IGNORED),
    (("-p", "--preview"), "0", None, ACCEPTED),
    (("-ta", "--task"), "1", None, ACCEPTED),
    (("-ms", "--model_size"), "1", ("big", "small"), ACCEPTED),
    (("-rs", "--roi_subset"), "+", None, ACCEPTED),
    (("-rsr", "--roi_subset_robust"), "+", None, ACCEPTED),
    (("-rc", "--robust_crop"), "0", None, ACCEPTED),
    (("--higher_order_resampling_LEGACY", "--high_order_resampling_LEGACY"), "0", None, ACCEPTED),
    (("-ho", "--higher_order_resampling", "--high_order_resampling"), "0", None, ACCEPTED),
    (("-s", "--statistics"), "?", None, ACCEPTED),
    (("-r", "--radiomics"), "0", None, ACCEPTED),
    (("-rp", "--report"), "1", None, ACCEPTED),
    (("-sii", "--stats_include_incomplete"), "0", None, ACCEPTED),
    (("-sa", "--stats_aggregation"), "1", ("mean", "median"), ACCEPTED),
    (("-sx", "--statistics_extra"), "0", None, ACCEPTED),
    (("-cp", "--crop_path"), "1", None, IGNORED),
    (("-bs", "--body_seg"), "0", None, ACCEPTED),
    (("-fs", "--force_split"), "0", None, ACCEPTED),
    (("-ss", "--skip_saving"), "0", None, ACCEPTED),
    (("-ndm", "--no_derived_masks"), "0", None, ACCEPTED),
    (("-v1o", "--v1_order"), "0", None, ACCEPTED),
    (("-rmb", "--remove_small_blobs"), "?", None, ACCEPTED),
    (("-d", "--device"), "1", None, ACCEPTED),
    (("-q", "--quiet"), "0", None, ACCEPTED),
    (("-sp", "--save_probabilities"), "1", None, ACCEPTED),
    (("-v", "--verbose"), "0", None, ACCEPTED),
    (("--debug",), "0", None, IGNORED),
    (("-l", "--license_number"), "1", None, ACCEPTED),
    (("--test",), "1", (0, 1, 3), IGNORED),
    (("-lt", "--list-tasks"), "0", None, ACCEPTED),
    (("-lc", "--list-classes"), "?", None, ACCEPTED),
    (("--version",), "0", None, ACCEPTED),
]
BY_NAME = {names[0]: (names, arity, choices, status) for names, arity, choices, status in OFFICIAL_FLAGS}
VALUES = {"-nr": "4", "-ns": "2", "-t": "project1", "-cp": "/tmp/crop", "--test": "1", "-rp": "r.json",
          "-sp": "p.pkl"}

# Accepted flags whose meaning shows in the request the pipeline gets: extra argv -> expected request fields.
MEANINGS = {
    "-f": (["-f"], {"speed": "fast"}),
    "-ff": (["-ff"], {"speed": "fastest"}),
    "-ta": (["-ta", "lung_vessels"], {"task": "lung_vessels"}),
    "-rs": (["-rs", "liver", "spleen"], {"roi_subset": ("liver", "spleen"), "robust_crop": False}),
    "-rsr": (["-rsr", "liver"], {"roi_subset": ("liver",), "robust_crop": True}),
    "-rc": (["-rc"], {"robust_crop": True}),
    "-ho": (["--high_order_resampling"], {"higher_order_resampling": True}),
    "-s": (["-s"], {"statistics": True}),
    "-sii": (["-sii"], {"stats_include_incomplete": True}),
    "-bs": (["-bs"], {"body_seg": True}),
    "-fs": (["-fs"], {"force_split": True}),
    "-rmb": (["-rmb"], {"remove_small_blobs": 200.0}),
    "-d": (["-d", "cpu"], {"device": "cpu"}),
    "-ms": (["-ms", "big"], {}),
    "-q": (["-q", "-v"], {}),
    "-v": (["-v"], {}),
    "-ml": (["-ml"], {}),
    "-ro": (["-ro", "3"], {"resampling_order": 3}),
    "-sl": (["-f", "-sl"], {"save_lowres": True, "speed": "fast"}),
    "--higher_order_resampling_LEGACY": (["--high_order_resampling_LEGACY"], {"higher_order_resampling_legacy": True}),
    "-sx": (["-sx"], {"statistics_extra": True}),
    "-ss": (["-ss"], {"skip_saving": True, "statistics": False}),
    "-v1o": (["-v1o"], {"v1_order": True}),
}
# Accepted flags checked by their own tests below (outputs, listings, side effects).
CHECKED_ELSEWHERE = {"-i", "-o", "-ot", "-p", "-sa", "-ndm", "-l", "-lt", "-lc", "--version", "-r", "-rp",
                     "-sp"}  # -sp: test_official_options (the official's files) and test_probabilities


# ---------------------------------------------------------------- the table itself


def _official_argparse(source: str) -> dict[tuple[str, ...], tuple[str, Optional[tuple]]]:
    """names -> (arity, literal choices) of every add_argument call in the official CLI's source."""
    found = {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        names = tuple(arg.value for arg in node.args if isinstance(arg, ast.Constant))
        kw = {k.arg: k.value for k in node.keywords}
        action = kw["action"].value if "action" in kw else None
        nargs = kw["nargs"].value if "nargs" in kw else None
        arity = "0" if action in ("store_true", "version") else (nargs or "1")
        choices = tuple(ast.literal_eval(kw["choices"])) if isinstance(kw.get("choices"), ast.List) else None
        found[names] = (arity, choices)
    return found


@pytest.mark.skipif(not OFFICIAL_CLI.is_file(), reason="the official TotalSegmentator is not installed beside")
def test_table_is_the_official_argparse():
    official = _official_argparse(OFFICIAL_CLI.read_text())
    assert official == {names: (arity, choices) for names, arity, choices, _ in OFFICIAL_FLAGS}


@pytest.mark.parametrize("names, arity, choices", [row[:3] for row in OFFICIAL_FLAGS], ids=lambda v: str(v))
def test_every_official_flag_is_registered_with_its_arity(names, arity, choices):
    """Registered under every official name, each name one option, so none is read as a bundle of others."""
    actions = build_actions()
    action = actions[names[0]]
    assert all(actions[name] is action for name in names)
    assert {None: "1", 0: "0"}.get(action.nargs, action.nargs) == arity
    if choices:
        assert tuple(action.choices) == choices


def build_actions():
    return cli.build_parser()._option_string_actions


def test_every_accepted_flag_has_a_meaning_check():
    accepted = {first for first, (_, _, _, status) in BY_NAME.items() if status == ACCEPTED}
    assert accepted == set(MEANINGS) | CHECKED_ELSEWHERE
    assert {f.names for f in cli_options.IGNORED} == {n for n, _, _, s in OFFICIAL_FLAGS if s == IGNORED}
    assert {f.names for f in cli_options.REFUSED} == {n for n, _, _, s in OFFICIAL_FLAGS if s == REFUSED}


# ---------------------------------------------------------------- runs with a stand-in pipeline


@pytest.fixture
def ct(tmp_path) -> Path:
    data = np.full((24, 20, 16), -1000, dtype=np.int16)
    data[4:20, 4:16, 2:14] = 40
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0])), path)
    return path


@pytest.fixture
def runs(monkeypatch) -> list[SegmentationRequest]:
    """pipeline.segment replaced: records the request and returns labels 1 in the middle of the image."""
    seen: list[SegmentationRequest] = []

    def segment(source, options=None, progress=None, should_cancel=None, runner_factory=None,
                probabilities_path=None):
        seen.append(options)
        image = imageio.read_image(source)
        task = get_task(options.task)
        label_map = {k: v for k, v in task.classes.items() if not options.roi_subset or v in options.roi_subset}
        labels = np.zeros(image.shape[:3], np.uint8)
        labels[8:16, 8:12, 4:10] = min(label_map)
        stats = {name: {"volume": 1.0, "intensity": 2.0} for name in label_map.values()} if options.statistics \
            else None
        return pipeline.Result(pipeline.labels_image(labels, image), label_map, stats)

    monkeypatch.setattr(pipeline, "segment", segment)
    return seen


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_plain_run_options(ct, tmp_path, runs, capsys):
    assert run_cli(["-i", str(ct), "-o", str(tmp_path / "seg.nii.gz"), "--ml"], capsys)[0] == 0
    assert runs == [SegmentationRequest(multilabel=True)]  # the official defaults


@pytest.mark.parametrize("flag", sorted(MEANINGS))
def test_accepted_flag_same_meaning(flag, ct, tmp_path, runs, capsys):
    extra, expected = MEANINGS[flag]
    code, err = run_cli(["-i", str(ct), "-o", str(tmp_path / "seg.nii.gz"), "--ml", *extra], capsys)
    assert code == 0, err
    assert "not supported" not in err and "ignoring" not in err
    (options,) = runs
    for name, value in expected.items():
        assert getattr(options, name) == value, name


@pytest.mark.parametrize("argv, speed", [(["-f", "-ff"], "fast"), (["-ff", "-f"], "fast"), ([], "normal")])
def test_fast_wins_over_fastest_as_in_the_official(argv, speed, ct, tmp_path, runs, capsys):
    assert run_cli(["-i", str(ct), "-o", str(tmp_path / "s.nii.gz"), "--ml", *argv], capsys)[0] == 0
    assert runs[0].speed == speed


def test_roi_subset_robust_replaces_roi_subset(ct, tmp_path, runs, capsys):
    argv = ["-i", str(ct), "-o", str(tmp_path / "s.nii.gz"), "--ml", "-rs", "liver", "-rsr", "spleen"]
    assert run_cli(argv, capsys)[0] == 0
    assert (runs[0].roi_subset, runs[0].robust_crop) == (("spleen",), True)


def test_stats_aggregation(ct, tmp_path, runs, capsys):
    """-sa median reaches the pipeline."""
    code, err = run_cli(["-i", str(ct), "-o", str(tmp_path / "s.nii.gz"), "--ml", "-s", "-sa", "median"], capsys)
    assert code == 0 and runs[0].stats_aggregation == "median", err
    assert run_cli(["-i", str(ct), "-o", str(tmp_path / "t.nii.gz"), "--ml", "-sa", "mean"], capsys)[0] == 0


@pytest.mark.parametrize("flag", [n[0] for n, _, _, s in OFFICIAL_FLAGS if s == IGNORED])
def test_ignored_flag_consumes_its_value_and_says_so_once(flag, ct, tmp_path, runs, capsys):
    value = [VALUES[flag]] if flag in VALUES else []
    argv = ["-i", str(ct), "-o", str(tmp_path / "seg.nii.gz"), flag, *value, "--ml", flag, *value]
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "ignoring" in line]
    assert len(notes) == 1 and f"{flag} (" in notes[0]
    assert runs == [SegmentationRequest(multilabel=True)]


def test_totalsegmentator_refuses_no_official_flag():
    assert cli_options.REFUSED == () and not [n for n, _, _, s in OFFICIAL_FLAGS if s == REFUSED]


@pytest.mark.parametrize("flag", cli_options.COHORT_REFUSED, ids=lambda flag: flag.names[0])
def test_a_cohort_refuses_a_flag_it_cannot_honour_by_name(flag, ct, tmp_path, runs, capsys):
    """totalseg_batch takes the single-case flags; one that names one file for one case is refused, and says so."""
    from totalseg_batch import cli as batch_cli

    for typed in flag.names:
        with pytest.raises(SystemExit) as exit_:
            batch_cli.main(["-i", str(ct), "-o", str(tmp_path / "out"), typed, *([VALUES[flag.names[0]]]
                                                                              if flag.takes_value else [])])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith(f"ERROR: option {flag.label} is not supported by this "
                                                        "implementation: ")
        assert "TotalSegmentator -sp" in err and len(err.strip().splitlines()) == 1
    assert not runs and not (tmp_path / "out").exists()


def test_ss_is_skip_saving_not_statistics_twice(ct, tmp_path, runs, capsys):
    """Regression: -ss used to parse as -s -s and silently turn statistics on. With -s it writes statistics only."""
    code, err = run_cli(["-i", str(ct), "-o", str(tmp_path / "seg"), "-ss"], capsys)
    assert code == 0 and runs[0].skip_saving and not runs[0].statistics, err
    assert run_cli(["-i", str(ct), "-o", str(tmp_path / "seg"), "-ss", "-s"], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["statistics.json"]


def test_no_abbreviations(ct, tmp_path, runs, capsys):
    code, err = run_cli(["-i", str(ct), "-o", str(tmp_path / "seg"), "--statis"], capsys)
    assert code == 2 and "unrecognized arguments: --statis" in err and not runs


def test_model_size_small_is_for_total_v3_only_as_in_the_official(ct, tmp_path, runs, capsys):
    """The official python_api.py raises "model_size='small' is currently only supported for task 'total_v3'"."""
    code, err = run_cli(["-i", str(ct), "-o", str(tmp_path / "s.nii.gz"), "--ml", "-ms", "small"], capsys)
    assert code == 2 and "model_size 'small' is only available for task 'total_v3'" in err and not runs
    code, err = run_cli(["-i", str(ct), "-o", str(tmp_path / "s.nii.gz"), "-ta", "total_v3", "-ms", "small"], capsys)
    assert code == 0 and runs[0].model_size == "small", err


def test_license_number_is_stored(ct, tmp_path, runs, capsys, monkeypatch):
    keys = []
    monkeypatch.setattr(licensing, "set_license_key", keys.append)
    assert run_cli(["-i", str(ct), "-o", str(tmp_path / "s.nii.gz"), "--ml", "-l", "aca_12345"], capsys)[0] == 0
    assert keys == ["aca_12345"]


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("ot", [["nifti", "seg_nrrd"], ["nifti,seg_nrrd"], ["seg_nrrd", "nifti,nifti"]])
def test_several_output_types_side_by_side(ot, ct, tmp_path, runs, capsys):
    code, err = run_cli(["-i", str(ct), "-o", str(tmp_path / "out"), "-ot", *ot], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "out.nii.gz", "out.seg.nrrd"]
    assert imageio.read_label_map(tmp_path / "out.nii.gz") == get_task("total").classes


def test_several_output_types_into_an_existing_folder(ct, tmp_path, runs, capsys):
    (tmp_path / "out").mkdir()
    assert run_cli(["-i", str(ct), "-o", str(tmp_path / "out"), "-ot", "nifti", "seg_nrrd"], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["total_segmentation.nii.gz",
                                                                   "total_segmentation.seg.nrrd"]


@pytest.mark.parametrize("values, expected", [(["dicom"], ["dicom_rtstruct"]), (["nifti", "dicom_seg"],
                                              ["nifti", "dicom_seg"]), (["nifti,dicom"], ["nifti", "dicom_rtstruct"])])
def test_output_type_values_as_the_official_reads_them(values, expected):
    assert cli.parse(["-i", "ct.nii.gz", "-o", "out", "-ot", *values])[1].output_types == tuple(expected)


def test_bad_output_type_is_an_argument_error(ct, tmp_path, runs, capsys):
    code, err = run_cli(["-i", str(ct), "-o", str(tmp_path / "x"), "-ot", "nifti,png"], capsys)
    assert code == 2 and "-ot/--output_type" in err and "png" in err and not runs


@pytest.mark.parametrize("stats_arg", [[], ["stats/my.json"]])
def test_statistics_path(stats_arg, ct, tmp_path, runs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(["-i", str(ct), "-o", "seg", "-s", *stats_arg, "-rs", "liver"], capsys)[0] == 0
    written = tmp_path / (stats_arg[0] if stats_arg else "seg/statistics.json")
    assert json.loads(written.read_text()) == {"liver": {"volume": 1.0, "intensity": 2.0}}
    assert runs[0].statistics is True


def test_existing_segmentation_output_is_replaced(ct, tmp_path, runs, capsys):
    target = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4)), target)  # an older run's output
    assert run_cli(["-i", str(ct), "-o", str(target), "--ml"], capsys)[0] == 0
    assert nib.load(target).shape == nib.load(ct).shape
    folder = tmp_path / "masks"
    for _ in range(2):  # re-running into the same folder, as scripts do
        assert run_cli(["-i", str(ct), "-o", str(folder), "-rs", "liver"], capsys)[0] == 0
    assert sorted(p.name for p in folder.iterdir()) == ["liver.nii.gz"]


def test_no_overwrite_refuses_an_existing_output(ct, tmp_path, runs, capsys):
    target = tmp_path / "seg.nii.gz"
    assert run_cli(["-i", str(ct), "-o", str(target), "--ml"], capsys)[0] == 0
    before = target.read_bytes()
    code, err = run_cli(["-i", str(ct), "-o", str(target), "--ml", "--no-overwrite", "-rs", "liver"], capsys)
    assert code == 1 and "already exists" in err and target.read_bytes() == before


@pytest.mark.parametrize("content", ["bytes", "ct"])
def test_a_file_that_is_no_segmentation_is_kept(content, ct, tmp_path, runs, capsys):
    target = tmp_path / "mine.nii.gz"
    if content == "bytes":
        target.write_bytes(b"my notes")
    else:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), target)
    before = target.read_bytes()
    code, err = run_cli(["-i", str(ct), "-o", str(target), "--ml"], capsys)
    assert code == 1 and "not a segmentation output" in err and "--overwrite" in err
    assert target.read_bytes() == before and not runs
    assert run_cli(["-i", str(ct), "-o", str(target), "--ml", "--overwrite"], capsys)[0] == 0


def test_the_input_is_never_the_output(ct, runs, capsys):
    code, err = run_cli(["-i", str(ct), "-o", str(ct), "--ml", "--overwrite"], capsys)
    assert code == 1 and "is the input itself" in err and not runs


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == __version__


@pytest.mark.parametrize("ml", [False, True])
def test_preview_beside_the_output(ml, ct, tmp_path, runs, capsys, monkeypatch):
    calls = []
    module = types.ModuleType("totalseg_engine.outputs.preview")
    module.write_preview = lambda image, labels, label_map, path: calls.append((image, labels, label_map, path))
    monkeypatch.setitem(sys.modules, "totalseg_engine.outputs.preview", module)
    out = tmp_path / ("seg.nii.gz" if ml else "seg")
    argv = ["-i", str(ct), "-o", str(out), "-p", "-rs", "liver", *(["--ml"] if ml else [])]
    assert run_cli(argv, capsys)[0] == 0
    ((image, labels, label_map, path),) = calls
    assert path == (tmp_path if ml else out) / "preview_total.png"
    assert image == ct and label_map == {5: "liver"} and labels.shape == nib.load(ct).shape


def _dicom_series(folder: Path, modality: str) -> Path:
    folder.mkdir()
    image = sitk.GetImageFromArray(np.zeros((3, 8, 8), np.int16))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(3):
        piece = image[:, :, z]
        for tag, value in (("0008|0060", modality), ("0020|000e", "1.2.3.4"), ("0020|0013", str(z + 1)),
                           ("0020|0032", f"0\\0\\{z * 2.0}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0028|0030", "1\\1"), ("0008|0018", f"1.2.3.4.{z + 1}")):
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{z}.dcm"))
        writer.Execute(piece)
    return folder


@pytest.mark.parametrize("modality, task, expected", [("MR", "total", "total_mr"), ("CT", "total_mr", "total"),
                                                      ("CT", "total", "total"), ("MR", "lung_vessels", "lung_vessels")])
def test_dicom_modality_switches_total_and_total_mr(modality, task, expected, tmp_path, runs, capsys):
    series = _dicom_series(tmp_path / "series", modality)
    assert imageio.dicom_modality(series) == modality
    code, err = run_cli(["-i", str(series), "-o", str(tmp_path / "s.nii.gz"), "--ml", "-ta", task], capsys)
    assert code == 0, err
    assert runs[0].task == expected
    assert ("WARNING" in err and f"'{expected}' instead" in err) == (task != expected)


# ---------------------------------------------------------------- task body: derived body and skin masks


def _official_body_and_skin(labels: np.ndarray, ct: np.ndarray, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """body and skin as the official package derives them, run in its own environment."""
    folder.mkdir()
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(ct, affine), folder / "ct.nii.gz")
    for label, name in ((1, "body_trunc"), (2, "body_extremities")):
        nib.save(nib.Nifti1Image((labels == label).astype(np.uint8), affine), folder / f"{name}.nii.gz")
    script = ("import sys, nibabel as nib; from pathlib import Path\n"
              "from totalsegmentator.libs import combine_masks\n"
              "from totalsegmentator.postprocessing import extract_skin\n"
              "d = Path(sys.argv[1]); body = combine_masks(d, 'body'); nib.save(body, d / 'body.nii.gz')\n"
              "nib.save(extract_skin(nib.load(d / 'ct.nii.gz'), nib.load(d / 'body.nii.gz')), d / 'skin.nii.gz')\n")
    subprocess.run([str(OFFICIAL_VENV / "bin/python"), "-c", script, str(folder)], check=True, timeout=300)
    return tuple(np.asanyarray(nib.load(folder / f"{n}.nii.gz").dataobj) for n in ("body", "skin"))


@pytest.mark.skipif(not (OFFICIAL_VENV / "bin/python").exists(), reason="the official package is not installed")
def test_body_and_skin_equal_the_official(tmp_path):
    rng = np.random.default_rng(3)
    grid = np.indices((40, 36, 30)).astype(float)
    inside = ((grid[0] - 20) / 15) ** 2 + ((grid[1] - 18) / 13) ** 2 + ((grid[2] - 15) / 12) ** 2 < 1
    labels = np.where(inside, np.where(grid[0] < 28, 1, 2), 0).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.02] = 0  # holes, so erosion and blob removal have work to do
    ct = rng.integers(-400, 400, labels.shape).astype(np.int16)
    ours = body_and_skin(labels, {1: "body_trunc", 2: "body_extremities"}, ct.astype(float))
    theirs = _official_body_and_skin(labels, ct, tmp_path / "official")
    assert ours[1].any() and ours[1].sum() < ours[0].sum()
    for mine, official in zip(ours, theirs):
        np.testing.assert_array_equal(mine, official)


SMALL_3MM = NetworkSize(features=(2, 4, 8), patch_size=(64, 64, 64))


@pytest.fixture
def body_models(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    write_task_models(paths.weights_dir(), "body", "fast", SMALL_3MM, seed=5)


@pytest.mark.parametrize("extra, derived", [([], True), (["-ndm"], False), (["--ml"], False),
                                            (["--no-overwrite"], True)])  # wrote the class files, then refused
def test_task_body_writes_body_and_skin(extra, derived, body_models, data_dir, tmp_path, capsys):
    source = data_dir / "example_ct_sm.nii.gz"
    out = tmp_path / ("seg.nii.gz" if "--ml" in extra else "seg")
    code, err = run_cli(["-i", str(source), "-o", str(out), "-ta", "body", "-f", "-d", "cpu", "--offline", *extra],
                        capsys)
    assert code == 0, err
    if not derived:
        assert not (out.parent / "body.nii.gz").exists() and not (out.parent / "skin.nii.gz").exists()
        assert "--ml" in extra or sorted(p.name for p in out.iterdir()) == ["body_extremities.nii.gz",
                                                                           "body_trunc.nii.gz"]
        return
    masks = {p.name[:-7]: np.asanyarray(nib.load(p).dataobj) for p in out.iterdir()}
    assert sorted(masks) == ["body", "body_extremities", "body_trunc", "skin"]
    np.testing.assert_array_equal(masks["body"], masks["body_trunc"] | masks["body_extremities"])
    labels = masks["body_trunc"] + 2 * masks["body_extremities"]
    expected = body_and_skin(labels, {1: "body_trunc", 2: "body_extremities"}, nib.load(source).get_fdata())
    np.testing.assert_array_equal(masks["skin"], expected[1])
    assert nib.load(out / "skin.nii.gz").header.get_data_dtype() == np.uint8


@pytest.mark.parametrize("no_derived_masks", [False, True])
def test_the_api_writes_body_and_skin_for_task_body_as_the_official_api_does(no_derived_masks, body_models, data_dir,
                                                                             tmp_path):
    """The official totalsegmentator() writes body.nii.gz and skin.nii.gz beside task body's class files (its
    nnunet.py, unless no_derived_masks); ours did not, so a script reading them broke. Same masks as the command."""
    source = data_dir / "example_ct_sm.nii.gz"
    api.totalsegmentator(source, tmp_path / "api", task="body", fast=True, device="cpu", download=False,
                         no_derived_masks=no_derived_masks)
    written = sorted(p.name for p in (tmp_path / "api").iterdir())
    if no_derived_masks:
        assert written == ["body_extremities.nii.gz", "body_trunc.nii.gz"]
        return
    assert written == ["body.nii.gz", "body_extremities.nii.gz", "body_trunc.nii.gz", "skin.nii.gz"]
    assert cli.main(["-i", str(source), "-o", str(tmp_path / "cli"), "-ta", "body", "-f", "-d", "cpu", "-q",
                     "--offline"]) == 0
    for name in ("body", "skin"):
        np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "api" / f"{name}.nii.gz").dataobj),
                                      np.asanyarray(nib.load(tmp_path / "cli" / f"{name}.nii.gz").dataobj))
