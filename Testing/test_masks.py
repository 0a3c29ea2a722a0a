"""Combine groups (totalseg_combine_masks) on synthetic maps, class files and example_seg."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from totalseg_engine.cli import masks as combine_masks_cli
from totalseg_engine.core import masks
from totalseg_engine.errors import InvalidInputError, UnknownTaskError
from totalseg_engine.tasks import get_task

TOTAL = get_task("total").classes
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def test_groups_match_the_official_lists():
    assert masks.GROUPS["lung"] == (
        "lung_upper_lobe_left",
        "lung_lower_lobe_left",
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
    )
    assert masks.GROUPS["lung_left"] + masks.GROUPS["lung_right"] == masks.GROUPS["lung"]
    assert masks.GROUPS["vertebrae"][:3] == ("sacrum", "vertebrae_S1", "vertebrae_L5")
    assert masks.GROUPS["vertebrae"][-1] == "vertebrae_C1" and len(masks.GROUPS["vertebrae"]) == 26
    assert masks.GROUPS["ribs"][0] == "rib_left_1" and masks.GROUPS["ribs"][-1] == "rib_right_12"
    assert len(masks.GROUPS["ribs"]) == 24
    assert masks.GROUPS["vertebrae_ribs"] == masks.GROUPS["vertebrae"] + masks.GROUPS["ribs"]
    assert masks.GROUPS["pelvis"] == ("femur_left", "femur_right", "hip_left", "hip_right")
    assert masks.GROUPS["body"] == ("body_trunc", "body_extremities")
    assert masks.GROUPS["heart"] == ("heart",)


def test_every_group_names_real_classes():
    known = set(TOTAL.values()) | set(get_task("body").classes.values())
    for group, names in masks.GROUPS.items():
        assert set(names) <= known, group


def test_combine_is_the_union_of_the_group_labels():
    class_map = {1: "hip_left", 2: "liver", 3: "femur_right"}
    seg = np.array([[[0, 1, 2, 3]]], dtype=np.uint8)
    with pytest.raises(InvalidInputError, match="femur_left"):
        masks.combine(seg, "pelvis", class_map)
    out = masks.combine(seg, ["hip_left", "femur_right"], class_map)
    assert out.dtype == np.uint8 and out.tolist() == [[[0, 1, 0, 1]]]


def test_unknown_group_lists_the_valid_ones():
    with pytest.raises(UnknownTaskError) as err:
        masks.group_classes("lungs")
    assert "lung" in str(err.value) and "vertebrae_ribs" in str(err.value)


def write_class_files(folder, seg: np.ndarray, class_map) -> None:
    for label, name in class_map.items():
        nib.save(nib.Nifti1Image((seg == label).astype(np.uint8), AFFINE), folder / f"{name}.nii.gz")


def test_combine_files_from_an_output_folder(tmp_path):
    class_map = {1: "lung_upper_lobe_left", 2: "lung_lower_lobe_left", 3: "liver"}
    seg = np.zeros((4, 4, 4), dtype=np.uint8)
    seg[0], seg[1], seg[2] = 1, 2, 3
    write_class_files(tmp_path, seg, class_map)
    image = masks.combine_files(tmp_path, "lung_left")
    assert np.array_equal(image.affine, AFFINE)
    assert np.array_equal(np.asanyarray(image.dataobj), (seg == 1) | (seg == 2))
    with pytest.raises(InvalidInputError, match="lung_middle_lobe_right.nii.gz"):
        masks.combine_files(tmp_path, "lung")


@pytest.fixture(scope="module")
def example_seg(data_dir):
    return nib.load(data_dir / "example_seg.nii.gz")


def test_combine_on_example_seg(example_seg):
    seg = np.asanyarray(example_seg.dataobj)
    for group in ("lung", "vertebrae", "ribs", "vertebrae_ribs", "pelvis"):
        labels = [label for label, name in TOTAL.items() if name in masks.GROUPS[group]]
        expected = np.isin(seg, labels)
        assert np.array_equal(masks.combine(seg, group, TOTAL), expected), group
    assert masks.combine(seg, "lung", TOTAL).sum() > 0
    assert masks.combine(seg, "vertebrae_ribs", TOTAL).sum() == (
        masks.combine(seg, "vertebrae", TOTAL).sum() + masks.combine(seg, "ribs", TOTAL).sum()
    )


def test_cli_on_multilabel_file_and_folder_agree(example_seg, data_dir, tmp_path):
    seg = np.asanyarray(example_seg.dataobj)
    write_class_files(tmp_path, seg, {k: v for k, v in TOTAL.items() if v in masks.GROUPS["ribs"]})
    from_file, from_dir = tmp_path / "out" / "ribs_ml.nii.gz", tmp_path / "ribs_dir.nii.gz"
    assert (
        combine_masks_cli.combine_main(["-i", str(data_dir / "example_seg.nii.gz"), "-o", str(from_file), "-m", "ribs"])
        == 0
    )
    assert combine_masks_cli.combine_main(["-i", str(tmp_path), "-o", str(from_dir), "--masks", "ribs"]) == 0
    written = nib.load(from_file)
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(written.affine, example_seg.affine)
    assert np.array_equal(np.asanyarray(written.dataobj), masks.combine(seg, "ribs", TOTAL))
    assert np.array_equal(np.asanyarray(nib.load(from_dir).dataobj), np.asanyarray(written.dataobj))
    assert sorted(p.name for p in from_file.parent.iterdir()) == ["ribs_ml.nii.gz"]


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    out = tmp_path / "x.nii.gz"
    assert combine_masks_cli.combine_main(["-i", str(tmp_path), "-o", str(out), "-m", "lungs"]) == 1
    err = capsys.readouterr().err
    assert "Unknown mask group 'lungs'" in err and "vertebrae_ribs" in err and "Traceback" not in err
    assert combine_masks_cli.combine_main(["-i", str(tmp_path / "missing"), "-o", str(out), "-m", "lung"]) == 1
    assert "not found" in capsys.readouterr().err
    assert combine_masks_cli.combine_main(["-i", str(tmp_path), "-o", str(out), "-m", "lung"]) == 1
    assert "Missing in" in capsys.readouterr().err
    assert not out.exists()
