"""DICOM SEG and RTSTRUCT outputs of a DICOM input, through the API and the command line.

The official segmentation of the DICOM test series, put on the grid the engine reads the series onto (as a
run returns it), is written through ``write_result`` and read back: the SEG with highdicom (its coding is
pinned in ``test_terminology.py``), the RTSTRUCT with pydicom, its contours filled again and compared with
the masks slice by slice. The command line runs a small random-weights model on the series.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from model_factory import NetworkSize, write_task_models
from totalseg_engine import api, case, imageio, terminology
from totalseg_engine.cli import main as cli
from totalseg_engine.core import pipeline
from totalseg_engine.errors import InvalidOptionError, OutputExistsError, TotalSegmentatorError
from totalseg_engine.outputs import dicom as dicom_output
from totalseg_engine.outputs.targets import DICOM_INPUT_NEEDED, DICOM_OUTPUT_TYPES
from totalseg_engine.outputs.write import write_result
from totalseg_engine.weights import paths

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
draw = pytest.importorskip("skimage.draw")

SMALL_3MM = NetworkSize(features=(2, 4, 8), patch_size=(64, 64, 64))
MIN_DICE = 0.95
MIN_PIXELS = 10  # Dice says little about smaller masks (all must still fill back exactly)


@pytest.fixture(scope="module")
def series(data_dir) -> Path:
    folder = data_dir / "example_ct_dicom"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    return folder


@pytest.fixture(scope="module")
def instances(series) -> dict:
    """The series' instances by SOP instance UID (the anonymised files keep it in their meta header only)."""
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(series.iterdir())]
    return {str(dataset.file_meta.MediaStorageSOPInstanceUID): dataset for dataset in datasets}


@pytest.fixture(scope="module")
def official(data_dir, series) -> pipeline.Result:
    """The official example_seg_dicom.nii.gz on the engine's grid of the series, as a run's result."""
    seg = nib.load(data_dir / "example_seg_dicom.nii.gz")
    grid = imageio.read_image(series)
    labels = np.asanyarray(imageio.reorient_to_grid(seg, grid).dataobj)
    return pipeline.Result(pipeline.labels_image(labels, grid), imageio.read_label_map(seg))


@pytest.fixture(scope="module")
def written(tmp_path_factory, series, official) -> dict[str, Path]:
    """The SEG written from the folder, the RTSTRUCT from a zip holding the series one folder down."""
    out = tmp_path_factory.mktemp("dicom_outputs")
    archive = out / "series.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        for path in series.iterdir():
            packed.write(path, f"ct/{path.name}")
    targets = {"dicom_seg": (out / "seg.dcm", series), "dicom_rtstruct": (out / "rtstruct.dcm", archive)}
    for output_type, (path, source) in targets.items():
        write_result(official, path, ml=False, output_type=output_type, overwrite=False, source=source)
    return {output_type: path for output_type, (path, _) in targets.items()}


def present_labels(result: pipeline.Result) -> list[int]:
    return sorted(int(v) for v in np.unique(result.data) if v and int(v) in result.label_map)


def slice_index(dataset, affine: np.ndarray) -> int:
    """The engine-grid slice an instance is, found from its position alone (its first pixel is voxel (0, 0, k))."""
    voxel = nib.affines.apply_affine(np.linalg.inv(affine), lps_to_ras(np.asarray(dataset.ImagePositionPatient)))
    np.testing.assert_allclose(voxel, np.round(voxel), atol=1e-3)
    assert voxel[0] == pytest.approx(0, abs=1e-3) and voxel[1] == pytest.approx(0, abs=1e-3)
    return int(round(voxel[2]))


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=float) * [-1.0, -1.0, 1.0]


def assert_seg_frames_are_the_labels(seg, result: pipeline.Result, instances: dict) -> None:
    """Every source instance is referenced and its frame holds the result's labels on that slice."""
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(instances)
    present = present_labels(result)
    to_label = np.array([0, *present])
    uids = list(instances)
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    for frame, uid in zip(frames, uids):
        k = slice_index(instances[uid], result.image.affine)
        np.testing.assert_array_equal(to_label[frame], result.data[:, :, k].T)


# --------------------------------------------------------------------------------------------------
# DICOM SEG through the API
# --------------------------------------------------------------------------------------------------


def test_dicom_seg_through_the_api_holds_the_labels_on_the_source_frames(written, official, instances):
    seg = hd.seg.segread(written["dicom_seg"])
    labels = [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()]
    present = present_labels(official)
    assert len(present) == 31
    assert labels == [terminology.entry(official.label_map[label]).display_name for label in present]
    assert_seg_frames_are_the_labels(seg, official, instances)


# --------------------------------------------------------------------------------------------------
# RTSTRUCT
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rtstruct(written):
    return pydicom.dcmread(written["dicom_rtstruct"])


def test_rtstruct_is_a_structure_set_of_the_source_study_series_and_frame(rtstruct, written, instances):
    seg = hd.seg.segread(written["dicom_seg"])  # identifiers the anonymised series lacks are derived alike
    first = next(iter(instances.values()))
    assert rtstruct.SOPClassUID == rtstruct.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert rtstruct.file_meta.MediaStorageSOPInstanceUID == rtstruct.SOPInstanceUID
    assert rtstruct.Modality == "RTSTRUCT" and rtstruct.StudyInstanceUID == seg.StudyInstanceUID
    assert rtstruct.SeriesInstanceUID not in (seg.SeriesInstanceUID, seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == seg.StudyInstanceUID
    referenced = study.RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert sorted(item.ReferencedSOPInstanceUID for item in referenced.ContourImageSequence) == sorted(instances)


def test_rtstruct_has_one_named_coloured_roi_per_class_present(rtstruct, official):
    present = present_labels(official)
    entries = [terminology.entry(official.label_map[label]) for label in present]
    numbers = list(range(1, len(present) + 1))
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == [item.display_name for item in entries]
    assert [roi.ROINumber for roi in rtstruct.StructureSetROISequence] == numbers
    assert {roi.ReferencedFrameOfReferenceUID for roi in rtstruct.StructureSetROISequence} == {
        rtstruct.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID}
    assert [roi.ReferencedROINumber for roi in rtstruct.ROIContourSequence] == numbers
    assert [tuple(roi.ROIDisplayColor) for roi in rtstruct.ROIContourSequence] == [item.color for item in entries]
    assert [item.ReferencedROINumber for item in rtstruct.RTROIObservationsSequence] == numbers


def contour_voxels(contour, affine: np.ndarray) -> np.ndarray:
    """A contour's points as (x, y, z) voxel coordinates of the engine's grid."""
    assert contour.ContourGeometricType == "CLOSED_PLANAR"
    points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
    assert len(points) == contour.NumberOfContourPoints >= 3
    return nib.affines.apply_affine(np.linalg.inv(affine), lps_to_ras(points))


def assert_on_or_inside(voxels: np.ndarray, mask: np.ndarray) -> None:
    """Each vertex touches a mask pixel: it is a pixel centre or lies on the edge between mask pixels."""
    low, high = np.floor(voxels + 1e-3).astype(int), np.ceil(voxels - 1e-3).astype(int)  # DS keeps 0.1 µm
    touching = np.zeros(len(voxels), dtype=bool)
    for x in (low[:, 0], high[:, 0]):
        for y in (low[:, 1], high[:, 1]):
            inside = (x >= 0) & (y >= 0) & (x < mask.shape[0]) & (y < mask.shape[1])
            touching[inside] |= mask[x[inside], y[inside]]
    assert touching.all(), voxels[~touching]


def contours_by_slice(roi, instances: dict, affine: np.ndarray) -> dict[int, list[np.ndarray]]:
    """The ROI's contours as (x, y) voxel coordinates by slice, each checked to lie on the slice it references."""
    by_slice: dict[int, list[np.ndarray]] = {}
    for contour in roi.ContourSequence:
        voxels = contour_voxels(contour, affine)
        k = slice_index(instances[contour.ContourImageSequence[0].ReferencedSOPInstanceUID], affine)
        np.testing.assert_allclose(voxels[:, 2], k, atol=1e-3)
        by_slice.setdefault(k, []).append(voxels[:, :2])
    return by_slice


def fill(outlines: list[np.ndarray], shape: tuple) -> np.ndarray:
    """The outlines of one slice rasterised with the even-odd rule (an inner contour is a hole)."""
    mask = np.zeros(shape, dtype=bool)
    for outline in outlines:
        mask[draw.polygon(outline[:, 0], outline[:, 1], shape)] ^= True
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_rtstruct_contours_fill_back_to_the_masks_on_their_slices(rtstruct, official, instances):
    affine, labels = official.image.affine, official.data
    exact = total = 0
    for roi, label in zip(rtstruct.ROIContourSequence, present_labels(official)):
        by_slice = contours_by_slice(roi, instances, affine)
        masks = {k: labels[:, :, k] == label for k in range(labels.shape[2])}
        masks = {k: mask for k, mask in masks.items() if mask.any()}
        assert set(by_slice) == set(masks), official.label_map[label]
        for k, outlines in by_slice.items():
            for outline in outlines:
                assert_on_or_inside(outline, masks[k])
            filled = fill(outlines, masks[k].shape)
            if np.count_nonzero(masks[k]) >= MIN_PIXELS:
                assert dice(filled, masks[k]) >= MIN_DICE, (official.label_map[label], k, dice(filled, masks[k]))
            exact += np.array_equal(filled, masks[k])
            total += 1
    assert exact == total == 520  # outlines on the pixel edges fill back to the very pixels


def test_rtstruct_can_keep_class_names_and_never_overwrites_unasked(tmp_path, series, official):
    path = dicom_output.write_rtstruct(official.image, official.label_map, series, tmp_path / "rt.dcm",
                                       use_standard_names=False)
    names = [roi.ROIName for roi in pydicom.dcmread(path).StructureSetROISequence]
    assert names == [official.label_map[label] for label in present_labels(official)]
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        dicom_output.write_rtstruct(official.image, official.label_map, series, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["rt.dcm"]


def test_rtstruct_keeps_contours_longer_than_explicit_vr_allows(tmp_path, series, official):
    """A jagged outline (steep staircase strips joined by two bars) with far more than 64 kB of coordinates."""
    labels = np.zeros(official.data.shape, dtype=np.uint8)
    rows, columns = np.mgrid[:400, :400]
    labels[:400, :400, 10] = ((columns - rows // 3) % 6 < 3) | (rows == 0) | (columns == 0)
    path = dicom_output.write_rtstruct(labels, {1: "spleen"}, series, tmp_path / "rt.dcm")
    [contour] = pydicom.dcmread(path).ROIContourSequence[0].ContourSequence
    assert contour["ContourData"].VR == "DS" and len(contour.ContourData) == 3 * contour.NumberOfContourPoints
    assert len(",".join(map(str, contour.ContourData))) > 65536


# --------------------------------------------------------------------------------------------------
# Refusals and the command line
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", [dicom_output.write_dicom_seg, dicom_output.write_rtstruct])
def test_an_empty_segmentation_is_refused_not_written_invalid(tmp_path, series, official, writer):
    with pytest.raises(TotalSegmentatorError, match="cannot be empty"):
        writer(np.zeros(official.data.shape, np.uint8), official.label_map, series, tmp_path / "out.dcm")
    assert not any(tmp_path.iterdir())


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty weights cache that nothing can be downloaded into."""
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", "http://127.0.0.1:9/{version}/{folder}.zip")
    return tmp_path / "home"


@pytest.mark.parametrize("output_type", DICOM_OUTPUT_TYPES)
def test_dicom_output_of_a_nifti_input_is_refused_before_any_work(home, data_dir, tmp_path, capsys, output_type):
    out = tmp_path / "seg.dcm"
    code = cli.main(["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(out), "-ot", output_type, "-d", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and DICOM_INPUT_NEEDED in err and "Traceback" not in err
    assert not out.exists() and not home.exists()  # no weights were looked for


def test_api_refuses_dicom_output_of_an_image_object(tmp_path, data_dir, official):
    def no_model(*_args):
        pytest.fail("a model was loaded")

    image = nib.load(data_dir / "example_ct_sm.nii.gz")
    with pytest.raises(InvalidOptionError, match="Dicom image as input"):
        api.totalsegmentator(image, tmp_path / "seg.dcm", output_type="dicom_seg", runner_factory=no_model)
    with pytest.raises(InvalidOptionError, match="Dicom image as input"):
        write_result(official, tmp_path / "rt.dcm", ml=False, output_type="dicom_rtstruct", overwrite=False)
    assert not any(tmp_path.iterdir())


def test_command_line_writes_a_dicom_seg_of_a_dicom_folder(home, series, instances, tmp_path, monkeypatch, capsys):
    write_task_models(paths.weights_dir(), "total", "fast", SMALL_3MM, seed=5)
    results = []

    def keep_result(result, *args, **kwargs):
        results.append(result)
        write_result(result, *args, **kwargs)

    monkeypatch.setattr(case, "write_result", keep_result)
    out = tmp_path / "seg.dcm"
    code = cli.main(["-i", str(series), "-o", str(out), "-ot", "dicom_seg", "--fast", "-d", "cpu", "--offline"])
    assert code == 0, capsys.readouterr().err
    [result] = results
    seg = hd.seg.segread(out)
    assert len(seg.get_segment_numbers()) == len(present_labels(result)) > 1
    assert_seg_frames_are_the_labels(seg, result, instances)
