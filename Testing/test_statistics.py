"""statistics.json: synthetic expectations and the cross-check against the official output."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from totalseg_engine.core import statistics as st
from totalseg_engine.errors import InvalidInputError
from totalseg_engine.tasks import get_task

CLASSES = {1: "cube", 2: "at_border", 3: "empty", 4: "near_border"}
SPACING = (1.5, 2.0, 3.0)  # 9 mm3 per voxel


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    seg = np.zeros((20, 20, 20), dtype=np.uint8)
    image = np.zeros(seg.shape, dtype=np.int16)
    seg[8:12, 8:12, 8:12] = 1  # 64 voxels
    image[8:12, 8:12, 8:12] = 100
    image[8, 8, 8] = 101  # mean 100 + 1/64
    seg[5:8, 5:8, 17:19] = 2  # reaches slice 17 of 20: within the last three
    image[seg == 2] = -50
    seg[3:6, 10, 10] = 4  # starts at index 3: just outside the border zone
    image[seg == 4] = 7
    return seg, image


def test_volume_and_mean_intensity(scene):
    seg, image = scene
    stats = st.compute_statistics(seg, image, SPACING, CLASSES)
    assert stats["cube"] == {"volume": 64 * 9.0, "intensity": round(100 + 1 / 64, 5)}
    assert stats["near_border"] == {"volume": 27.0, "intensity": 7.0}


def test_masks_touching_the_border_and_empty_masks_report_zero(scene):
    seg, image = scene
    stats = st.compute_statistics(seg, image, SPACING, CLASSES)
    assert stats["at_border"] == {"volume": 0.0, "intensity": 0.0}
    assert stats["empty"] == {"volume": 0.0, "intensity": 0.0}
    included = st.compute_statistics(seg, image, SPACING, CLASSES, exclude_masks_at_border=False)
    assert included["at_border"] == {"volume": 18 * 9.0, "intensity": -50.0}
    assert included["empty"] == {"volume": 0.0, "intensity": 0.0}


def test_border_labels_checks_three_slices_on_every_face():
    seg = np.zeros((10, 10, 10), dtype=np.uint8)
    for label, index in enumerate([(2, 5, 5), (5, 7, 5), (5, 5, 2), (7, 5, 5), (3, 3, 6)], start=1):
        seg[index] = label
    assert st.border_labels(seg, 6).tolist() == [True, True, True, True, True, False]


def test_classes_keep_class_map_order_and_roi_subset_only_filters(scene):
    seg, image = scene
    stats = st.compute_statistics(seg, image, SPACING, CLASSES, roi_subset=["near_border", "cube"])
    assert list(stats) == ["cube", "near_border"]
    assert list(st.compute_statistics(seg, image, SPACING, CLASSES)) == list(CLASSES.values())


def test_float_images_are_truncated_to_int16_like_the_official():
    seg = np.zeros((8, 8, 8), dtype=np.uint8)
    seg[3:5, 3, 3] = 1
    image = np.zeros(seg.shape)
    image[3, 3, 3], image[4, 3, 3] = -1.7, 2.9  # -> -1 and 2
    stats = st.compute_statistics(seg, image, (1, 1, 1), {1: "a"})
    assert stats["a"]["intensity"] == 0.5


def test_median_aggregation(scene):
    seg, image = scene
    image = image.copy()
    image[8:10, 8:12, 8:12] = 0  # half the cube at 0, half at 100 (one voxel at 101 is in the 0 half)
    stats = st.compute_statistics(seg, image, SPACING, CLASSES, metric="median")
    assert stats["cube"]["intensity"] == 50.0
    assert stats["near_border"]["intensity"] == 7.0
    with pytest.raises(InvalidInputError):
        st.compute_statistics(seg, image, SPACING, CLASSES, metric="max")


def test_shape_mismatch_is_refused(scene):
    seg, image = scene
    with pytest.raises(InvalidInputError):
        st.compute_statistics(seg, image[:-1], SPACING, CLASSES)


def test_write_statistics_is_official_json_and_replaces_atomically(tmp_path, scene):
    seg, image = scene
    stats = st.compute_statistics(seg, image, SPACING, CLASSES)
    path = tmp_path / "out" / "statistics.json"
    path.parent.mkdir()
    path.write_text("old")
    st.write_statistics(stats, path)
    assert path.read_text() == json.dumps(stats, indent=4)
    assert json.loads(path.read_text()) == stats
    assert [p.name for p in path.parent.iterdir()] == ["statistics.json"]


def test_reproduces_official_fast_statistics(data_dir, tmp_path):
    """example_seg_fast on example_ct_sm against the official ``--fast --statistics -sii`` output.

    The official computed these on the 3 mm working grid; example_ct_sm already is a 3 mm
    canonical image, so that grid is the input grid and the result is identical to the byte.
    """
    seg = nib.load(data_dir / "example_seg_fast.nii.gz")
    image = nib.load(data_dir / "example_ct_sm.nii.gz")
    official_file = data_dir / "example_seg_fast" / "statistics.json"
    official = json.loads(official_file.read_text())
    ours = st.compute_statistics(
        np.asanyarray(seg.dataobj),
        image.get_fdata(),
        image.header.get_zooms(),
        get_task("total").classes,
        exclude_masks_at_border=False,
    )
    assert list(ours) == list(official)
    for name, reference in official.items():
        assert ours[name]["volume"] == pytest.approx(reference["volume"], rel=0.03), name
        assert ours[name]["intensity"] == pytest.approx(reference["intensity"], abs=2.0), name
    assert ours == official
    st.write_statistics(ours, tmp_path / "statistics.json")
    assert (tmp_path / "statistics.json").read_bytes() == official_file.read_bytes()


def test_border_exclusion_on_real_data(data_dir):
    seg = np.asanyarray(nib.load(data_dir / "example_seg_fast.nii.gz").dataobj)
    image = nib.load(data_dir / "example_ct_sm.nii.gz").get_fdata()
    classes = get_task("total").classes
    excluded = st.compute_statistics(seg, image, (3, 3, 3), classes)
    included = st.compute_statistics(seg, image, (3, 3, 3), classes, exclude_masks_at_border=False)
    touching = st.border_labels(seg, max(classes) + 1)
    for label, name in classes.items():
        expected = {"volume": 0.0, "intensity": 0.0} if touching[label] else included[name]
        assert excluded[name] == expected, name
    assert touching.sum() > 0
