"""The pipeline returns labels on exactly the input's grid, whatever its orientation and spacing.

A stand-in runner labels voxels by intensity, and the images encode position in their
intensities, so any misplaced voxel (flip, transpose, shift) changes the answer.
"""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from stand_ins import intensity_factory, label_by_intensity
from totalseg_engine.core import pipeline
from totalseg_engine.request import SegmentationRequest

FAST = SegmentationRequest(task="total", speed="fast", device="cpu")


def world_blocks(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Intensities that depend on world position: 0/300/600/900 by octant of the RAS bounding box,
    with cuts placed off-centre so that every flip or transpose moves voxels to another label."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = nib.affines.apply_affine(affine, ijk)
    cuts = np.percentile(xyz, (30, 45, 60), axis=0).diagonal()
    value = 300.0 * (xyz > cuts).sum(axis=1)
    return value.reshape(shape)


def image_with(affine: np.ndarray, shape=(24, 20, 18)) -> nib.Nifti1Image:
    return nib.Nifti1Image(world_blocks(affine, shape).astype(np.int16), affine)


def orientation_affines(spacing=3.0):
    """All 48 axis permutations and flips of a 3 mm grid."""
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            affine = np.zeros((4, 4))
            for col, (row, sign) in enumerate(zip(perm, signs)):
                affine[row, col] = sign * spacing
            affine[:3, 3] = (-7.0, 12.0, 33.0)
            affine[3, 3] = 1
            yield affine


def segment(img, options=FAST, runners=None):
    return pipeline.segment(img, options, runner_factory=intensity_factory(runners))


@pytest.mark.parametrize("affine", list(orientation_affines()), ids=lambda a: "".join(nib.aff2axcodes(a)))
def test_every_orientation_comes_back_voxel_exact(affine):
    img = image_with(affine)
    result = segment(img)
    assert len(np.unique(img.get_fdata())) == 4
    assert result.image.shape == img.shape
    np.testing.assert_array_equal(result.image.affine, img.affine)
    np.testing.assert_array_equal(result.data, label_by_intensity(img.get_fdata()))


def test_runner_sees_ras_at_task_spacing():
    affine = np.diag([-3.0, -3.0, 3.0, 1.0])  # LPS-like storage
    runners: dict = {}
    segment(image_with(affine), runners=runners)
    (call,) = runners[297].calls
    assert call["spacing"] == (3.0, 3.0, 3.0)
    assert call["shape"] == (24, 20, 18)


def test_oblique_direction_keeps_grid():
    angle = np.deg2rad(17)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([3.0, 3.0, 3.0])
    affine[:3, 3] = (5.0, -4.0, 2.0)
    img = image_with(affine)
    result = segment(img)
    np.testing.assert_array_equal(result.image.affine, img.affine)
    np.testing.assert_array_equal(result.data, label_by_intensity(img.get_fdata()))


def test_anisotropic_spacing_resamples_and_returns_on_input_grid():
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    img = image_with(affine, shape=(80, 90, 30))
    runners: dict = {}
    result = segment(img, runners=runners)
    (call,) = runners[297].calls
    assert call["spacing"] == (3.0, 3.0, 3.0)
    assert call["shape"] == tuple(int(round(n * s / 3.0)) for n, s in zip(img.shape, (0.8, 0.8, 2.5)))
    assert result.image.shape == img.shape
    np.testing.assert_array_equal(result.image.affine, img.affine)
    expected = label_by_intensity(img.get_fdata())
    agreement = (result.data == expected).mean()
    assert agreement > 0.95, agreement  # only voxels next to block edges may differ after 3 mm


def test_labels_keep_input_header_and_uint8():
    img = image_with(np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header["descrip"] = b"my scan"
    result = segment(img)
    assert result.image.get_data_dtype() == np.uint8
    assert result.image.header["descrip"] == b"my scan"


@pytest.mark.parametrize("source", ["dicom_folder", "nrrd"])
def test_file_inputs_come_back_voxel_exact(data_dir, tmp_path, source):
    """DICOM and NRRD go through SimpleITK: the labels must land on the same voxels, in world space too."""
    import SimpleITK as sitk
    from totalseg_engine import imageio

    if source == "dicom_folder":
        path = data_dir / "example_ct_dicom"
    else:
        path = tmp_path / "ct.nrrd"
        sitk.WriteImage(sitk.ReadImage(str(data_dir / "example_ct_sm.nii.gz")), str(path))
    source_img = imageio.read_image(path)
    options = SegmentationRequest(task="total", speed="fast", device="cpu", higher_order_resampling=True)
    result = segment(path, options)
    assert result.image.shape == source_img.shape
    np.testing.assert_allclose(result.image.affine, source_img.affine, atol=1e-6)
    np.testing.assert_array_equal(result.data, label_by_intensity(source_img.get_fdata()))
    assert len(np.unique(result.data)) > 1
