"""The real pipeline end to end: small nnU-Net models in the release layout, real CT/MR images."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from model_factory import NetworkSize, write_task_models
from totalseg_engine import api, geometry, imageio, terminology
from totalseg_engine.core import pipeline
from totalseg_engine.inference.prediction import ModelRunner
from totalseg_engine.request import SegmentationRequest
from totalseg_engine.tasks import get_task
from totalseg_engine.weights import paths

# Few features, large patches: real architecture, few tiles, seconds per model.
PART = NetworkSize(features=(2, 4, 8), patch_size=(64, 64, 64))


@pytest.fixture(scope="module")
def weights_home(tmp_path_factory):
    """A TotalSegmentator home with every model these tests run, in the release layout."""
    home = tmp_path_factory.mktemp("totalseg_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("TOTALSEG_HOME_DIR", str(home))
    mp.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    for task, speed in [("total", "fast"), ("total", "fastest"), ("total", "normal"), ("total_mr", "fast"),
                        ("total_mr", "normal")]:
        write_task_models(paths.weights_dir(), task, speed, PART, seed=11)
    yield home
    mp.undo()


class Recording:
    """Runner factory loading the cached models and recording the order they are used in."""

    def __init__(self) -> None:
        self.loaded: list[int] = []

    def __call__(self, spec, step):
        from totalseg_engine.weights import cache as weights

        self.loaded.append(spec.dataset_id)
        return ModelRunner(weights.model_dir(spec), spec.folds, torch.device("cpu"), step)


def run(image, **options):
    recording = Recording()
    result = pipeline.segment(image, SegmentationRequest(device="cpu", **options), runner_factory=recording)
    return result, recording.loaded


def manual_prediction(image: nib.Nifti1Image, task_name: str, speed: str) -> np.ndarray:
    """The pipeline's steps spelled out: RAS, resample, every part, merge by name, back to the grid."""
    from totalseg_engine.weights import cache as weights

    task = get_task(task_name)
    mode = task.mode(speed)
    working = nib.Nifti1Image(image.get_fdata(), image.affine)
    canonical = geometry.to_canonical(working)
    resampled = geometry.resample_image(canonical, mode.spacing)
    merged = np.zeros(resampled.shape, dtype=np.uint8)
    for spec in mode.models:
        runner = ModelRunner(weights.model_dir(spec), [0], torch.device("cpu"), 0.8)
        part = runner.predict([np.asanyarray(resampled.dataobj)], geometry.header_spacing(resampled))
        names = spec.classes or task.classes
        for label, name in names.items():
            merged[part == label] = task.label_of(name)
    back = geometry.resample_labels_to_shape(merged, canonical.shape)
    return geometry.from_canonical(back, canonical.affine, image.affine)


def test_fast_total_on_real_ct(weights_home, data_dir):
    ct = nib.load(data_dir / "example_ct_sm.nii.gz")
    result, loaded = run(ct, task="total", speed="fast")
    assert loaded == [297]
    assert result.image.shape == ct.shape
    np.testing.assert_array_equal(result.image.affine, ct.affine)
    present = set(np.unique(result.data)) - {0}
    assert len(present) > 5 and present <= set(get_task("total").classes)
    np.testing.assert_array_equal(result.data, manual_prediction(ct, "total", "fast"))


def test_normal_total_runs_five_parts_and_merges_by_name(weights_home, data_dir):
    ct = nib.load(data_dir / "example_ct_sm.nii.gz")
    result, loaded = run(ct, task="total", speed="normal")
    assert loaded == [291, 292, 293, 294, 295]
    np.testing.assert_array_equal(result.data, manual_prediction(ct, "total", "normal"))


def test_roi_subset_crops_with_rough_model_then_runs_needed_parts(weights_home, data_dir):
    ct = nib.load(data_dir / "example_ct_sm.nii.gz")
    rough, _ = run(ct, task="total", speed="fastest")
    total = get_task("total")
    organs = set(total.mode().models[0].classes.values())
    counts = np.bincount(rough.data.ravel(), minlength=256)
    wanted = [name for label, name in total.classes.items() if counts[label] > 50 and name in organs][:2]
    assert wanted, "the rough model predicted no organ class; pick another seed"
    result, loaded = run(ct, task="total", speed="normal", roi_subset=wanted)
    assert loaded == [298, 291]  # the 6 mm crop model, then only the organ part
    assert set(np.unique(result.data)) - {0} <= {total.label_of(n) for n in wanted}
    crop = np.isin(rough.data, [total.label_of(n) for n in wanted])
    box = geometry.bbox_of_mask(crop, geometry.margin_in_voxels((20, 20, 20), ct))
    outside = np.ones(ct.shape, bool)
    outside[tuple(slice(lo, hi) for lo, hi in box)] = False
    assert not result.data[outside].any()


def test_total_mr_fast_and_normal(weights_home, data_dir):
    mr = nib.load(data_dir / "example_mr_sm.nii.gz")
    fast, loaded_fast = run(mr, task="total_mr", speed="fast")
    normal, loaded_normal = run(mr, task="total_mr", speed="normal")
    assert loaded_fast == [852] and loaded_normal == [850, 851]
    for result in (fast, normal):
        assert result.image.shape == mr.shape
        np.testing.assert_array_equal(result.image.affine, mr.affine)
        assert set(np.unique(result.data)) - {0} <= set(get_task("total_mr").classes)
    np.testing.assert_array_equal(normal.data, manual_prediction(mr, "total_mr", "normal"))


def test_dicom_input_comes_back_on_the_series_grid(weights_home, data_dir):
    series = data_dir / "example_ct_dicom"
    result, _ = run(series, task="total", speed="fast")
    source = imageio.read_image(series)
    assert result.image.shape == source.shape
    np.testing.assert_allclose(result.image.affine, source.affine)
    official = nib.load(data_dir / "example_seg_dicom.nii.gz")
    mapped = imageio.reorient_to_grid(result.image, official)  # official grid is LAS, ours LPS
    assert mapped.shape == official.shape


def test_force_split_uses_three_slabs_and_keeps_the_grid(weights_home, data_dir):
    ct = nib.load(data_dir / "example_ct.nii.gz")
    result, loaded = run(ct, task="total", speed="fast", force_split=True)
    assert loaded == [297]
    assert result.image.shape == ct.shape
    assert len(np.unique(result.data)) > 5


def test_statistics_and_every_output_format(weights_home, data_dir, tmp_path):
    import slicerio

    ct_path = data_dir / "example_ct_sm.nii.gz"
    image, returned_stats = api.totalsegmentator(ct_path, tmp_path / "seg.nii.gz", ml=True, task="total",
                                                 fast=True, statistics=True, device="cpu")  # as the official
    labels = np.asanyarray(image.dataobj)
    assert imageio.read_label_map(tmp_path / "seg.nii.gz") == get_task("total").classes
    stats = json.loads((tmp_path / "statistics.json").read_text())
    assert list(stats) == list(get_task("total").classes.values()) and list(returned_stats) == list(stats)
    api.totalsegmentator(ct_path, tmp_path / "masks", task="total", fast=True, device="cpu")
    liver = nib.load(tmp_path / "masks" / "liver.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(liver.dataobj), (labels == 5).astype(np.uint8))
    assert len(list((tmp_path / "masks").glob("*.nii.gz"))) == len(get_task("total").classes)
    api.totalsegmentator(ct_path, tmp_path / "seg.seg.nrrd", task="total", fast=True, device="cpu",
                         output_type="seg_nrrd")
    seg = slicerio.read_segmentation(str(tmp_path / "seg.seg.nrrd"))
    names = {s["name"] for s in seg["segments"]}
    assert names == {terminology.entry(get_task("total").classes[int(v)]).display_name for v in np.unique(labels) if v}


def test_existing_output_is_kept(weights_home, data_dir, tmp_path):
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="overwrite"):
        api.totalsegmentator(data_dir / "example_ct_sm.nii.gz", target, ml=True, fast=True, device="cpu")
    assert target.read_bytes() == b"user data"
