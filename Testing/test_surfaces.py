"""Surface output (-ot stl / -ot obj): closed, on the mask's boundary, in the input's world, and what Slicer makes.

The masks are the official model's own segmentation of the real example CT (``example_seg.nii.gz``: 117 classes,
thin ribs and vessels, structures cut by the image border) and small synthetic shapes whose answer is known.
Slicer's answer comes from slicer-core: its labelmap reader, its segmentation's closed-surface conversion with the
default parameters, and its model reader for our files.
"""

from __future__ import annotations

import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree
from totalseg_engine import get_task
from totalseg_engine.cli import main as cli
from totalseg_engine.errors import OutputExistsError
from totalseg_engine.outputs import surfaces

vtk_numpy = pytest.importorskip("vtkmodules.util.numpy_support")
from vtkmodules.vtkFiltersCore import vtkFeatureEdges, vtkImplicitPolyDataDistance  # noqa: E402
from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkSTLReader  # noqa: E402

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ---------------------------------------------------------------- measuring a surface


def points_and_triangles(surface) -> tuple[np.ndarray, np.ndarray]:
    points = vtk_numpy.vtk_to_numpy(surface.GetPoints().GetData()).astype(float)
    triangles = vtk_numpy.vtk_to_numpy(surface.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    return points, triangles


def open_edges(surface) -> int:
    """Edges on fewer or more than two triangles: none on a closed (watertight) manifold surface."""
    edges = vtkFeatureEdges()
    edges.SetInputData(surface)
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    return edges.GetOutput().GetNumberOfLines()


def signed_volume(surface) -> float:
    """The enclosed volume, positive when the triangles are wound (and face) outwards."""
    points, triangles = points_and_triangles(surface)
    a, b, c = (points[triangles[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


def boundary_points(mask: np.ndarray) -> np.ndarray:
    """The centres of the voxel faces between the mask and the rest, in voxel indices."""
    padded = np.pad(mask, 1)
    faces = []
    for axis in range(3):
        step = np.diff(padded.astype(np.int8), axis=axis) != 0
        index = np.argwhere(step).astype(float) - 1
        index[:, axis] += 0.5
        faces.append(index)
    return np.concatenate(faces)


def distances_in_voxels(surface, mask: np.ndarray, to_world: np.ndarray) -> tuple[float, float]:
    """Mean distance, in voxels, from the surface's vertices to the mask's boundary, and from the boundary to the
    vertices (so that a surface covering part of the mask does not pass)."""
    points, _ = points_and_triangles(surface)
    voxels = nib.affines.apply_affine(np.linalg.inv(to_world), points)
    boundary = boundary_points(mask)
    return (float(cKDTree(boundary).query(voxels)[0].mean()), float(cKDTree(voxels).query(boundary)[0].mean()))


def distances_to_surface(points: np.ndarray, surface) -> np.ndarray:
    """Each point's distance to the nearest place on ``surface`` (its triangles, not only its vertices)."""
    distance = vtkImplicitPolyDataDistance()
    distance.SetInput(surface)
    return np.abs([distance.EvaluateFunction(point) for point in points])


def read_stl(path: Path):
    reader = vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader


# ---------------------------------------------------------------- shapes with a known answer


def ellipsoid_and_block(shape=(40, 30, 20)) -> np.ndarray:
    """Label 1: an ellipsoid plus a separate block; label 2: a cube in the image's corner (cut by the border)."""
    i, j, k = np.indices(shape)
    labels = np.zeros(shape, np.uint8)
    labels[(i - 20) ** 2 + (j - 15) ** 2 + (2 * (k - 10)) ** 2 < 100] = 1
    labels[30:38, 3:9, 2:6] = 1
    labels[:5, :5, :5] = 2
    return labels


AFFINE = np.array([[0.8, 0, 0, -10], [0, 0.8, 0, 20], [0, 0, 2.0, 5], [0, 0, 0, 1]])


def test_each_surface_is_closed_and_lies_on_its_masks_boundary():
    labels = ellipsoid_and_block()
    to_world = LPS @ AFFINE
    boxes = ndimage.find_objects(labels)
    for label in (1, 2):
        surface = surfaces.label_surface(labels, label, boxes[label - 1], to_world).mesh
        assert surface.GetNumberOfPolys() > 100 and open_edges(surface) == 0, label  # the cut cube is closed too
        there, back = distances_in_voxels(surface, labels == label, to_world)
        assert there < 1.0 and back < 1.0, (label, there, back)
        voxel_volume = (labels == label).sum() * abs(np.linalg.det(AFFINE[:3, :3]))
        assert 0.6 * voxel_volume < signed_volume(surface) < 1.05 * voxel_volume


def test_the_distance_check_fails_for_a_surface_off_the_mask():
    """The boundary measure itself. It takes the nearest voxel-face centre, so it reads about 0.35 voxels for a
    surface exactly on the boundary (an overestimate: passing it is stricter than the true mean distance); a mask
    moved by two voxels along each axis reads over one voxel."""
    labels = ellipsoid_and_block()
    shifted = np.roll(labels, (2, 2, 2), axis=(0, 1, 2))
    surface = surfaces.label_surface(shifted, 1, ndimage.find_objects(shifted)[0], np.eye(4)).mesh
    assert min(distances_in_voxels(surface, labels == 1, np.eye(4))) > 1.0


@pytest.mark.parametrize("flip", [(0,), (1,), (0, 1), (2,), (0, 1, 2)], ids=str)
def test_the_same_anatomy_stored_in_another_axis_order_gives_the_same_outward_surface(flip):
    """An LPS-stored image (i runs right to left) and its RAS-stored twin: same world surface, normals outwards."""
    labels = ellipsoid_and_block()
    orientation = np.array([[axis, -1 if axis in flip else 1] for axis in range(3)])
    stored = nib.orientations.apply_orientation(labels, orientation)
    affine = AFFINE @ nib.orientations.inv_ornt_aff(orientation, labels.shape)
    assert np.linalg.det(affine[:3, :3]) * np.linalg.det(AFFINE[:3, :3]) * (-1) ** len(flip) > 0
    reference = surfaces.label_surface(labels, 1, ndimage.find_objects(labels)[0], LPS @ AFFINE).mesh
    # as stored: the triangulation follows the walking direction, so the surfaces differ a little, both outwards
    as_stored = surfaces.label_surface(stored, 1, ndimage.find_objects(stored)[0], LPS @ affine).mesh
    assert signed_volume(as_stored) == pytest.approx(signed_volume(reference), rel=0.01)
    assert signed_volume(as_stored) > 0
    apart = distances_to_surface(points_and_triangles(as_stored)[0], reference)
    assert apart.mean() < 0.1 and apart.max() < 0.8, (apart.mean(), apart.max())  # mm; voxels 0.8 x 0.8 x 2
    # as written: the axes turned closest to RAS first, the same surface point for point
    canonical, canonical_affine = surfaces.closest_to_ras(stored, affine)
    assert np.allclose(canonical_affine, AFFINE)
    written = surfaces.label_surface(canonical, 1, ndimage.find_objects(canonical)[0], LPS @ canonical_affine).mesh
    assert np.array_equal(points_and_triangles(written)[0], points_and_triangles(reference)[0])
    assert signed_volume(written) > 0


def test_an_lps_stored_image_and_its_ras_twin_give_the_same_files(tmp_path):
    labels = ellipsoid_and_block()
    orientation = np.array([[0, -1], [1, -1], [2, 1]])
    stored = nib.orientations.apply_orientation(labels, orientation)
    affine = AFFINE @ nib.orientations.inv_ornt_aff(orientation, labels.shape)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    for name, (data, matrix) in {"ras": (labels, AFFINE), "lps": (stored, affine)}.items():
        surfaces.write_surfaces(data, nib.Nifti1Image(data, matrix), {1: "liver", 2: "spleen"}, tmp_path / name, "stl")
    for structure in ("liver", "spleen"):
        ras, lps = ((tmp_path / name / f"{structure}.stl").read_bytes() for name in ("ras", "lps"))
        assert ras == lps


def test_files_name_the_structure_and_lps_and_a_missing_class_gets_an_empty_surface(tmp_path):
    labels = ellipsoid_and_block()
    names = {1: "liver", 2: "spleen", 3: "kidney_left"}
    for kind in ("stl", "obj"):
        surfaces.write_surfaces(labels, nib.Nifti1Image(labels, AFFINE), names, tmp_path / kind, kind)
        assert sorted(p.name for p in (tmp_path / kind).iterdir()) == sorted(f"{n}.{kind}" for n in names.values())
    stl = read_stl(tmp_path / "stl" / "liver.stl")
    assert stl.GetHeader() == "TotalSegmentator liver SPACE=LPS smoothing=0.5"
    empty = (tmp_path / "stl" / "kidney_left.stl").read_bytes()
    assert len(empty) == 84 and struct.unpack("<I", empty[80:])[0] == 0 and empty.startswith(b"TotalSegmentator")
    obj = vtkOBJReader()
    obj.SetFileName(str(tmp_path / "obj" / "liver.obj"))
    obj.Update()
    assert "SPACE=LPS" in obj.GetComment()
    assert obj.GetOutput().GetNumberOfPolys() == stl.GetOutput().GetNumberOfPolys()
    centres = [points_and_triangles(reader.GetOutput())[0].mean(0) for reader in (obj, stl)]
    assert np.allclose(*centres, atol=1e-3)
    assert (tmp_path / "obj" / "kidney_left.obj").read_text().splitlines() == [
        "# TotalSegmentator kidney_left SPACE=LPS smoothing=0.5", "o kidney_left"]


def test_an_existing_folder_is_kept_unless_overwrite(tmp_path):
    labels = ellipsoid_and_block()
    out = tmp_path / "surfaces"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        surfaces.write_surfaces(labels, nib.Nifti1Image(labels, AFFINE), {1: "liver"}, out, "stl")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    surfaces.write_surfaces(labels, nib.Nifti1Image(labels, AFFINE), {1: "liver"}, out, "stl", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["liver.stl", "notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["surfaces"]  # no temporary left beside


# ---------------------------------------------------------------- the official model's segmentation of a real CT


@pytest.fixture(scope="module")
def real_segmentation(data_dir) -> nib.Nifti1Image:
    return nib.load(data_dir / "example_seg.nii.gz")


@pytest.fixture(scope="module")
def real_surfaces(real_segmentation, tmp_path_factory) -> Path:
    """Every class of the real segmentation written as STL files."""
    labels = np.asanyarray(real_segmentation.dataobj).astype(np.uint8)
    out = tmp_path_factory.mktemp("real") / "stl"
    return surfaces.write_surfaces(labels, real_segmentation, get_task("total").classes, out, "stl")


def smoothing_in_header(reader) -> float:
    return float(reader.GetHeader().rsplit("smoothing=", 1)[1])


def test_every_structure_of_a_real_segmentation_is_watertight_as_read_back(real_segmentation, real_surfaces):
    """Read back as any STL reader does (corners merged by position): closed, manifold, on the mask's boundary."""
    labels = np.asanyarray(real_segmentation.dataobj)
    classes = get_task("total").classes
    to_world = LPS @ real_segmentation.affine
    present = [label for label in classes if (labels == label).any()]
    assert len(present) > 30
    factors = {}
    for label in present:
        reader = read_stl(real_surfaces / f"{classes[label]}.stl")
        surface, factors[classes[label]] = reader.GetOutput(), smoothing_in_header(reader)
        assert open_edges(surface) == 0, classes[label]
        there, back = distances_in_voxels(surface, labels == label, to_world)
        assert there < 1.0 and back < 1.0, (classes[label], there, back)
        # outward; a structure of a few voxels shrinks to next to nothing under Slicer's smoothing, as in Slicer
        assert signed_volume(surface) > 0 or (labels == label).sum() < 8, classes[label]
    assert sum(factor == surfaces.SMOOTHING_FACTOR for factor in factors.values()) > 30
    absent = set(classes) - set(present)
    assert all(read_stl(real_surfaces / f"{classes[label]}.stl").GetOutput().GetNumberOfPolys() == 0
               for label in absent)


def test_a_structure_pinched_by_smoothing_is_smoothed_less_until_it_is_not(real_segmentation):
    """The pancreas of the example: Slicer's default smoothing puts distinct vertices on one position."""
    labels, affine = surfaces.closest_to_ras(np.asanyarray(real_segmentation.dataobj).astype(np.uint8),
                                             real_segmentation.affine)
    box = ndimage.find_objects(labels)[6]
    to_world = LPS @ affine
    with_default = surfaces.label_surface(labels, 7, box, to_world, surfaces.Smoothing(0.5))
    assert with_default.smoothing < 0.5 and not surfaces.pinched(with_default.mesh)
    forced = surfaces._in_world(surfaces._smoothed(surfaces._flying_edges(
        np.pad(labels[box] == 7, 1).astype(np.uint8), [part.start - 1 for part in box]), surfaces.Smoothing(0.5)),
        to_world)
    assert surfaces.pinched(forced) and open_edges(forced) == 0  # closed in memory, pinched as positions


# ---------------------------------------------------------------- against Slicer


def slicer_surfaces(mrml, source: Path, factor: float) -> dict:
    """Slicer's closed surfaces (RAS) of a label file: its labelmap reader, its conversion with ``factor``."""
    import slicer

    labelmap = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    storage = mrml.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(source))
    assert storage.ReadData(labelmap)
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    segmentation.GetSegmentation().SetConversionParameter("Smoothing factor", str(factor))
    assert segmentation.CreateClosedSurfaceRepresentation()
    found = {}
    for segment_id in segmentation.GetSegmentation().GetSegmentIDs():
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        found[segment.GetLabelValue()] = segmentation.GetClosedSurfaceInternalRepresentation(segment_id)
    return found


def test_surfaces_are_the_ones_slicer_makes_and_slicer_reads_our_files_in_place(mrml, data_dir, real_surfaces):
    """Each STL read back by Slicer's model storage node (which honours SPACE=LPS) equals, corner for corner, Slicer's
    own closed surface of the segment with the smoothing factor in the file's header."""
    import slicer

    classes = get_task("total").classes
    by_factor: dict[float, dict] = {}
    compared = 0
    for label, name in classes.items():
        reader = read_stl(real_surfaces / f"{name}.stl")
        if not reader.GetOutput().GetNumberOfPolys():
            continue
        factor = smoothing_in_header(reader)
        if factor not in by_factor:
            by_factor[factor] = slicer_surfaces(mrml, data_dir / "example_seg.nii.gz", factor)
        model = mrml.scene.AddNewNodeByClass("vtkMRMLModelNode")
        storage = mrml.scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
        storage.SetFileName(str(real_surfaces / f"{name}.stl"))
        assert storage.ReadData(model)
        assert storage.GetCoordinateSystem() == slicer.vtkMRMLStorageNode.CoordinateSystemLPS  # from the header
        ours, theirs = points_and_triangles(model.GetPolyData())[0], points_and_triangles(by_factor[factor][label])[0]
        distance, back = cKDTree(theirs).query(ours)[0], cKDTree(ours).query(theirs)[0]
        assert max(distance.max(), back.max()) < 1e-3, name
        compared += 1
    assert compared > 30 and len(by_factor) > 1  # the pinched ones too, at their own factor


# ---------------------------------------------------------------- from the command line


def test_without_vtk_the_command_says_what_to_install_before_any_work(tmp_path, capsys, monkeypatch, data_dir):
    monkeypatch.setattr(surfaces, "find_spec", lambda name: None if name == "vtkmodules" else object())
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))  # no weights: a run would fail on them
    argv = ["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "meshes"), "-ot", "stl", "--offline"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "needs VTK" in err and "[surfaces]" in err and "weights" not in err
    assert list(tmp_path.iterdir()) == []


def test_the_command_writes_surfaces_beside_other_outputs_and_refuses_a_file(tmp_path, capsys, monkeypatch,
                                                                             data_dir):
    """-ot stl through the whole command on release-shaped weights, -ot nifti obj side by side, a file refused."""
    from model_factory import SMALL_3MM, write_task_models
    from totalseg_engine.weights import paths

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    write_task_models(paths.weights_dir(), "total", "fast", SMALL_3MM, seed=5)
    argv = ["-i", str(data_dir / "example_ct_sm.nii.gz"), "--fast", "-d", "cpu", "--offline", "-q"]
    assert cli.main([*argv, "-o", str(tmp_path / "meshes"), "-ot", "stl", "-p"]) == 0, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "meshes").iterdir())
    assert names == sorted([f"{name}.stl" for name in get_task("total").classes.values()] + ["preview_total.png"])
    assert cli.main([*argv, "-o", str(tmp_path / "both" / "case"), "-ot", "nifti", "obj", "-s"]) == 0, \
        capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["case.nii.gz", "case_obj", "statistics.json"]
    assert len(list((tmp_path / "both" / "case_obj").glob("*.obj"))) == len(get_task("total").classes)
    (tmp_path / "taken").write_text("x")
    for name in ("liver.stl", "taken"):  # a file name, not a folder: refused before any work
        assert cli.main([*argv, "-o", str(tmp_path / name), "-ot", "stl"]) == 1
        assert "writes a folder with one .stl file per structure" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "x" and not (tmp_path / "liver.stl").exists()
