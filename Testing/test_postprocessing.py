"""Exact expectations for the postprocessing rules on small synthetic label maps."""

from __future__ import annotations

import numpy as np
import pytest
from totalseg_engine.core import postprocessing as pp
from totalseg_engine.errors import InvalidInputError, UnknownTaskError
from totalseg_engine.tasks import get_task

ISO_1MM = (1.0, 1.0, 1.0)
VERTEBRAE = get_task("vertebrae_pp").classes  # 1 = C1 ... 24 = L5


def volume(shape=(20, 20, 20)) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def put_line(data: np.ndarray, start: tuple[int, int, int], length: int, label: int) -> None:
    """A straight run of ``length`` voxels along x: one component of known size."""
    x, y, z = start
    data[x : x + length, y, z] = label


def sizes_of(data: np.ndarray, label: int) -> list[int]:
    from scipy import ndimage

    components, count = ndimage.label(data == label)
    return sorted(int(n) for n in np.bincount(components.ravel())[1:])


# --- keep_largest_blob / remove_small_blobs -----------------------------------------------------


def test_keep_largest_blob_keeps_only_the_biggest_component_of_each_label():
    data = volume()
    put_line(data, (0, 0, 0), 5, 1)
    put_line(data, (0, 5, 5), 9, 1)
    put_line(data, (0, 10, 10), 3, 2)
    put_line(data, (0, 15, 15), 4, 2)
    before = data.copy()
    out = pp.keep_largest_blob(data, [1])
    assert sizes_of(out, 1) == [9]
    assert sizes_of(out, 2) == [3, 4]  # label 2 not asked for
    assert np.array_equal(data, before)  # input untouched
    assert out.dtype == np.uint8


def test_keep_largest_blob_tie_keeps_the_first_component_in_scan_order():
    data = volume()
    put_line(data, (0, 12, 3), 4, 1)
    put_line(data, (0, 2, 7), 4, 1)  # same size, earlier in x-y-z raster order (smaller y)
    out = pp.keep_largest_blob(data, [1])
    assert out[0, 2, 7] == 1 and out[0, 12, 3] == 0


def test_components_are_six_connected():
    data = volume()
    data[5, 5, 5] = data[6, 6, 5] = data[7, 7, 7] = 1  # diagonal neighbours only
    data[10:14, 10, 10] = 1
    out = pp.keep_largest_blob(data, [1])
    assert int(out.sum()) == 4 and out[5, 5, 5] == 0


def test_remove_small_blobs_interval_is_open_below_closed_above():
    data = volume()
    put_line(data, (0, 0, 0), 3, 1)  # == min -> removed
    put_line(data, (0, 4, 4), 4, 1)  # kept
    put_line(data, (0, 8, 8), 10, 1)  # == max -> kept
    put_line(data, (0, 12, 12), 11, 1)  # > max -> removed
    put_line(data, (0, 16, 16), 2, 2)  # other label untouched
    out = pp.remove_small_blobs(data, [1], min_voxels=3, max_voxels=10)
    assert sizes_of(out, 1) == [4, 10]
    assert sizes_of(out, 2) == [2]


def test_remove_small_blobs_threshold_in_mm3_uses_voxel_volume():
    data = volume()
    put_line(data, (0, 0, 0), 7, 5)  # 7 * 27 = 189 mm3 <= 200
    put_line(data, (0, 4, 4), 8, 5)  # 8 * 27 = 216 mm3
    out = pp.postprocess(data, "total", (3.0, 3.0, 3.0), remove_small_blobs_mm3=200)
    assert sizes_of(out, 5) == [8]
    assert pp.mm3_to_voxels(200, (3.0, 3.0, 3.0)) == pytest.approx(200 / 27, rel=1e-6)


def test_postprocess_without_small_blob_removal_keeps_everything_for_plain_tasks():
    data = volume()
    put_line(data, (0, 0, 0), 1, 5)
    assert np.array_equal(pp.postprocess(data, "total", ISO_1MM), data)


def test_postprocess_rejects_non_positive_blob_threshold_and_unknown_task():
    with pytest.raises(InvalidInputError):
        pp.postprocess(volume(), "total", ISO_1MM, remove_small_blobs_mm3=-1)
    with pytest.raises(UnknownTaskError):
        pp.postprocess(volume(), "no_such_task", ISO_1MM)


# --- auxiliary labels and the body task ---------------------------------------------------------


def test_auxiliary_labels_are_removed():
    task = get_task("appendicular_bones")
    data = volume((4, 4, 4))
    data.flat[:16] = np.arange(16)
    out = pp.remove_auxiliary_labels(data, task)
    kept = set(np.unique(out)) - {0}
    assert kept == set(range(1, 16)) - set(task.auxiliary_labels)
    assert set(task.auxiliary_labels) == {12, 13, 14, 15}
    assert np.array_equal(pp.postprocess(data, "appendicular_bones", ISO_1MM), out)


def test_body_rules_keep_largest_trunc_and_drop_extremities_below_50000_mm3():
    # 10 mm voxels: 1000 mm3 each, so 50000 mm3 is 50 voxels.
    data = volume((60, 10, 10))
    put_line(data, (0, 0, 0), 30, 1)
    put_line(data, (0, 2, 2), 40, 1)
    put_line(data, (0, 4, 4), 50, 2)  # exactly 50000 mm3 -> removed
    put_line(data, (0, 6, 6), 51, 2)
    out = pp.postprocess(data, "body", (10.0, 10.0, 10.0))
    assert sizes_of(out, 1) == [40]
    assert sizes_of(out, 2) == [51]


def test_task_rules_table_covers_body_and_vertebrae_tasks_only():
    assert set(pp.TASK_RULES) == {"body", "vertebrae_pp", "vertebrae_pp_refined"}
    data = volume()
    put_line(data, (0, 0, 0), 3, 1)
    put_line(data, (0, 5, 5), 4, 1)
    assert np.array_equal(pp.postprocess(data, "body_mr", ISO_1MM), data)  # rules are for "body" only


# --- vertebrae_pp -------------------------------------------------------------------------------


def test_ellipsoid_kernel_of_3mm_at_1mm_is_the_digital_ball():
    kernel = pp._ellipsoid(ISO_1MM, 3)
    assert kernel.shape == (7, 7, 7) and int(kernel.sum()) == 123
    anisotropic = pp._ellipsoid((1.0, 1.0, 3.0), 3)
    assert anisotropic.shape == (7, 7, 3)


def test_dilation_only_when_labels_do_not_touch():
    data = volume()
    data[10, 10, 10] = 5
    out = pp.postprocess_vertebrae_pp(data, VERTEBRAE, ISO_1MM)
    assert int((out == 5).sum()) == 123


def test_dilation_grows_into_background_only_and_lower_labels_first():
    data = volume((20, 20, 20))
    data[5, 10, 10] = 3
    data[9, 10, 10] = 4  # 4 voxels apart: the balls overlap between them
    out = pp.dilate_labels(data, [3, 4], ISO_1MM, 3)
    assert out[5, 10, 10] == 3 and out[9, 10, 10] == 4
    assert out[7, 10, 10] == 3  # contested voxel goes to the lower label
    assert out[8, 10, 10] == 3
    assert int((out == 3).sum()) == 123


def bodies(labels_bottom_up: list[int], leak_into_next: bool = True, shape=(12, 12, 40)) -> np.ndarray:
    """Vertebral bodies of 5x5x4 voxels stacked along z one slice apart; optionally one voxel
    of each body's top face carries the next body's label, so labels touch (a leak)."""
    data = np.zeros(shape, dtype=np.uint8)
    for i, label in enumerate(labels_bottom_up):
        z = 2 + 5 * i
        data[4:9, 4:9, z : z + 4] = label
        if leak_into_next and i + 1 < len(labels_bottom_up):
            data[6, 6, z + 3] = labels_bottom_up[i + 1]
    return data


def test_touching_labels_are_recounted_from_the_lowest_present_label_upwards():
    data = bodies([22, 22, 21])  # the model repeated L3 and leaked labels between bodies
    out = pp.postprocess_vertebrae_pp(data, VERTEBRAE, ISO_1MM, dilation_mm=0)
    assert [out[6, 6, 3 + 5 * i] for i in range(3)] == [22, 21, 20]
    assert int((out > 0).sum()) == 3 * 100


def test_head_scans_with_c1_and_without_l5_are_counted_from_the_top():
    data = bodies([3, 3, 1])
    out = pp.postprocess_vertebrae_pp(data, VERTEBRAE, ISO_1MM, dilation_mm=0)
    assert [out[6, 6, 3 + 5 * i] for i in range(3)] == [3, 2, 1]


def test_components_below_100_mm3_are_dropped_when_relabelling():
    data = bodies([24, 23])
    data[0, 0, 0] = 7  # a 1 mm3 speck
    out = pp.postprocess_vertebrae_pp(data, VERTEBRAE, ISO_1MM, dilation_mm=0)
    assert out[0, 0, 0] == 0
    assert [out[6, 6, 3], out[6, 6, 8]] == [24, 23]


def test_only_small_components_give_an_empty_result():
    data = volume()
    data[5, 5, 5], data[5, 5, 6] = 3, 4
    assert not pp.postprocess_vertebrae_pp(data, VERTEBRAE, ISO_1MM).any()


def test_refinement_grows_labels_then_clips_to_vertebral_bodies():
    data = volume()
    data[10, 10, 10] = 5
    body = volume()
    body[8:13, 8:13, 8:13] = 1
    body[10, 10, 12] = 2  # intervertebral disc, not a body
    out = pp.refine_vertebrae_pp(data, body, VERTEBRAE, ISO_1MM)
    assert int((out == 5).sum()) == 33 - 1  # 2 mm ball (33 voxels) inside the box, minus the disc voxel
    assert out[10, 10, 12] == 0
    with pytest.raises(InvalidInputError):
        pp.refine_vertebrae_pp(data, body[:-1], VERTEBRAE, ISO_1MM)


# --- remove outside of mask ---------------------------------------------------------------------


def test_remove_outside_of_mask_keeps_face_neighbours_of_the_dilated_mask():
    data = np.full((9, 9, 9), 7, dtype=np.uint8)
    mask = np.zeros((9, 9, 9), dtype=bool)
    mask[4, 4, 4] = True
    out = pp.remove_outside_of_mask(data, mask, 1)
    assert int((out > 0).sum()) == 7
    assert int((pp.remove_outside_of_mask(data, mask, 2) > 0).sum()) == 25


def test_remove_outside_of_mask_edge_cases_follow_scipy_iterations():
    data = np.full((5, 5, 5), 3, dtype=np.uint8)
    mask = np.zeros((5, 5, 5), dtype=np.uint8)
    assert not pp.remove_outside_of_mask(data, mask, 2).any()  # empty mask removes everything
    mask[0, 0, 0] = 1
    assert np.array_equal(pp.remove_outside_of_mask(data, mask, 0), data)  # 0 = grow until stable


def test_dilation_voxels_truncates_mm_over_mean_spacing():
    assert pp.dilation_voxels(10, (1.5, 1.5, 1.5)) == 6
    assert pp.dilation_voxels(10, (0.7, 0.7, 2.0)) == 8  # 10 / 1.133
    assert pp.dilation_voxels(1, (3.0, 3.0, 3.0)) == 0
