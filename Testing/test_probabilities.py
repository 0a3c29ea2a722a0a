"""--save_probabilities: nnU-Net's probabilities of the task's model, in nnU-Net's files, written as the official does.

The files themselves are compared with the official tool's on the same weights in test_official_options.py (where
the official package is installed beside the checkout); these tests hold without it: what the files contain on
release-shaped weights, which model and slab a multi-model or split run keeps, and the overwrite rules.
"""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
from test_official_options import home, ours, weights_home  # noqa: F401 (fixtures: release-shaped weights)
from totalseg_engine import SegmentationRequest, geometry, get_task
from totalseg_engine.cli import main as cli
from totalseg_engine.core import model_runs
from totalseg_engine.errors import InvalidOptionError
from totalseg_engine.inference import probabilities


@pytest.mark.usefixtures("home")
def test_the_files_hold_the_models_probabilities_on_its_grid_and_the_labels_are_their_argmax(data_dir,
                                                                                          tmp_path, capsys):
    source = data_dir / "example_mr_sm.nii.gz"  # stored LPS: the model's grid is the image turned to RAS
    ours(["-i", str(source), "-o", str(tmp_path / "seg.nii.gz"), "--ml", "-f", "-ta", "total",
         "-sp", str(tmp_path / "probs.npz")], capsys)
    values, properties = probabilities.load_probabilities(tmp_path / "probs.npz")
    classes = len(get_task("total").classes) + 1
    image = nib.load(source)
    assert values.shape == (classes, *image.shape[::-1]) and values.dtype == np.float32  # 3 mm: no resampling
    np.testing.assert_allclose(values.sum(axis=0), 1.0, atol=1e-5)
    assert list(properties) == ["nibabel_stuff", "spacing", "shape_before_cropping", "bbox_used_for_cropping",
                                "shape_after_cropping_and_before_resampling"]
    canonical = nib.as_closest_canonical(image)
    assert np.allclose(properties["nibabel_stuff"]["original_affine"], canonical.affine, atol=1e-4)
    assert properties["spacing"] == [3.0, 3.0, 3.0]
    labels = np.asanyarray(nib.load(tmp_path / "seg.nii.gz").dataobj)  # on the input's grid, as written
    on_model_grid = np.asanyarray(nib.as_closest_canonical(nib.Nifti1Image(labels, image.affine)).dataobj)
    argmax = geometry.from_nnunet(values.argmax(axis=0))
    kept = on_model_grid != 0  # the task's postprocessing then removes some labels (never changes one)
    assert kept.sum() > 1000 and np.unique(on_model_grid).size > 3
    np.testing.assert_array_equal(on_model_grid[kept], argmax[kept])


@pytest.mark.usefixtures("home")
def test_the_labels_with_probabilities_equal_those_without(data_dir, tmp_path, capsys):
    """Labels from nnU-Net's probabilities (the official's -sp path) and from our CPU path agree on these weights."""
    source = data_dir / "example_ct_sm.nii.gz"
    ours(["-i", str(source), "-o", str(tmp_path / "a.nii.gz"), "--ml", "-f"], capsys)
    ours(["-i", str(source), "-o", str(tmp_path / "b.nii.gz"), "--ml", "-f", "-sp", str(tmp_path / "p.npz")], capsys)
    np.testing.assert_array_equal(*(np.asanyarray(nib.load(tmp_path / n).dataobj) for n in ("a.nii.gz", "b.nii.gz")))


@pytest.mark.usefixtures("home")
def test_a_file_that_is_not_ours_is_kept_and_a_pkl_name_is_refused_before_any_work(data_dir, tmp_path,
                                                                                  capsys):
    (tmp_path / "notes.npz").write_bytes(b"my notes")
    argv = ["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "seg.nii.gz"), "--ml", "-f",
            "-d", "cpu", "--offline", "-q"]
    assert cli.main([*argv, "-sp", str(tmp_path / "notes.npz")]) == 1
    assert "not a probabilities output" in capsys.readouterr().err
    assert cli.main([*argv, "-sp", str(tmp_path / "probs.pkl")]) == 1
    assert "probs.npz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.npz"]  # nothing computed, nothing written
    assert cli.main([*argv, "-sp", str(tmp_path / "notes.npz"), "--overwrite"]) == 0
    assert probabilities.load_probabilities(tmp_path / "notes.npz")[0].ndim == 4
    assert cli.main([*argv, "-sp", str(tmp_path / "notes.npz"), "--overwrite"]) == 0  # its own output: replaced
    assert cli.main([*argv, "-sp", str(tmp_path / "notes.npz")]) == 0
    assert cli.main([*argv, "-sp", str(tmp_path / "notes.npz"), "--no-overwrite"]) == 1


@pytest.mark.usefixtures("home")
def test_the_api_takes_a_string_path(data_dir, tmp_path):
    from totalseg_engine.api import totalsegmentator

    totalsegmentator(data_dir / "example_ct_sm.nii.gz", None, fast=True, device="cpu",
                     save_probabilities=str(tmp_path / "probs"))
    assert probabilities.load_probabilities(tmp_path / "probs")[0].ndim == 4  # the name as given, as the official
    assert (tmp_path / "probs.pkl").is_file()


# ---------------------------------------------------------------- which model and slab: stand-in runners


class RecordingRunner:
    """Labels 1 everywhere; probabilities whose values say which model and which slab (z length) made them.

    The signature is the real runners' (:meth:`ModelRunner.predict_with_probabilities`)."""

    def __init__(self, dataset_id: int) -> None:
        self.dataset_id = dataset_id

    def predict(self, channels, spacing_xyz, on_tile=None):
        raise AssertionError("with --save_probabilities every slab goes through the probabilities")

    def predict_with_probabilities(self, channels, spacing_xyz, affine, on_tile=None):
        shape = channels[0].shape
        values = np.full((2, *shape[::-1]), self.dataset_id, dtype=np.float32)
        return np.ones(shape, np.uint8), values, {"slab_depth": shape[2], "model": self.dataset_id}


def test_a_multi_model_task_keeps_the_last_models_first_slab(tmp_path):
    task = get_task("total")
    mode = task.mode("normal")
    assert len(mode.models) == 5
    request = SegmentationRequest(force_split=True)
    run_state = model_runs.ModelRuns(request, lambda event: None, lambda: False,
                                     lambda spec, step: RecordingRunner(spec.dataset_id))
    target = probabilities.ProbabilityTarget(tmp_path / "p.npz", np.eye(4))
    data = np.zeros((8, 8, 90), np.float32)
    model_runs.run_models(run_state, task, mode, data, np.ones(3), None, True, target)
    values, properties = probabilities.load_probabilities(tmp_path / "p.npz")
    plan = geometry.split_plan(data.shape, True, True)
    first = plan.slabs(data.shape[2])[0]
    assert properties == {"slab_depth": first.stop - first.start, "model": mode.models[-1].dataset_id}
    assert values.shape == (2, first.stop, 8, 8) and np.all(values == mode.models[-1].dataset_id)
    assert pickle.loads((tmp_path / "p.pkl").read_bytes()) == properties


def test_a_runner_without_probabilities_is_named(tmp_path):
    from stand_ins import intensity_factory

    run_state = model_runs.ModelRuns(SegmentationRequest(), lambda event: None, lambda: False, intensity_factory())
    task = get_task("liver_vessels")
    with pytest.raises(Exception, match="cannot return class probabilities"):
        model_runs.run_models(run_state, task, task.mode(), np.zeros((8, 8, 8), np.float32), np.ones(3), None, False,
                              probabilities.ProbabilityTarget(tmp_path / "p.npz", np.eye(4)))
    assert not (tmp_path / "p.npz").exists()


def test_reader_properties_are_what_nnunets_reader_records_of_the_saved_file(tmp_path):
    """The official writes the model's input with nibabel and nnU-Net's NibabelIOWithReorient reads it back."""
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

    affine = np.array([[1.5, 0.01, 0, -180.123456789], [0, 1.5, 0, 11.3], [0, 0, 1.5, 94.7], [0, 0, 0, 1]])
    path = tmp_path / "s01_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), affine), path)
    _, read = NibabelIOWithReorient().read_images([str(path)])
    ours = probabilities.reader_properties(affine, (5, 6, 7))
    for key in ("original_affine", "reoriented_affine"):
        np.testing.assert_array_equal(ours[key], read["nibabel_stuff"][key])


def test_check_target_refuses_a_folder(tmp_path):
    (tmp_path / "probs.npz").mkdir()
    with pytest.raises(Exception, match="folder|exists"):
        probabilities.check_target(tmp_path / "probs.npz", "always")
    with pytest.raises(InvalidOptionError):
        probabilities.check_target(tmp_path / "x.pkl", "always")

