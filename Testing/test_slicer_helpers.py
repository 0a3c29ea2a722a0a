"""The Slicer-side helpers (``totalseg_slicer``) against real MRML from the ``slicer-core`` wheel.

A scene with the colour, segmentations, subject hierarchy and sequences logics set up stands in for the
running application. Volumes are read with Slicer's own storage node, as Slicer loads them; segments are
checked by exporting them onto the reference volume with Slicer's segmentations logic and comparing with
the source labels voxel by voxel, the expected labels being found independently through world coordinates.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML without Qt) is not installed")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no MRML (install slicer-core)", allow_module_level=True)

import nibabel as nib  # noqa: E402
import slicerio  # noqa: E402
import vtk  # noqa: E402
from mrml_support import load_volume, segment_on_volume, segments, snapshot  # noqa: E402
from totalseg_engine import imageio  # noqa: E402
from totalseg_engine.core.statistics import compute_statistics  # noqa: E402
from totalseg_engine.errors import InvalidInputError, OutputExistsError  # noqa: E402
from totalseg_slicer import seg_nrrd, sequences, statistics_table  # noqa: E402
from totalseg_slicer import segmentation_import as si  # noqa: E402
from totalseg_slicer.volume_export import array_to_matrix, export_volume, ijk_to_ras, ijk_to_world  # noqa: E402

TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^{code}^{name}~^^~Anatomic codes - DICOM master list~^^~^^"
)

OFFICIAL = {
    "ct": ("example_ct_sm.nii.gz", "example_seg.nii.gz", "total"),
    "mr": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "total_mr"),
    "dicom": ("example_ct_dicom", "example_seg_dicom.nii.gz", "total"),
}


# --------------------------------------------------------------------------------------------------
# Scene, volumes and checks
# --------------------------------------------------------------------------------------------------


def segment_info(label: int, name: str):
    """Display name, a colour made from the label, and an (opaque) terminology entry."""
    color = ((label * 37) % 256 / 255, (label * 91) % 256 / 255, (label * 53) % 256 / 255)
    return name.replace("_", " ").capitalize(), color, TERMINOLOGY.format(code=100000 + label, name=name)


def volume_from_array(scene, data_xyz: np.ndarray, matrix: np.ndarray, name: str = "synthetic"):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(volume, np.ascontiguousarray(data_xyz.transpose()))
    volume.SetIJKToRASMatrix(array_to_matrix(matrix))
    return volume


def oblique_matrix(spacing=(0.7, 1.3, 2.9), origin=(-123.456, 78.9, 301.25), angles=(0.35, -0.6, 0.9)) -> np.ndarray:
    """An oblique, anisotropic, non-axis-aligned voxel-to-RAS matrix."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx * np.asarray(spacing)
    matrix[:3, 3] = origin
    return matrix


def corners(shape, matrix: np.ndarray) -> np.ndarray:
    """World coordinates of the 8 outer voxel corners, in a fixed order of index corners."""
    index = np.array([[i, j, k, 1] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    index[:, :3] = index[:, :3] * np.asarray(shape) - 0.5
    return (matrix @ index.T).T[:, :3]


def linear_transform(scene, matrix: np.ndarray):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(array_to_matrix(matrix))
    return node


def on_volume_grid(image: nib.Nifti1Image, volume) -> np.ndarray:
    """``image``'s voxels in the volume's voxel order, found through the world position of every voxel.

    Fails unless each volume voxel centre is (to 1e-3 voxel) a voxel centre of ``image``: no resampling.
    """
    index_map = np.linalg.inv(image.affine) @ ijk_to_world(volume)
    assert np.allclose(index_map, np.round(index_map), atol=1e-3)
    index_map = np.round(index_map).astype(int)
    shape = volume.GetImageData().GetDimensions()
    ijk = np.indices(shape).reshape(3, -1)
    source = index_map[:3, :3] @ ijk + index_map[:3, 3:]
    return np.asanyarray(image.dataobj)[tuple(source)].reshape(shape)


def add_user_segment(segmentation_node, name: str, mask: np.ndarray, volume, labelmap=None, label: int = 1) -> str:
    """A segment the user painted: own labelmap on the volume's grid, or written into a shared ``labelmap``."""
    if labelmap is None:
        labelmap = slicer.vtkOrientedImageData()
        labelmap.SetDimensions(*mask.shape)
        labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        si._voxels(labelmap)[:] = 0
        labelmap.SetImageToWorldMatrix(array_to_matrix(ijk_to_ras(volume)))
    si._voxels(labelmap)[mask.transpose()] = label
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(0.1, 0.2, 0.3)
    segment.SetLabelValue(label)
    segment.AddRepresentation(si.BINARY_LABELMAP, labelmap)
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GenerateUniqueSegmentID(name)
    assert segmentation.AddSegment(segment, segment_id)
    return segment_id


@pytest.fixture
def small_case(mrml):
    """A 20x18x12 oblique volume, labels 1..3 of a three-class task and an empty segmentation node."""
    volume = volume_from_array(mrml.scene, np.zeros((20, 18, 12), np.int16), oblique_matrix())
    labels = np.zeros((20, 18, 12), np.uint8)
    labels[2:8, 3:9, 1:5] = 1
    labels[10:15, 5:12, 4:9] = 2
    labels[4:6, 12:16, 8:11] = 3
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "output")
    label_map = {1: "liver", 2: "spleen", 3: "stomach"}
    return SimpleNamespace(volume=volume, labels=labels, node=node, label_map=label_map)


# --------------------------------------------------------------------------------------------------
# volume_export
# --------------------------------------------------------------------------------------------------


def test_export_nrrd_keeps_voxels_and_oblique_geometry_exactly(mrml, tmp_path):
    data = np.random.default_rng(1).integers(-1024, 3000, size=(9, 7, 5)).astype(np.int16)
    matrix = oblique_matrix()
    volume = volume_from_array(mrml.scene, data, matrix)
    image = imageio.read_image(export_volume(volume, tmp_path / "oblique.nrrd"))
    assert image.get_data_dtype() == np.int16
    assert np.array_equal(np.asanyarray(image.dataobj), data)
    np.testing.assert_allclose(corners(image.shape, image.affine), corners(data.shape, matrix), rtol=0, atol=1e-9)


def test_export_nifti_keeps_voxels_and_geometry_to_header_precision(mrml, tmp_path):
    data = np.random.default_rng(2).normal(size=(9, 7, 5)).astype(np.float32)
    matrix = oblique_matrix()
    volume = volume_from_array(mrml.scene, data, matrix)
    image = nib.load(export_volume(volume, tmp_path / "oblique.nii.gz", compress=False))
    assert np.array_equal(np.asanyarray(image.dataobj), data)
    # the NIfTI header stores the affine in float32: a few 1e-6 mm at these coordinates
    np.testing.assert_allclose(corners(image.shape, image.affine), corners(data.shape, matrix), rtol=0, atol=1e-4)


def test_export_of_a_loaded_ct_reproduces_the_file(mrml, data_dir, tmp_path):
    source = nib.load(data_dir / "example_ct_sm.nii.gz")
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    image = imageio.read_image(export_volume(volume, tmp_path / "ct.nrrd"))
    assert np.array_equal(np.asanyarray(image.dataobj), np.asanyarray(source.dataobj))
    np.testing.assert_allclose(image.affine, source.affine, rtol=0, atol=1e-9)


def test_export_hardens_a_linear_transform_into_the_file_only(mrml, tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    volume = volume_from_array(mrml.scene, data, oblique_matrix())
    transform = oblique_matrix(spacing=(1, 1, 1), origin=(5.0, -7.5, 12.25), angles=(0.2, 0.1, -0.4))
    volume.SetAndObserveTransformNodeID(linear_transform(mrml.scene, transform).GetID())
    image = imageio.read_image(export_volume(volume, tmp_path / "moved.nrrd"))
    np.testing.assert_allclose(image.affine, transform @ oblique_matrix(), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(ijk_to_ras(volume), oblique_matrix())
    assert volume.GetParentTransformNode() is not None


def test_export_refuses_a_non_linear_transform(mrml, tmp_path):
    volume = volume_from_array(mrml.scene, np.zeros((4, 4, 4), np.int16), np.eye(4))
    warp = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point in ((0, 0, 0), (10, 0, 0), (0, 10, 0), (0, 0, 10)):
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + 1, point[1], point[2])
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    node = mrml.scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    node.SetAndObserveTransformToParent(warp)
    volume.SetAndObserveTransformNodeID(node.GetID())
    with pytest.raises(InvalidInputError, match="non-linear transform 'warp'.*Harden"):
        export_volume(volume, tmp_path / "warped.nrrd")
    assert not list(tmp_path.iterdir())


def test_export_refuses_a_shearing_transform(mrml, tmp_path):
    volume = volume_from_array(mrml.scene, np.zeros((4, 4, 4), np.int16), np.eye(4))
    shear = np.eye(4)
    shear[0, 1] = 0.3
    volume.SetAndObserveTransformNodeID(linear_transform(mrml.scene, shear).GetID())
    with pytest.raises(InvalidInputError, match="shears"):
        export_volume(volume, tmp_path / "sheared.nrrd")


def test_export_refuses_vector_volumes(mrml, tmp_path):
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour photo")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    volume.SetAndObserveImageData(image)
    with pytest.raises(InvalidInputError, match="3 components.*single-channel"):
        export_volume(volume, tmp_path / "rgb.nrrd")


def test_export_checks_the_output_path(mrml, tmp_path):
    volume = volume_from_array(mrml.scene, np.zeros((4, 4, 4), np.int16), np.eye(4))
    with pytest.raises(ValueError, match="exported as"):
        export_volume(volume, tmp_path / "volume.mha")
    export_volume(volume, tmp_path / "volume.nii.gz")
    with pytest.raises(OutputExistsError):
        export_volume(volume, tmp_path / "volume.nii.gz")
    export_volume(volume, tmp_path / "volume.nii.gz", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume.nii.gz"]


# --------------------------------------------------------------------------------------------------
# segmentation_import: the official outputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(OFFICIAL))
def test_official_output_imports_named_coloured_tagged_and_voxel_exact(mrml, data_dir, case):
    volume_file, seg_file, task = OFFICIAL[case]
    volume = load_volume(mrml.scene, data_dir / volume_file)
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "output")
    seg_image = nib.load(data_dir / seg_file)
    label_map = imageio.read_label_map(seg_image)
    expected = on_volume_grid(seg_image, volume)
    present = sorted(set(np.unique(expected).tolist()) - {0})

    segment_ids = si.import_official_output(mrml.scene, data_dir / seg_file, node, volume, task, segment_info)

    assert len(segment_ids) == len(present) == node.GetSegmentation().GetNumberOfSegments()
    assert node.GetSegmentation().GetNumberOfLayers() == 1
    for segment_id, label in zip(segment_ids, present):
        segment = node.GetSegmentation().GetSegment(segment_id)
        name, color, terminology = segment_info(label, label_map[label])
        assert segment_id == label_map[label]
        assert segment.GetName() == name
        np.testing.assert_allclose(segment.GetColor(), color, atol=1e-12)
        assert si.segment_tag(segment, si.CLASS_TAG) == label_map[label]
        assert si.segment_tag(segment, si.TASK_TAG) == task
        assert si.segment_tag(segment, "TerminologyEntry") == terminology
        # Slicer's DICOM SEG export reads these two (DICOMSegmentationPlugin.py); absent, it writes MANUAL.
        assert si.segment_tag(segment, "DICOM.SegmentAlgorithmType") == "AUTOMATIC"
        assert si.segment_tag(segment, "DICOM.SegmentAlgorithmName") == "TotalSegmentator"
        assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()
        assert np.array_equal(segment_on_volume(mrml, node, segment_id, volume), expected == label), label_map[label]
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    assert node.GetDisplayNode() is not None


def test_dicom_output_is_reordered_not_resampled(mrml, data_dir):
    """The official DICOM output is LAS, Slicer's read LPS: the same voxels with the row axis reversed."""
    volume = load_volume(mrml.scene, data_dir / "example_ct_dicom")
    seg_image = nib.load(data_dir / "example_seg_dicom.nii.gz")
    assert np.sign(seg_image.affine[1, 1]) != np.sign(ijk_to_world(volume)[1, 1])
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    si.import_official_output(mrml.scene, data_dir / "example_seg_dicom.nii.gz", node, volume, "total")
    labelmap = node.GetSegmentation().GetSegment("liver").GetRepresentation(si.BINARY_LABELMAP)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    assert labelmap.GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_array_equal(slicer.util.arrayFromVTKMatrix(matrix), ijk_to_ras(volume))
    assert np.array_equal(si._voxels(labelmap).transpose(), on_volume_grid(seg_image, volume))


def test_segmentation_is_filed_beside_the_volume_in_its_study(mrml, data_dir):
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "study")
    hierarchy.CreateItem(study, volume)
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    si.import_official_output(mrml.scene, data_dir / "example_seg.nii.gz", node, volume, "total")
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study

    elsewhere = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "my folder")
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(node), elsewhere)
    si.import_official_output(mrml.scene, data_dir / "example_seg.nii.gz", node, volume, "total")
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == elsewhere  # the user's filing is kept


def test_import_official_output_needs_a_label_table(mrml, small_case, tmp_path):
    path = tmp_path / "plain.nii.gz"
    nib.save(nib.Nifti1Image(small_case.labels, ijk_to_world(small_case.volume)), path)
    with pytest.raises(InvalidInputError, match="no TotalSegmentator label table"):
        si.import_official_output(mrml.scene, path, small_case.node, small_case.volume, "total")


# --------------------------------------------------------------------------------------------------
# segmentation_import: inputs and geometry
# --------------------------------------------------------------------------------------------------


def test_array_on_the_volume_grid_and_unnamed_labels(mrml, small_case):
    labels = small_case.labels.copy()
    labels[0, 0, 0] = 9  # not in the label map: no segment and no stray voxel in the shared labelmap
    ids = si.import_segmentation(mrml.scene, labels, small_case.node, small_case.volume, {1: "liver", 3: "stomach",
                                                                                           7: "absent"}, "total")
    assert ids == ["liver", "stomach"]
    labelmap = small_case.node.GetSegmentation().GetSegment("liver").GetRepresentation(si.BINARY_LABELMAP)
    assert set(np.unique(si._voxels(labelmap)).tolist()) == {0, 1, 3}
    for segment_id, label in (("liver", 1), ("stomach", 3)):
        mask = segment_on_volume(mrml, small_case.node, segment_id, small_case.volume)
        assert np.array_equal(mask, small_case.labels == label)
    assert segments(small_case.node)[0].GetName() == "liver"


def test_labels_in_another_axis_order_are_mapped_onto_the_volume(mrml, small_case):
    image = nib.Nifti1Image(small_case.labels, ijk_to_world(small_case.volume))
    flipped = image.as_reoriented(np.array([[2, -1], [0, 1], [1, -1]]))  # permuted and mirrored axes
    assert flipped.shape != image.shape
    si.import_segmentation(mrml.scene, flipped, small_case.node, small_case.volume, small_case.label_map, "total")
    for label, name in small_case.label_map.items():
        assert np.array_equal(segment_on_volume(mrml, small_case.node, name, small_case.volume),
                              small_case.labels == label)


def test_labels_off_the_volume_grid_are_refused(mrml, small_case):
    shifted = ijk_to_world(small_case.volume)
    shifted[:3, 3] += 0.5 * shifted[:3, 0]  # half a voxel along i
    with pytest.raises(InvalidInputError, match="does not lie on the voxels of volume 'synthetic'"):
        si.import_segmentation(mrml.scene, small_case.labels, small_case.node, small_case.volume,
                               small_case.label_map, "total", affine=shifted)
    with pytest.raises(InvalidInputError, match="shape"):
        si.import_segmentation(mrml.scene, small_case.labels[:-1], small_case.node, small_case.volume,
                               small_case.label_map, "total")
    assert small_case.node.GetSegmentation().GetNumberOfSegments() == 0


def test_transformed_volume_segments_land_on_its_world_voxels(mrml, small_case):
    transform = oblique_matrix(spacing=(1, 1, 1), origin=(30.0, -4.0, 2.5), angles=(0.0, 0.3, 0.2))
    small_case.volume.SetAndObserveTransformNodeID(linear_transform(mrml.scene, transform).GetID())
    world = ijk_to_world(small_case.volume)  # the grid the exported file and so the engine's output has
    si.import_segmentation(mrml.scene, small_case.labels, small_case.node, small_case.volume,
                           small_case.label_map, "total", affine=world)
    labelmap = small_case.node.GetSegmentation().GetSegment("liver").GetRepresentation(si.BINARY_LABELMAP)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), world, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# segmentation_import: re-runs, user segments, failures
# --------------------------------------------------------------------------------------------------


def test_rerun_replaces_only_the_segments_of_that_task(mrml, small_case):
    case = small_case
    si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total", segment_info)
    user_mask = np.zeros(case.labels.shape, bool)
    user_mask[15:18, 1:3, 1:3] = True
    add_user_segment(case.node, "my tumour", user_mask, case.volume)
    untagged = add_user_segment(case.node, "Liver", case.labels == 1, case.volume)  # same name as ours, untagged
    other_task = si.import_segmentation(mrml.scene, case.labels == 3, case.node, case.volume, {1: "lung_vessels"},
                                        "lung_vessels")
    before = {row[0]: row for row in snapshot(mrml, case.node, case.volume)}

    to_replace = si.segments_to_replace(case.node, "total", case.label_map.values())
    assert to_replace == ["liver", "spleen", "stomach"]
    new_labels = case.labels.copy()
    new_labels[new_labels == 3] = 0  # stomach gone in the new result
    new_labels[0:2, 0:2, 0:2] = 2
    ids = si.import_segmentation(mrml.scene, new_labels, case.node, case.volume, case.label_map, "total", segment_info)

    assert ids == ["liver", "spleen"]
    order = case.node.GetSegmentation().GetSegmentIDs()
    assert list(order) == ["liver", "spleen", "my tumour", untagged, *other_task]
    after = {row[0]: row for row in snapshot(mrml, case.node, case.volume)}
    for kept in ("my tumour", untagged, *other_task):
        assert after[kept] == before[kept]
    assert np.array_equal(segment_on_volume(mrml, case.node, "spleen", case.volume), new_labels == 2)
    assert si.segments_to_replace(case.node, "total", ["stomach"]) == []


def test_rerun_into_a_node_of_the_existing_extension_replaces_its_segments(mrml, small_case):
    """The existing extension named segments by Slicer's terminology and used the class name as ID, untagged."""
    case = small_case
    for label, class_name in case.label_map.items():  # as its readSegmentation left them
        segment_id = add_user_segment(case.node, class_name, case.labels == label, case.volume)
        assert segment_id == class_name
        case.node.GetSegmentation().GetSegment(segment_id).SetName(class_name.capitalize())
    painted = add_user_segment(case.node, "Segment_1", case.labels == 1, case.volume)
    assert si.segments_to_replace(case.node, "total", case.label_map.values()) == list(case.label_map.values())
    ids = si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total", segment_info)
    segmentation = case.node.GetSegmentation()
    assert list(segmentation.GetSegmentIDs()) == [*ids, painted]  # no "liver_1" beside "liver"
    assert all(si.segment_tag(segmentation.GetSegment(i), si.CLASS_TAG) == i for i in ids)


def test_renamed_task_segment_is_still_replaced_and_no_replace_keeps_all(mrml, small_case):
    case = small_case
    si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total")
    case.node.GetSegmentation().GetSegment("liver").SetName("Liver (edited)")
    si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total")
    assert [s.GetName() for s in segments(case.node)] == ["liver", "spleen", "stomach"]

    si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total",
                           replace_existing=False)
    assert [s.GetName() for s in segments(case.node)] == ["liver", "spleen", "stomach"] * 2
    assert len(si.segments_to_replace(case.node, "total", ["liver"])) == 2


def test_removed_segments_leave_no_voxels_in_a_labelmap_shared_with_user_segments(mrml, small_case):
    case = small_case
    si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total")
    shared = case.node.GetSegmentation().GetSegment("liver").GetRepresentation(si.BINARY_LABELMAP)
    user_mask = np.zeros(case.labels.shape, bool)
    user_mask[16:19, 14:17, 0:3] = True
    user = add_user_segment(case.node, "painted", user_mask, case.volume, labelmap=shared, label=10)
    assert case.node.GetSegmentation().GetNumberOfLayers() == 1

    si.import_segmentation(mrml.scene, case.labels == 2, case.node, case.volume, {1: "spleen"}, "total")

    assert set(np.unique(si._voxels(shared)).tolist()) == {0, 1, 3, 10}  # the old spleen (2) is gone
    assert np.array_equal(segment_on_volume(mrml, case.node, user, case.volume), user_mask)
    assert np.array_equal(segment_on_volume(mrml, case.node, "spleen", case.volume), case.labels == 2)
    assert [s.GetName() for s in segments(case.node)] == ["liver", "spleen", "stomach", "painted"]


def test_a_failing_segment_info_leaves_the_node_unchanged(mrml, small_case):
    case = small_case
    si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total", segment_info)
    add_user_segment(case.node, "my tumour", case.labels == 2, case.volume)
    before = snapshot(mrml, case.node, case.volume)

    def bad_colour(label, name):
        return name, (0.5, 2.0, 0.5) if name == "stomach" else (0.5, 0.5, 0.5), None

    with pytest.raises(InvalidInputError, match="Colour .* of class 'stomach'"):
        si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total", bad_colour)
    assert snapshot(mrml, case.node, case.volume) == before


def test_a_failure_while_adding_restores_every_segment(mrml, small_case, monkeypatch):
    case = small_case
    si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total", segment_info)
    user_mask = np.zeros(case.labels.shape, bool)
    user_mask[16:19, 14:17, 0:3] = True
    shared = case.node.GetSegmentation().GetSegment("spleen").GetRepresentation(si.BINARY_LABELMAP)
    add_user_segment(case.node, "painted", user_mask, case.volume, labelmap=shared, label=10)
    case.node.GetSegmentation().ReorderSegments(["stomach", "painted", "liver", "spleen"])
    before = snapshot(mrml, case.node, case.volume)
    layer_voxels = si._voxels(shared).copy()

    real_add, calls = si._add_segment, []

    def add_then_fail(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated failure")
        return real_add(*args)

    monkeypatch.setattr(si, "_add_segment", add_then_fail)
    with pytest.raises(RuntimeError, match="simulated failure"):
        si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total")
    assert snapshot(mrml, case.node, case.volume) == before
    assert np.array_equal(si._voxels(shared), layer_voxels)
    assert case.node.GetSegmentation().GetNumberOfLayers() == 1


def test_an_empty_result_removes_the_task_segments_only(mrml, small_case):
    case = small_case
    si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total")
    add_user_segment(case.node, "mine", case.labels == 1, case.volume)
    ids = si.import_segmentation(mrml.scene, np.zeros_like(case.labels), case.node, case.volume, case.label_map,
                                 "total")
    assert ids == []
    assert [s.GetName() for s in segments(case.node)] == ["mine"]
    assert np.array_equal(segment_on_volume(mrml, case.node, "mine", case.volume), case.labels == 1)


def test_new_segments_take_the_place_of_the_replaced_ones(mrml, small_case):
    case = small_case
    add_user_segment(case.node, "first", case.labels == 1, case.volume)
    si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total")
    add_user_segment(case.node, "last", case.labels == 2, case.volume)
    si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total")
    assert [s.GetName() for s in segments(case.node)] == ["first", "liver", "spleen", "stomach", "last"]


# --------------------------------------------------------------------------------------------------
# seg_nrrd
# --------------------------------------------------------------------------------------------------


def test_seg_nrrd_round_trip_keeps_names_colours_tags_and_voxels(mrml, data_dir, tmp_path):
    volume = load_volume(mrml.scene, data_dir / "example_ct_sm.nii.gz")
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg_image = nib.load(data_dir / "example_seg.nii.gz")
    label_map = imageio.read_label_map(seg_image)
    ids = si.import_official_output(mrml.scene, data_dir / "example_seg.nii.gz", node, volume, "total", segment_info)
    path = seg_nrrd.save_seg_nrrd(node, tmp_path / "result.seg.nrrd")

    read = slicerio.read_segmentation(str(path))
    assert [s["id"] for s in read["segments"]] == ids
    voxels, ijk_to_lps = read["voxels"], read["ijkToLPS"]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps
    np.testing.assert_allclose(ras, ijk_to_ras(volume), rtol=0, atol=1e-9)
    expected = np.asanyarray(seg_image.dataobj)
    for entry in read["segments"]:
        label = next(k for k, v in label_map.items() if v == entry["id"])
        name, color, _ = segment_info(label, label_map[label])
        assert entry["name"] == name
        np.testing.assert_allclose(entry["color"], color, atol=1e-6)
        assert entry["terminology"]["type"] == ["SCT", str(100000 + label), label_map[label]]
        assert entry["tags"] == {si.CLASS_TAG: label_map[label], si.TASK_TAG: "total",
                                 si.ALGORITHM_TYPE_TAG: "AUTOMATIC", si.ALGORITHM_NAME_TAG: "TotalSegmentator"}
        assert np.array_equal(voxels == entry["labelValue"], expected == label)


def test_seg_nrrd_read_back_by_slicer_keeps_tags(mrml, small_case, tmp_path):
    case = small_case
    si.import_segmentation(mrml.scene, case.labels, case.node, case.volume, case.label_map, "total", segment_info)
    path = seg_nrrd.save_seg_nrrd(case.node, tmp_path / "small.seg.nrrd")
    loaded = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(loaded)
    read, written = snapshot(mrml, loaded, case.volume), snapshot(mrml, case.node, case.volume)
    assert [row[:1] + row[3:] for row in read] == [row[:1] + row[3:] for row in written]  # IDs, tags, voxels
    np.testing.assert_allclose([row[2] for row in read], [row[2] for row in written], atol=1e-6)  # colours
    assert [row[1] for row in read] == [row[1] for row in written]
    terminology = [si.segment_tag(s, "TerminologyEntry") for s in segments(loaded)]
    assert terminology == [segment_info(label, name)[2] for label, name in case.label_map.items()]


def test_seg_nrrd_checks_the_path(mrml, small_case, tmp_path):
    with pytest.raises(ValueError, match=".seg.nrrd"):
        seg_nrrd.save_seg_nrrd(small_case.node, tmp_path / "result.nrrd")
    seg_nrrd.save_seg_nrrd(small_case.node, tmp_path / "result.seg.nrrd")
    with pytest.raises(OutputExistsError):
        seg_nrrd.save_seg_nrrd(small_case.node, tmp_path / "result.seg.nrrd")


# --------------------------------------------------------------------------------------------------
# statistics_table
# --------------------------------------------------------------------------------------------------


def column_values(table_node, name: str) -> list:
    column = table_node.GetTable().GetColumnByName(name)
    return [column.GetValue(row) for row in range(column.GetNumberOfValues())]


def test_statistics_table_columns_types_and_values(mrml):
    stats = {"liver": {"volume": 1523456.5, "intensity": 61.25}, "spleen": {"volume": 0.0, "intensity": 0.0},
             "kidney_left": {"volume": 170250.0, "intensity": 152.12345}}
    table = statistics_table.statistics_to_table(mrml.scene, stats, display_names={"liver": "Liver"})
    assert table.GetScene() is mrml.scene
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == [
        "Segment", "Volume [mm3]", "Volume [mL]", "Mean intensity"]
    assert table.GetTable().GetColumnByName("Segment").IsA("vtkStringArray")
    for name in ("Volume [mm3]", "Volume [mL]", "Mean intensity"):
        assert table.GetTable().GetColumnByName(name).GetDataType() == vtk.VTK_DOUBLE
        assert table.GetColumnType(name) == vtk.VTK_DOUBLE
    assert column_values(table, "Segment") == ["Liver", "spleen", "kidney_left"]
    assert column_values(table, "Volume [mm3]") == [1523456.5, 0.0, 170250.0]
    np.testing.assert_allclose(column_values(table, "Volume [mL]"), [1523.4565, 0.0, 170.25], rtol=1e-15)
    assert column_values(table, "Mean intensity") == [61.25, 0.0, 152.12345]
    assert table.GetColumnUnitLabel("Volume [mL]") == "mL"

    again = statistics_table.statistics_to_table(mrml.scene, {"liver": stats["liver"]}, table_node=table)
    assert again is table and table.GetNumberOfRows() == 1 and table.GetNumberOfColumns() == 4


def test_statistics_table_from_engine_statistics(mrml, data_dir):
    ct, seg = nib.load(data_dir / "example_ct_sm.nii.gz"), nib.load(data_dir / "example_seg.nii.gz")
    label_map = imageio.read_label_map(seg)
    stats = compute_statistics(np.asanyarray(seg.dataobj), np.asanyarray(ct.dataobj), ct.header.get_zooms()[:3],
                               label_map)
    table = statistics_table.statistics_to_table(mrml.scene, stats)
    assert table.GetNumberOfRows() == len(label_map)
    row = list(label_map.values()).index("liver")
    assert table.GetTable().GetValueByName(row, "Volume [mm3]").ToDouble() == stats["liver"]["volume"]
    assert table.GetTable().GetValueByName(row, "Mean intensity").ToDouble() == stats["liver"]["intensity"]


# --------------------------------------------------------------------------------------------------
# sequences
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def volume_sequence(mrml):
    """A 3-frame volume sequence (time 0, 1.5, 3 s) in a browser, its proxy under a linear transform."""
    sequence = mrml.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("s")
    sequence.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
    for frame, time in enumerate(("0", "1.5", "3")):
        data = slicer.vtkMRMLScalarVolumeNode()
        slicer.util.updateVolumeFromArray(data, np.full((6, 5, 4), frame, np.int16))
        data.SetIJKToRASMatrix(array_to_matrix(oblique_matrix()))
        sequence.SetDataNodeAtValue(data, time)
    browser = mrml.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cine browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    mrml.sequences.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    transform = np.eye(4)
    transform[:3, 3] = (10, 20, 30)
    proxy.SetAndObserveTransformNodeID(linear_transform(mrml.scene, transform).GetID())
    return SimpleNamespace(sequence=sequence, browser=browser, proxy=proxy, transform=transform)


def test_frames_of_a_plain_volume_are_empty(mrml, small_case):
    assert sequences.frames_of(mrml.scene, small_case.volume) == []
    assert sequences.browser_of(mrml.scene, small_case.volume) is None


def test_frames_of_a_sequence_proxy(mrml, volume_sequence):
    frames = sequences.frames_of(mrml.scene, volume_sequence.proxy)
    assert [(f.index, f.index_value) for f in frames] == [(0, "0"), (1, "1.5"), (2, "3")]
    assert [int(slicer.util.arrayFromVolume(f.volume).max()) for f in frames] == [0, 1, 2]
    assert sequences.browser_of(mrml.scene, volume_sequence.proxy) is volume_sequence.browser
    assert sequences.sequence_of(mrml.scene, volume_sequence.proxy) is volume_sequence.sequence


def test_frame_export_uses_the_proxy_transform(mrml, volume_sequence, tmp_path):
    frame = sequences.frames_of(mrml.scene, volume_sequence.proxy)[1]
    path = export_volume(frame.volume, tmp_path / "frame.nrrd", transform_source=volume_sequence.proxy)
    image = imageio.read_image(path)
    assert np.array_equal(np.asanyarray(image.dataobj), np.ones((4, 5, 6), np.int16))
    np.testing.assert_allclose(image.affine, volume_sequence.transform @ oblique_matrix(), rtol=0, atol=1e-9)


def frame_results(mrml, volume_sequence, shift: int = 0) -> dict:
    """Per-frame segmentations as the job would build them: frame k has k + 1 + shift slices of 'liver'."""
    results = {}
    for frame in sequences.frames_of(mrml.scene, volume_sequence.proxy):
        labels = np.zeros((4, 5, 6), np.uint8)
        labels[:, :, : frame.index + 1 + shift] = 1
        labels[3, 4, 5] = 2
        world = ijk_to_world(frame.volume, volume_sequence.proxy)
        results[frame.index_value] = si.build_segmentation_node(
            labels, frame.volume, {1: "liver", 2: "spleen"}, "total", segment_info, affine=world,
            transform_source=volume_sequence.proxy)
    return results


def test_segmentation_sequence_follows_the_volume_frames(mrml, volume_sequence):
    output = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "cine segmentation")
    output.CreateDefaultDisplayNodes()
    seg_sequence = sequences.assemble_segmentation_sequence(
        mrml.scene, volume_sequence.proxy, frame_results(mrml, volume_sequence), output, mrml.sequences)

    browser = volume_sequence.browser
    frame_node = seg_sequence.GetNthDataNode(1)
    geometry = frame_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert geometry == slicer.vtkSegmentationConverter.SerializeImageGeometry(
        array_to_matrix(oblique_matrix()), volume_sequence.sequence.GetNthDataNode(1).GetImageData())
    assert browser.IsSynchronizedSequenceNodeID(seg_sequence.GetID())
    assert browser.GetProxyNode(seg_sequence) is output
    assert seg_sequence.GetIndexName() == "time" and seg_sequence.GetIndexUnit() == "s"
    assert [seg_sequence.GetNthIndexValue(i) for i in range(3)] == ["0", "1.5", "3"]
    for item in range(3):
        browser.SetSelectedItemNumber(item)
        frame_volume = volume_sequence.sequence.GetNthDataNode(item)
        liver = output.GetSegmentation().GetSegmentIdBySegmentName("Liver")
        mask = segment_on_volume(mrml, output, liver, frame_volume)
        assert mask.sum() == 4 * 5 * (item + 1)
        segment = output.GetSegmentation().GetSegment(liver)
        assert si.segment_tag(segment, si.TASK_TAG) == "total"

    again = sequences.assemble_segmentation_sequence(
        mrml.scene, volume_sequence.proxy, frame_results(mrml, volume_sequence, shift=1), output, mrml.sequences)
    assert again is seg_sequence and seg_sequence.GetNumberOfDataNodes() == 3
    browser.SetSelectedItemNumber(0)
    liver = output.GetSegmentation().GetSegmentIdBySegmentName("Liver")
    assert segment_on_volume(mrml, output, liver, volume_sequence.sequence.GetNthDataNode(0)).sum() == 4 * 5 * 2


def test_segmentation_sequence_refuses_unknown_frames_and_plain_volumes(mrml, volume_sequence, small_case):
    output = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    results = frame_results(mrml, volume_sequence)
    with pytest.raises(InvalidInputError, match="index value"):
        sequences.assemble_segmentation_sequence(mrml.scene, volume_sequence.proxy, {"7": results["0"]}, output)
    with pytest.raises(InvalidInputError, match="not shown by a sequence browser"):
        sequences.segmentation_sequence_for(mrml.scene, small_case.volume, output)
    assert volume_sequence.browser.GetNumberOfSynchronizedSequenceNodes() == 0
