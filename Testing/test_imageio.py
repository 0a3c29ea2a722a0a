"""Tests of totalseg_engine.imageio on the real test images: readers, validation, atomic writers."""

from __future__ import annotations

import gzip
import itertools
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from slicerio.segmentation import terminology_entry_from_string
from totalseg_engine import imageio
from totalseg_engine.errors import InvalidInputError, OutputExistsError
from totalseg_engine.imageio import SegmentInfo, label_table

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
RIB = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^113197003^Rib~^^~Anatomic codes - DICOM master list~^^~^^"
)


# ------------------------------------------------------------------------------------------------
# helpers and fixtures
# ------------------------------------------------------------------------------------------------


def random_oblique_image(seed: int, left_handed: bool = False) -> sitk.Image:
    """A small int16 image with a random rotation, anisotropic spacing and an arbitrary origin."""
    rng = np.random.default_rng(seed)
    direction, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if (np.linalg.det(direction) < 0) != left_handed:
        direction[:, 0] *= -1
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, size=(7, 6, 5)).astype(np.int16))
    image.SetDirection(direction.ravel().tolist())
    image.SetSpacing(rng.uniform(0.3, 4.0, size=3).tolist())
    image.SetOrigin(rng.uniform(-300, 300, size=3).tolist())
    return image


def leftovers(folder: Path) -> list[str]:
    """Names of temporary entries an atomic writer could have left in ``folder``."""
    return [p.name for p in folder.rglob("*") if ".tmp-" in p.name]


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def sorted_rows(points: np.ndarray) -> np.ndarray:
    return points[np.lexsort(points.T[::-1])]


@pytest.fixture(scope="module")
def ct_path(data_dir: Path) -> Path:
    return data_dir / "example_ct.nii.gz"


@pytest.fixture(scope="module")
def dicom_dir(data_dir: Path) -> Path:
    return data_dir / "example_ct_dicom"


@pytest.fixture(scope="module")
def dicom_img(dicom_dir: Path) -> nib.Nifti1Image:
    return imageio.read_image(dicom_dir)


@pytest.fixture(scope="module")
def official_seg(data_dir: Path) -> nib.Nifti1Image:
    return nib.load(data_dir / "example_seg.nii.gz")


@pytest.fixture(scope="module")
def seg_ref(data_dir: Path) -> nib.Nifti1Image:
    """The CT that example_seg.nii.gz was segmented from (same grid and header)."""
    return nib.load(data_dir / "example_ct_sm.nii.gz")


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder that tempfile uses for everything, so tests can see what temporary files remain."""
    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# ------------------------------------------------------------------------------------------------
# LPS <-> RAS conversions
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,left_handed", [(0, False), (1, True), (2, False)])
def test_sitk_to_nifti_maps_each_index_to_the_same_world_point(seed: int, left_handed: bool) -> None:
    image = random_oblique_image(seed, left_handed)
    img = imageio.sitk_to_nifti(image)
    array = np.asanyarray(img.dataobj)
    assert img.shape == image.GetSize()
    for index in [(0, 0, 0), (4, 5, 6), (1, 3, 2)]:
        assert array[index] == image.GetPixel(index)
        lps = np.array(image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index]))
        ras = nib.affines.apply_affine(img.affine, index)
        np.testing.assert_allclose(ras, LPS[:3, :3] @ lps, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed,left_handed", [(3, False), (4, True)])
def test_sitk_nifti_round_trip_is_exact(seed: int, left_handed: bool) -> None:
    image = random_oblique_image(seed, left_handed)
    back = imageio.nifti_to_sitk(imageio.sitk_to_nifti(image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert back.GetPixelID() == image.GetPixelID()
    for getter in ("GetDirection", "GetSpacing", "GetOrigin"):
        np.testing.assert_allclose(getattr(back, getter)(), getattr(image, getter)(), rtol=0, atol=1e-12)


def test_nifti_to_sitk_agrees_with_simpleitk_reading_the_file(ct_path: Path) -> None:
    ours = imageio.nifti_to_sitk(nib.load(ct_path))
    theirs = sitk.ReadImage(str(ct_path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    for getter in ("GetDirection", "GetSpacing", "GetOrigin"):
        np.testing.assert_allclose(getattr(ours, getter)(), getattr(theirs, getter)(), rtol=0, atol=1e-5)


def test_sitk_to_nifti_refuses_vector_pixels() -> None:
    rgb = sitk.Image([4, 4, 4], sitk.sitkVectorUInt8, 3)
    with pytest.raises(InvalidInputError, match="scalar"):
        imageio.sitk_to_nifti(rgb)


# ------------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------------


def test_read_nifti_returns_the_file_untouched(ct_path: Path) -> None:
    img = imageio.read_image(ct_path)
    raw = nib.load(ct_path)
    assert isinstance(img, nib.Nifti1Image)
    assert img.header.binaryblock == raw.header.binaryblock
    np.testing.assert_array_equal(img.affine, raw.affine)
    assert not isinstance(img.dataobj, np.ndarray), "NIfTI should be loaded lazily"


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nhdr"])
def test_sitk_formats_cover_the_same_world_box_as_nifti(ct_path: Path, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(ct_path)), str(path))
    converted = imageio.read_image(path)
    nifti = imageio.read_image(ct_path)
    corners = imageio.grid_corners(converted)
    np.testing.assert_allclose(corners, imageio.grid_corners(nifti), rtol=0, atol=1e-4)
    assert imageio.same_grid(converted, nifti)
    np.testing.assert_array_equal(np.asanyarray(converted.dataobj), np.asanyarray(nifti.dataobj))


def test_dicom_folder_reads_sorted_series(dicom_img: nib.Nifti1Image) -> None:
    assert dicom_img.shape == (512, 512, 20)
    assert nib.aff2axcodes(dicom_img.affine) == ("L", "P", "S")
    assert np.asanyarray(dicom_img.dataobj).dtype == np.int16
    assert dicom_img.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(dicom_img.header.get_zooms(), (0.9765625, 0.9765625, 2.0))


def test_dicom_grid_is_the_official_las_grid_with_rows_reversed(
    dicom_img: nib.Nifti1Image, data_dir: Path
) -> None:
    official = nib.load(data_dir / "example_seg_dicom.nii.gz")
    assert nib.aff2axcodes(official.affine) == ("L", "A", "S")
    # Same voxel centres: the y axis runs the other way, nothing else differs.
    flipped = dicom_img.affine @ nib.affines.from_matvec(np.diag([1, -1, 1]), [0, 511, 0])
    np.testing.assert_allclose(flipped, official.affine, rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        sorted_rows(imageio.grid_corners(dicom_img)), sorted_rows(imageio.grid_corners(official)), atol=1e-4
    )
    mapped = imageio.reorient_to_grid(dicom_img, official)
    assert imageio.same_grid(mapped, official)
    np.testing.assert_array_equal(np.asanyarray(mapped.dataobj), np.asanyarray(dicom_img.dataobj)[:, ::-1, :])


def test_dicom_zip_reads_like_the_folder_and_leaves_no_temp(
    dicom_dir: Path, dicom_img: nib.Nifti1Image, tmp_path: Path, private_tmp: Path
) -> None:
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(dicom_dir.iterdir(), reverse=True):
            zf.write(path, f"patient/ct/{path.name}")
    img = imageio.read_image(archive)
    assert imageio.same_grid(img, dicom_img, atol=1e-9)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.asanyarray(dicom_img.dataobj))
    assert list(private_tmp.iterdir()) == []


def test_zip_without_dicom_fails_and_leaves_no_temp(tmp_path: Path, private_tmp: Path) -> None:
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "no images here")
    with pytest.raises(InvalidInputError, match=r"No DICOM series found in .*notes\.zip"):
        imageio.read_image(archive)
    assert list(private_tmp.iterdir()) == []


def write_extra_series(folder: Path, slices: int = 3) -> None:
    """A tiny second DICOM series (its own SeriesInstanceUID) written by SimpleITK."""
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(slices):
        image = sitk.GetImageFromArray(np.full((1, 8, 8), k, np.int16))
        tags = {
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.1.{k}",
            "0020|0032": f"0\\0\\{2 * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
            "0008|0060": "CT",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"extra{k}.dcm"))
        writer.Execute(image)


def test_dicom_folder_with_two_series_uses_the_larger_one_and_warns(
    dicom_dir: Path, dicom_img: nib.Nifti1Image, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(dicom_dir, folder)
    write_extra_series(folder)
    with pytest.warns(imageio.InputWarning, match="2 DICOM series.*20 files"):
        img = imageio.read_image(folder)
    assert img.shape == dicom_img.shape


# ------------------------------------------------------------------------------------------------
# bad inputs: each gives its message, and a guarded write leaves nothing
# ------------------------------------------------------------------------------------------------


def _rgb_nifti(path: Path) -> Path:
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return save_nifti(path, rgb)


def _rgb_mha(path: Path) -> Path:
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorUInt8, 3), str(path))
    return path


def _gunzip(path: Path) -> bytes:
    with gzip.open(path) as stream:
        return stream.read()


def _truncated_nifti(path: Path, source: Path) -> Path:
    raw = _gunzip(source)
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    return path


def _nan_nifti(path: Path) -> Path:
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    return save_nifti(path, data)


def _singular_nifti(path: Path) -> Path:
    """A NIfTI whose sform has a zero voxel size (nibabel cannot build its qform, so set sform only)."""
    img = nib.Nifti1Image(np.arange(64, dtype=np.int16).reshape(4, 4, 4), None)
    img.header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code="scanner")
    nib.save(img, path)
    return path


def _empty_dicom_dir(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("not DICOM")
    return path


BAD_INPUTS = {
    "missing": (lambda p, ct: p / "nope.nii.gz", "Input not found"),
    "unsupported": (lambda p, ct: _touch(p / "scan.png"), "Unsupported input format: scan.png"),
    "single_dicom_file": (lambda p, ct: _touch(p / "slice.dcm"), "single DICOM file"),
    "garbage_nifti": (lambda p, ct: _write(p / "bad.nii.gz", b"not a nifti"), "Could not read .*bad.nii.gz"),
    "truncated_nifti": (lambda p, ct: _truncated_nifti(p / "cut.nii.gz", ct), "Could not read .*cut.nii.gz"),
    "bad_zip": (lambda p, ct: _write(p / "bad.zip", b"PK not really"), "Could not read .*bad.zip"),
    "no_dicom": (lambda p, ct: _empty_dicom_dir(p / "empty_dicom"), "No DICOM series found"),
    "two_d": (
        lambda p, ct: save_nifti(p / "slice.nii.gz", np.zeros((512, 512), np.int16)),
        r"Expected a 3-D image, got shape \(512, 512\)",
    ),
    "single_slice": (
        lambda p, ct: save_nifti(p / "one.nii.gz", np.zeros((8, 8, 1), np.int16)),
        r"single slice of shape \(8, 8, 1\)",
    ),
    "zero_size": (lambda p, ct: save_nifti(p / "zero.nii.gz", np.zeros((4, 0, 4), np.int16)), "empty"),
    "rgb_nifti": (lambda p, ct: _rgb_nifti(p / "rgb.nii.gz"), "scalar"),
    "rgb_mha": (lambda p, ct: _rgb_mha(p / "rgb.mha"), "scalar"),
    "complex": (lambda p, ct: save_nifti(p / "c.nii.gz", np.zeros((4, 4, 4), np.complex64)), "scalar"),
    "vector_5d": (lambda p, ct: save_nifti(p / "v.nii.gz", np.zeros((4, 4, 4, 1, 3), np.float32)), "scalar"),
    "non_finite": (lambda p, ct: _nan_nifti(p / "nan.nii.gz"), "2 NaN or infinite"),
    "singular": (lambda p, ct: _singular_nifti(p / "flat.nii.gz"), "geometry is invalid"),
}


def _touch(path: Path) -> Path:
    path.touch()
    return path


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_gives_its_message_and_writes_nothing(kind: str, tmp_path: Path, ct_path: Path) -> None:
    make, message = BAD_INPUTS[kind]
    source = make(tmp_path, ct_path)
    target = tmp_path / "out" / "deeper" / "seg.nii.gz"
    with pytest.raises(InvalidInputError, match=message), imageio.atomic_output(target) as temp:
        nib.save(imageio.load_image(source), temp)
    assert not (tmp_path / "out").exists()


def test_four_d_uses_the_first_volume_with_a_warning(tmp_path: Path) -> None:
    data = np.stack([np.full((4, 5, 6), t, np.int16) + np.arange(6, dtype=np.int16) for t in range(3)], -1)
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    with pytest.warns(imageio.InputWarning, match="first of its 3 volumes"):
        img = imageio.load_image(save_nifti(tmp_path / "4d.nii.gz", data, affine))
    assert img.shape == (4, 5, 6)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data[..., 0])
    np.testing.assert_array_equal(img.affine, affine)


def test_trailing_unit_axis_is_plain_3d(tmp_path: Path) -> None:
    data = np.arange(120, dtype=np.int16).reshape(4, 5, 6, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = imageio.load_image(save_nifti(tmp_path / "t1.nii.gz", data))
    assert img.shape == (4, 5, 6)


def test_constant_image_warns_but_is_accepted(tmp_path: Path) -> None:
    with pytest.warns(imageio.InputWarning, match="constant"):
        img = imageio.load_image(save_nifti(tmp_path / "flat.nii.gz", np.full((4, 4, 4), -1024, np.int16)))
    assert img.shape == (4, 4, 4)


def test_valid_ct_passes_unchanged(ct_path: Path) -> None:
    img = imageio.read_image(ct_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert imageio.validate_image(img) is img


# ------------------------------------------------------------------------------------------------
# atomic output
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,suffix", [("seg.nii.gz", ".nii.gz"), ("x.seg.nrrd", ".seg.nrrd"), ("a.mha", ".mha")]
)
def test_atomic_output_temp_keeps_suffix_and_lands_in_place(tmp_path: Path, name: str, suffix: str) -> None:
    target = tmp_path / name
    with imageio.atomic_output(target) as temp:
        assert temp.parent == tmp_path and temp.name.endswith(suffix) and temp != target
        temp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    assert leftovers(tmp_path) == []


def test_atomic_output_failure_removes_temp_and_created_parents(tmp_path: Path) -> None:
    target = tmp_path / "new" / "nested" / "seg.nii.gz"
    with pytest.raises(RuntimeError), imageio.atomic_output(target) as temp:
        temp.write_text("half")
        raise RuntimeError("writer crashed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_refuses_to_overwrite_unless_told(tmp_path: Path) -> None:
    target = tmp_path / "seg.nii.gz"
    target.write_text("old")
    refused = pytest.raises(OutputExistsError, match=r"seg\.nii\.gz already exists.*overwrite")
    with refused, imageio.atomic_output(target):
        pytest.fail("must refuse before yielding")
    assert target.read_text() == "old"
    with imageio.atomic_output(target, overwrite=True) as temp:
        temp.write_text("new")
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_check_output_path_refuses_before_any_work(tmp_path: Path) -> None:
    imageio.check_output_path(tmp_path / "new.nii.gz")
    (tmp_path / "seg.nii.gz").write_text("old")
    with pytest.raises(OutputExistsError, match="overwrite"):
        imageio.check_output_path(tmp_path / "seg.nii.gz")
    imageio.check_output_path(tmp_path / "seg.nii.gz", overwrite=True)
    (tmp_path / "empty").mkdir()
    imageio.check_output_path(tmp_path / "empty")
    with pytest.raises(OutputExistsError, match="is a folder"):
        imageio.check_output_path(tmp_path / "empty", overwrite=True, directory=False)


def test_atomic_output_refuses_a_target_created_while_writing(tmp_path: Path) -> None:
    target = tmp_path / "seg.nii.gz"
    with pytest.raises(OutputExistsError), imageio.atomic_output(target) as temp:
        temp.write_text("ours")
        target.write_text("someone else's")
    assert target.read_text() == "someone else's"
    assert leftovers(tmp_path) == []


def test_atomic_directory_output(tmp_path: Path) -> None:
    target = tmp_path / "classes"
    with imageio.atomic_output(target, directory=True) as temp:
        assert temp.is_dir() and list(temp.iterdir()) == []
        (temp / "a.nii.gz").write_text("a")
    assert sorted(p.name for p in target.iterdir()) == ["a.nii.gz"]
    with pytest.raises(OutputExistsError, match="overwrite"), imageio.atomic_output(target, directory=True):
        pass
    (target / "user_notes.txt").write_text("keep me")
    with imageio.atomic_output(target, overwrite=True, directory=True) as temp:
        (temp / "a.nii.gz").write_text("a2")
    assert (target / "a.nii.gz").read_text() == "a2"
    assert (target / "user_notes.txt").read_text() == "keep me"
    assert leftovers(tmp_path) == []


def test_atomic_directory_output_accepts_an_existing_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "made_by_user"
    target.mkdir()
    with imageio.atomic_output(target, directory=True) as temp:
        (temp / "b.nii.gz").write_text("b")
    assert (target / "b.nii.gz").read_text() == "b"


def test_atomic_output_refuses_a_kind_mismatch_even_with_overwrite(tmp_path: Path) -> None:
    (tmp_path / "folder.nii.gz").mkdir()
    refused = pytest.raises(OutputExistsError, match="is a folder")
    with refused, imageio.atomic_output(tmp_path / "folder.nii.gz", overwrite=True):
        pass


# ------------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------------


def test_multilabel_nifti_is_byte_identical_to_the_official(
    official_seg: nib.Nifti1Image, seg_ref: nib.Nifti1Image, data_dir: Path, tmp_path: Path
) -> None:
    label_map = imageio.read_label_map(data_dir / "example_seg.nii.gz")
    assert len(label_map) == 117 and label_map[1] == "spleen"
    out = imageio.write_multilabel_nifti(np.asanyarray(official_seg.dataobj), seg_ref, label_map,
                                         tmp_path / "seg.nii.gz")
    assert _gunzip(out) == _gunzip(data_dir / "example_seg.nii.gz")
    assert imageio.read_label_map(out) == label_map
    assert leftovers(tmp_path) == []


def test_label_table_round_trip_and_absence(tmp_path: Path, seg_ref: nib.Nifti1Image) -> None:
    label_map = {3: "liver", 1: "odd ]]> name", 200: "kidney_left"}
    data = np.zeros(seg_ref.shape, np.uint8)
    out = imageio.write_multilabel_nifti(data, seg_ref, label_map, tmp_path / "m.nii")
    assert list(imageio.read_label_map(out).items()) == list(label_map.items())
    assert imageio.read_label_map(seg_ref) == {}


def test_multilabel_nifti_refuses_bad_labels_and_names(tmp_path: Path, seg_ref: nib.Nifti1Image) -> None:
    with pytest.raises(ValueError, match="0..255"):
        imageio.write_multilabel_nifti(np.full(seg_ref.shape, 300), seg_ref, {1: "a"}, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="does not match"):
        imageio.write_multilabel_nifti(np.zeros((2, 2, 2)), seg_ref, {1: "a"}, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=".nii"):
        imageio.write_multilabel_nifti(np.zeros(seg_ref.shape), seg_ref, {1: "a"}, tmp_path / "a.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_class_files_one_binary_mask_per_class(
    official_seg: nib.Nifti1Image, seg_ref: nib.Nifti1Image, tmp_path: Path
) -> None:
    data = np.asanyarray(official_seg.dataobj)
    label_map = {1: "spleen", 5: "liver", 90: "brain"}  # brain is absent from this scan
    out = imageio.write_class_files(data, seg_ref, label_map, tmp_path / "classes")
    assert sorted(p.name for p in out.iterdir()) == ["brain.nii.gz", "liver.nii.gz", "spleen.nii.gz"]
    for label, name in label_map.items():
        mask = nib.load(out / f"{name}.nii.gz")
        assert mask.get_data_dtype() == np.uint8 and len(mask.header.extensions) == 0
        np.testing.assert_array_equal(mask.affine, seg_ref.affine)
        np.testing.assert_array_equal(np.asanyarray(mask.dataobj), (data == label).astype(np.uint8))
    assert not np.asanyarray(nib.load(out / "brain.nii.gz").dataobj).any()
    assert leftovers(tmp_path) == []


def test_class_files_failure_leaves_no_folder(
    seg_ref: nib.Nifti1Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = nib.save
    calls = []

    def failing_save(img, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(img, path)

    monkeypatch.setattr(label_table.nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        imageio.write_class_files(np.zeros(seg_ref.shape, np.uint8), seg_ref, {1: "a", 2: "b", 3: "c"},
                                  tmp_path / "classes")
    assert list(tmp_path.iterdir()) == []


def test_class_files_refuse_names_leaving_the_folder(seg_ref: nib.Nifti1Image, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file name"):
        imageio.write_class_files(np.zeros(seg_ref.shape), seg_ref, {1: "../evil"}, tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_seg_nrrd_reads_back_in_slicerio(
    official_seg: nib.Nifti1Image, seg_ref: nib.Nifti1Image, tmp_path: Path
) -> None:
    data = np.asanyarray(official_seg.dataobj)
    segments = [
        SegmentInfo(1, "spleen", (0.6, 0.2, 0.1), None),
        SegmentInfo(5, "liver", (0.86, 0.5, 0.39), RIB),
        SegmentInfo(90, "brain", (1.0, 1.0, 1.0)),
    ]
    out = imageio.write_seg_nrrd(data, seg_ref, segments, tmp_path / "seg.seg.nrrd")
    seg = slicerio.read_segmentation(str(out))
    np.testing.assert_array_equal(seg["voxels"], data)
    np.testing.assert_array_equal(seg["ijkToLPS"], LPS @ seg_ref.affine)
    assert [s["name"] for s in seg["segments"]] == ["spleen", "liver", "brain"]
    assert [s["labelValue"] for s in seg["segments"]] == [1, 5, 90]
    assert [s["layer"] for s in seg["segments"]] == [0, 0, 0]
    for read, written in zip(seg["segments"], segments):
        assert tuple(read["color"]) == written.color
        assert read["extent"] == _extent(data, written.label)
    assert "terminology" not in seg["segments"][0]
    assert seg["segments"][1]["terminology"] == terminology_entry_from_string(RIB)
    assert leftovers(tmp_path) == []


def _extent(data: np.ndarray, label: int) -> list[int]:
    where = np.argwhere(data == label)
    if where.size == 0:
        return [0, -1, 0, -1, 0, -1]
    return [int(v) for pair in zip(where.min(0), where.max(0)) for v in pair]


@pytest.mark.parametrize("seed", range(6))
def test_seg_nrrd_header_geometry_is_exact_for_an_oblique_grid(tmp_path: Path, seed: int) -> None:
    ref = imageio.sitk_to_nifti(random_oblique_image(seed, left_handed=seed % 2 == 1))
    data = np.zeros(ref.shape, np.uint8)
    data[1:3, 2:4, 0:5] = 2
    tumor = SegmentInfo(2, "tumor", (1.0, 0.0, 0.0))
    out = imageio.write_seg_nrrd(data, ref, [tumor], tmp_path / "o.seg.nrrd")
    header = out.read_bytes().split(b"\n\n", 1)[0].decode()
    assert "space: left-posterior-superior" in header
    assert "kinds: domain domain domain" in header
    assert "Segmentation_MasterRepresentation:=Binary labelmap" in header
    assert "Segment0_Extent:=1 2 2 3 0 4" in header
    read = sitk.ReadImage(str(out))
    expected = imageio.nifti_to_sitk(ref)
    for getter in ("GetDirection", "GetSpacing", "GetOrigin"):
        np.testing.assert_allclose(getattr(read, getter)(), getattr(expected, getter)(), rtol=0, atol=1e-14)
    assert read.GetMetaData("Segment0_Name") == "tumor"
    np.testing.assert_array_equal(slicerio.read_segmentation(str(out))["ijkToLPS"], LPS @ ref.affine)


def test_seg_nrrd_is_the_same_file_whenever_it_is_written(seg_ref: nib.Nifti1Image, tmp_path: Path) -> None:
    """No time and no name in its gzip header: the atomic write's temporary name must not end up in the file (a
    remote run and a local run of the same segmentation give the same bytes)."""
    data = np.zeros(seg_ref.shape, np.uint8)
    data[1:3, 2:4, 0:5] = 1
    first = imageio.write_seg_nrrd(data, seg_ref, [SegmentInfo(1, "a", (0, 0, 0))], tmp_path / "one.seg.nrrd")
    second = imageio.write_seg_nrrd(data, seg_ref, [SegmentInfo(1, "a", (0, 0, 0))], tmp_path / "two.seg.nrrd")
    assert first.read_bytes() == second.read_bytes()
    assert b".tmp" not in first.read_bytes() and b"one" not in first.read_bytes().split(b"\n\n", 1)[1][:64]


def test_seg_nrrd_refuses_duplicates_and_existing_output(seg_ref: nib.Nifti1Image, tmp_path: Path) -> None:
    data = np.zeros(seg_ref.shape, np.uint8)
    twice = [SegmentInfo(1, "a", (0, 0, 0)), SegmentInfo(1, "b", (0, 0, 0))]
    with pytest.raises(ValueError, match="Duplicate segment labels: 1"):
        imageio.write_seg_nrrd(data, seg_ref, twice, tmp_path / "s.seg.nrrd")
    target = tmp_path / "s.seg.nrrd"
    target.write_text("old")
    with pytest.raises(OutputExistsError):
        imageio.write_seg_nrrd(data, seg_ref, [SegmentInfo(1, "a", (0, 0, 0))], target)
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_segment_info_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="label"):
        SegmentInfo(0, "background", (0, 0, 0))
    with pytest.raises(ValueError, match="colour"):
        SegmentInfo(1, "a", (0, 0, 255))
    with pytest.raises(ValueError, match="NRRD header"):
        SegmentInfo(1, "two\nlines", (0, 0, 0))


def test_reorient_to_grid_refuses_different_grids(seg_ref: nib.Nifti1Image, ct_path: Path) -> None:
    with pytest.raises(ValueError, match="more than axis order"):
        imageio.reorient_to_grid(nib.load(ct_path), seg_ref)


@pytest.mark.parametrize("permutation", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", list(itertools.product((1, -1), repeat=3)))
def test_array_onto_grid_maps_every_axis_order_as_nibabel_does(permutation, flips) -> None:
    """The numpy-only mapping (Slicer imports with it without nibabel) against nibabel's own reorientation, for
    all 48 axis orders of a non-cubic, off-origin grid."""
    rng = np.random.default_rng(3)
    ref = nib.Nifti1Image(rng.integers(0, 9, (5, 6, 7), dtype=np.uint8),
                          np.diag([-1.5, -0.8, 2.0, 1.0]) + np.array([[0, 0, 0, 10], [0, 0, 0, -4], [0, 0, 0, 3],
                                                                     [0, 0, 0, 0]]))
    ornt = np.array([[axis, flip] for axis, flip in zip(permutation, flips)])
    moved = ref.as_reoriented(ornt)
    data, affine = imageio.array_onto_grid(np.asanyarray(moved.dataobj), moved.affine, ref.affine, ref.shape)
    np.testing.assert_array_equal(data, np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(affine, ref.affine, atol=1e-9)
