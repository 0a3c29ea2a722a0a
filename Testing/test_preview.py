"""The headless PNG preview: file format, orientation, colours, placement and atomic writing."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from totalseg_engine.outputs import preview
from totalseg_engine.tasks import get_task
from totalseg_engine.terminology import entry

LIVER = 5
CUBE = np.ones((3, 3, 3), dtype=bool)
"""One voxel of slack in every direction, diagonals included: the two nearest-neighbour resizes may differ."""


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB PNG without row filters (what :func:`preview.encode_png` writes) as an array.

    Written here rather than borrowed from Pillow, so the check needs nothing beyond the standard library
    and verifies the chunk CRCs too.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat += payload
        pos += 12 + length
    assert kind == b"IEND" and header is not None
    width, height, depth, color_type = header[:4]
    assert (depth, color_type) == (8, 2)
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, width * 3 + 1)
    assert not rows[:, 0].any()  # filter type 0 on every row
    return rows[:, 1:].reshape(height, width, 3)


def chroma(rgb: np.ndarray) -> np.ndarray:
    """(R-G, G-B): zero for grey, alpha times the segment colour's chroma for a blended pixel."""
    rgb = rgb.astype(np.int32)
    return np.stack([rgb[..., 0] - rgb[..., 1], rgb[..., 1] - rgb[..., 2]], axis=-1)


def carries(rgb: np.ndarray, color: tuple[int, int, int], tol: float = 1.5) -> np.ndarray:
    """Pixels blended with ``color`` at the fill or outline opacity (the grey underneath cancels out)."""
    target = chroma(np.array(color, dtype=np.uint8))
    found = chroma(rgb)
    hit = np.zeros(rgb.shape[:2], dtype=bool)
    for alpha in (preview.FILL_ALPHA, preview.OUTLINE_ALPHA):
        hit |= (np.abs(found - alpha * target) <= tol).all(axis=-1)
    return hit


def coloured(rgb: np.ndarray) -> np.ndarray:
    return (chroma(rgb) != 0).any(axis=-1)


def panel(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    row, col, height, width = box
    return rgb[row:row + height, col:col + width]


def fit(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2D mask (independent of the module's resampling)."""
    rows = (np.arange(shape[0]) * mask.shape[0] // shape[0]).clip(0, mask.shape[0] - 1)
    cols = (np.arange(shape[1]) * mask.shape[1] // shape[1]).clip(0, mask.shape[1] - 1)
    return mask[rows][:, cols]


def radiological(plane: np.ndarray) -> np.ndarray:
    """(RAS axis a, RAS axis b) -> rows b descending, columns a descending."""
    return np.flipud(np.fliplr(plane.T))


# --------------------------------------------------------------------------------------------------
# Synthetic volumes
# --------------------------------------------------------------------------------------------------

SPACING = (1.0, 2.0, 3.0)
SHAPE = (60, 40, 30)  # 60 x 80 x 90 mm


def synthetic(axcodes: str = "RAS") -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A CT 'body' box with one labelled block at the patient's right, anterior and superior.

    Built in RAS and then stored in ``axcodes`` order, so every orientation shows the same anatomy.
    """
    ct = np.full(SHAPE, -1000, dtype=np.int16)
    ct[5:55, 5:35, 2:28] = 40
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[40:50, 25:32, 20:26] = LIVER  # high i = right, high j = anterior, high k = superior
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-30.0, 12.0, 100.0)
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                nib.orientations.axcodes2ornt(tuple(axcodes)))
    return (nib.Nifti1Image(ct, affine).as_reoriented(transform),
            nib.Nifti1Image(seg, affine).as_reoriented(transform))


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "SPL", "AIR"])
def test_block_appears_at_its_anatomical_position(axcodes: str) -> None:
    ct, seg = synthetic(axcodes)
    assert nib.aff2axcodes(ct.affine) == tuple(axcodes)
    result = preview.render_preview(ct, seg, {LIVER: "liver"})
    liver = entry("liver").color
    for name in preview.PANELS:
        view = panel(result.rgb, result.panels[name])
        rows, cols = np.nonzero(carries(view, liver))
        assert rows.size, name
        # coronal/axial: patient's right on the left; sagittal: anterior on the left; superior (anterior) up
        assert cols.mean() < view.shape[1] / 2, name
        assert rows.mean() < view.shape[0] / 2, name
        assert not (coloured(view) & ~carries(view, liver)).any(), name


def test_projection_shows_the_segment_nearest_the_viewer() -> None:
    """Coronal is seen from the front, sagittal from the patient's left: the nearer segment covers the other."""
    ct, _ = synthetic()
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[20:40, 30:35, 10:20] = 1  # anterior
    seg[20:40, 8:13, 10:20] = 2  # posterior, behind it
    seg[10:14, 15:25, 22:27] = 3  # patient's left
    seg[45:50, 15:25, 22:27] = 4  # patient's right, behind it from the left
    names = {1: "spleen", 2: "aorta", 3: "liver", 4: "stomach"}
    result = preview.render_preview(ct, nib.Nifti1Image(seg, ct.affine), names)
    coronal = panel(result.rgb, result.panels["coronal"])
    sagittal = panel(result.rgb, result.panels["sagittal"])
    assert carries(coronal, entry("spleen").color).any() and not carries(coronal, entry("aorta").color).any()
    assert carries(sagittal, entry("liver").color).any() and not carries(sagittal, entry("stomach").color).any()


def test_panels_have_physical_aspect() -> None:
    ct, seg = synthetic("LPS")
    result = preview.render_preview(ct, seg, {LIVER: "liver"}, size=180)
    extent = {"coronal": (90, 60), "sagittal": (90, 80), "axial": (80, 60)}  # (height, width) in mm
    mm = 90 / 180
    for name, (height, width) in extent.items():
        assert result.panels[name][2:] == (round(height / mm), round(width / mm)), name


def test_colors_override_and_palette() -> None:
    ct, seg = synthetic()
    data = np.asanyarray(seg.dataobj).copy()
    data[10:15, 10:15, 10:15] = 7  # a label the map does not name
    seg = nib.Nifti1Image(data, seg.affine)
    result = preview.render_preview(ct, seg, {LIVER: "liver"}, colors={"liver": (0.0, 1.0, 0.0)})
    axial = panel(result.rgb, result.panels["coronal"])
    assert carries(axial, (0, 255, 0)).any()
    assert not carries(axial, entry("liver").color).any()
    assert carries(axial, preview.palette_color(7)).any()
    assert preview.palette_color(7) == preview.palette_color(7)
    assert preview.class_color("not_a_class", 3) == preview.palette_color(3)


def test_mismatched_grids_are_refused() -> None:
    ct, seg = synthetic()
    shifted = nib.Nifti1Image(np.asanyarray(seg.dataobj), seg.affine @ np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError):
        preview.render_preview(ct, shifted, {LIVER: "liver"})
    with pytest.raises(ValueError):
        preview.render_preview(nib.Nifti1Image(np.zeros((4, 4, 4, 2)), np.eye(4)), seg, {})


def test_png_encoding_round_trips() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    data = preview.encode_png(rgb)
    assert np.array_equal(decode_png(data), rgb)


def test_pillow_reads_the_png(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    ct, seg = synthetic()
    path = preview.write_preview(ct, seg, {LIVER: "liver"}, tmp_path / "preview_total.png")
    with image_module.open(path) as png:
        assert png.mode == "RGB"
        assert np.array_equal(np.asarray(png), decode_png(path.read_bytes()))


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    ct, seg = synthetic()
    target = tmp_path / "sub" / "preview_total.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    assert preview.write_preview(ct, seg, {LIVER: "liver"}, target) == target
    assert decode_png(target.read_bytes()).shape[2] == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["preview_total.png"]
    bad = nib.Nifti1Image(np.zeros((5, 5, 5), dtype=np.uint8), np.eye(4))
    before = target.read_bytes()
    with pytest.raises(ValueError):
        preview.write_preview(ct, bad, {LIVER: "liver"}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["preview_total.png"]


# --------------------------------------------------------------------------------------------------
# The real example CT and its official segmentation
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    ct_path, seg_path = data_dir / "example_ct_sm.nii.gz", data_dir / "example_seg.nii.gz"
    classes = get_task("total").classes
    out = preview.write_preview(ct_path, seg_path, classes, tmp_path_factory.mktemp("preview") / "preview_total.png")
    ct = nib.as_closest_canonical(nib.load(ct_path))
    seg = nib.as_closest_canonical(nib.load(seg_path))
    return {
        "png": decode_png(out.read_bytes()),
        "render": preview.render_preview(ct_path, seg_path, classes),
        "ct": np.asanyarray(ct.dataobj),
        "seg": np.asanyarray(seg.dataobj),
        "zooms": ct.header.get_zooms()[:3],
    }


def test_example_png_matches_render_and_aspect(example: dict) -> None:
    png, render = example["png"], example["render"]
    assert np.array_equal(png, render.rgb)
    sx, sy, sz = (float(z) for z in example["zooms"])
    nx, ny, nz = example["ct"].shape
    for name, (height_mm, width_mm) in {"coronal": (nz * sz, nx * sx), "sagittal": (nz * sz, ny * sy),
                                        "axial": (ny * sy, nx * sx)}.items():
        height, width = render.panels[name][2:]
        assert width / height == pytest.approx(width_mm / height_mm, rel=0.02), name
    assert max(render.panels["coronal"][3], render.panels["coronal"][2]) == preview.DEFAULT_SIZE


def test_example_liver_colour_and_place(example: dict) -> None:
    png, render, seg = example["png"], example["render"], example["seg"]
    liver_color = entry("liver").color
    liver = ndimage.binary_dilation(seg == LIVER, CUBE)
    footprints = {"coronal": radiological(liver.any(axis=1)), "axial": None}
    k = np.flatnonzero((seg > 0).any(axis=(0, 1)))
    footprints["axial"] = radiological(liver[:, :, (k[0] + k[-1]) // 2])
    for name, footprint in footprints.items():
        view = panel(png, render.panels[name])
        hits = carries(view, liver_color)
        assert hits.sum() > 200, name
        assert not (hits & ~fit(footprint, view.shape[:2])).any(), name
        # the liver is in the patient's right, shown on the image's left
        assert np.nonzero(hits)[1].mean() < view.shape[1] / 2, name


def test_example_nothing_coloured_outside_the_body(example: dict) -> None:
    png, render, ct = example["png"], example["render"], example["ct"]
    body = ndimage.binary_dilation(ct > -300, CUBE)
    k = np.flatnonzero((example["seg"] > 0).any(axis=(0, 1)))
    footprints = {"coronal": radiological(body.any(axis=1)),
                  "sagittal": radiological(body.any(axis=0)),
                  # lungs and bowel gas are air inside the body: the slice's body is its outline filled
                  "axial": radiological(ndimage.binary_fill_holes(body[:, :, (k[0] + k[-1]) // 2]))}
    outside = np.ones(png.shape[:2], dtype=bool)
    for name, footprint in footprints.items():
        row, col, height, width = render.panels[name]
        view_coloured = coloured(png[row:row + height, col:col + width])
        assert view_coloured.any(), name
        assert not (view_coloured & ~fit(footprint, (height, width))).any(), name
        outside[row:row + height, col:col + width] = False
    assert not coloured(png)[outside].any()  # gaps, caption strip and padding stay grey
