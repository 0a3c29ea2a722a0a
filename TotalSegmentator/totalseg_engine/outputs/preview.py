"""A PNG overview of a segmentation, rendered with numpy alone (no display, no Xvfb, no VTK).

The official ``--preview`` renders 3D surfaces with fury under Xvfb into ``preview_<task>.png``; that needs
a display server and an OpenGL stack that headless machines and Slicer's bundled Python lack. This module
draws what a person needs to check a result at a glance instead, as three panels side by side:

* coronal projection, seen from the front (patient's right on the image's left, superior up),
* sagittal projection, seen from the patient's left (anterior on the image's left, superior up),
* axial slice through the middle of the segmented extent, seen from the feet (patient's right on the
  image's left, anterior up),

the radiological convention Slicer and PACS viewers use. The grey image is the maximum-intensity
projection (CT windowed to [-500, 1000] HU, MR to its 1st-99th percentile); each projected pixel carries
the label of the segment nearest the viewer, drawn semi-transparent with an opaque outline in the
segment's terminology colour. Pixels are square in millimetres (projections are resampled by voxel
spacing), and a strip under each panel names its left and right sides.
"""

from __future__ import annotations

import colorsys
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import nibabel as nib
import numpy as np

from .. import terminology
from ..imageio import atomic_output, read_image, reorient_to_grid, same_grid

ImageSource = Union[nib.spatialimages.SpatialImage, str, Path]
Color = tuple[float, float, float]

CT_WINDOW = (-500.0, 1000.0)
"""HU shown from black to white: lungs stay dark, soft tissue mid-grey, bone white."""

MR_PERCENTILES = (1.0, 99.0)
"""MR has no absolute scale, so its window comes from the image's own intensity distribution."""

FILL_ALPHA = 0.5
"""Opacity of a segment's interior: the anatomy underneath stays readable."""

OUTLINE_ALPHA = 1.0
"""Opacity of a segment's outline, so touching segments of similar colour stay apart."""

DEFAULT_SIZE = 512
"""Pixels along the longest physical extent of the volume (all panels share this mm-per-pixel scale)."""

PANEL_GAP = 4
"""Black pixels between panels."""

PANELS = ("coronal", "sagittal", "axial")

_SIDE_LETTERS = {"coronal": ("R", "L"), "sagittal": ("A", "P"), "axial": ("R", "L")}

# 5x7 bitmaps of the side letters (rows top to bottom, bit 4 = leftmost column).
_GLYPHS = {
    "R": (0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001),
    "L": (0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111),
    "A": (0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001),
    "P": (0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000),
}
_LETTER_GREY = 200


@dataclass(frozen=True)
class Preview:
    """The rendered picture and where each panel lies in it.

    ``panels`` maps a panel name to ``(row, column, height, width)`` in ``rgb``; callers (tests, a GUI
    thumbnail) use it to find a view without re-deriving the layout.
    """

    rgb: np.ndarray
    panels: dict[str, tuple[int, int, int, int]]


# --------------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------------


def _load(source: ImageSource) -> nib.spatialimages.SpatialImage:
    return source if isinstance(source, nib.spatialimages.SpatialImage) else read_image(source)


def _spatial(img: nib.spatialimages.SpatialImage, what: str) -> nib.Nifti1Image:
    """A 3D NIfTI view of ``img``: trailing singleton axes dropped, anything else 3D refused."""
    shape = img.shape
    if len(shape) > 3 and all(n == 1 for n in shape[3:]):
        img = nib.Nifti1Image(np.asanyarray(img.dataobj).reshape(shape[:3]), img.affine)
    elif len(shape) != 3:
        raise ValueError(f"The {what} must be a 3D volume; its shape is {shape}.")
    if not isinstance(img, nib.Nifti1Image):
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    return img


def _integer_labels(data: np.ndarray) -> np.ndarray:
    """Labels as integers (a segmentation read with scaling or as float holds whole numbers)."""
    if data.dtype.kind in "iu":
        return data
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    return np.rint(data).astype(np.int32)


# --------------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------------


def _as_rgb255(color: Color) -> tuple[int, int, int]:
    """Accept 0..1 floats (Slicer, ``segment_info``) or 0..255 values."""
    values = [float(c) for c in color[:3]]
    if all(0.0 <= v <= 1.0 for v in values) and any(isinstance(c, float) for c in color[:3]):
        values = [v * 255.0 for v in values]
    return tuple(int(round(min(max(v, 0.0), 255.0))) for v in values)  # type: ignore[return-value]


def palette_color(label: int) -> tuple[int, int, int]:
    """A deterministic, saturated colour for a label without a terminology entry.

    Hues step by the golden ratio so consecutive labels differ strongly; the same label always gets the
    same colour, so previews of different runs compare.
    """
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def class_color(class_name: str, label: int, colors: Optional[Mapping[str, Color]] = None) -> tuple[int, int, int]:
    """The colour a class is drawn in: caller's choice, else the terminology colour, else the palette."""
    if colors and class_name in colors:
        return _as_rgb255(colors[class_name])
    try:
        return terminology.entry(class_name).color
    except KeyError:
        return palette_color(label)


def _color_table(max_label: int, label_map: Mapping[int, str],
                 colors: Optional[Mapping[str, Color]]) -> np.ndarray:
    table = np.zeros((max_label + 1, 3), dtype=np.float32)
    for label in range(1, max_label + 1):
        name = label_map.get(label)
        table[label] = class_color(name, label, colors) if name is not None else palette_color(label)
    return table


# --------------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------------


def _is_ct(data: np.ndarray) -> bool:
    """CT holds air at about -1000 HU; MR intensities are not negative to that extent."""
    step = max(1, int(round((data.size / 2_000_000) ** (1 / 3))))
    sample = data[::step, ::step, ::step]
    return float(np.percentile(sample, 0.5)) < -500.0


def _percentile_window(values: np.ndarray) -> tuple[float, float]:
    step = max(1, int(round((values.size / 2_000_000) ** (1 / values.ndim))))
    sample = values[(slice(None, None, step),) * values.ndim]
    low, high = np.percentile(sample, MR_PERCENTILES)
    return float(low), float(high) if high > low else float(low) + 1.0


def _to_grey(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return np.clip((values.astype(np.float32) - low) / max(high - low, 1e-6), 0.0, 1.0) * 255.0


def _front_labels(labels: np.ndarray, axis: int, from_high: bool) -> np.ndarray:
    """Per ray along ``axis``, the label of the first labelled voxel the viewer meets (0 if none)."""
    ordered = np.flip(labels, axis=axis) if from_high else labels
    hit = ordered > 0
    first = np.expand_dims(np.argmax(hit, axis=axis), axis)
    front = np.take_along_axis(ordered, first, axis=axis).squeeze(axis)
    return np.where(front > 0, front, 0)


def _display(plane: np.ndarray) -> np.ndarray:
    """(first axis, second axis) in RAS order -> image rows/columns in the radiological convention.

    Every view puts the second RAS axis (S for projections, A for the axial slice) at the top and the
    first axis' high end (patient's right, or anterior for the sagittal view) on the left.
    """
    return plane[::-1, ::-1].T


def _sample_positions(n_out: int, n_in: int, out_mm: float, in_mm: float) -> np.ndarray:
    """Fractional source indices of output pixel centres (both grids start at the same outer edge)."""
    positions = (np.arange(n_out, dtype=np.float64) + 0.5) * out_mm / in_mm - 0.5
    return np.clip(positions, 0.0, n_in - 1.0)


def _resample(plane: np.ndarray, shape: tuple[int, int], spacing: tuple[float, float], mm: float,
              linear: bool) -> np.ndarray:
    """Resample a 2D view to square ``mm`` pixels (linear for grey values, nearest for labels)."""
    rows = _sample_positions(shape[0], plane.shape[0], mm, spacing[0])
    cols = _sample_positions(shape[1], plane.shape[1], mm, spacing[1])
    if not linear:
        return plane[np.rint(rows).astype(np.intp)][:, np.rint(cols).astype(np.intp)]
    r0 = np.floor(rows).astype(np.intp)
    c0 = np.floor(cols).astype(np.intp)
    r1 = np.minimum(r0 + 1, plane.shape[0] - 1)
    c1 = np.minimum(c0 + 1, plane.shape[1] - 1)
    wr = (rows - r0).astype(np.float32)[:, None]
    wc = (cols - c0).astype(np.float32)[None, :]
    top = plane[r0][:, c0] * (1 - wc) + plane[r0][:, c1] * wc
    bottom = plane[r1][:, c0] * (1 - wc) + plane[r1][:, c1] * wc
    return top * (1 - wr) + bottom * wr


def _outline(labels: np.ndarray) -> np.ndarray:
    """Labelled pixels with a 4-neighbour of another label (background included)."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge & (labels > 0)


def _blend(grey: np.ndarray, labels: np.ndarray, table: np.ndarray) -> np.ndarray:
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    alpha = np.where(labels > 0, FILL_ALPHA, 0.0).astype(np.float32)
    alpha[_outline(labels)] = OUTLINE_ALPHA
    colour = table[labels]
    rgb = rgb * (1.0 - alpha[:, :, None]) + colour * alpha[:, :, None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _draw_letter(canvas: np.ndarray, letter: str, row: int, col: int, scale: int) -> None:
    glyph = np.array([[(bits >> (4 - c)) & 1 for c in range(5)] for bits in _GLYPHS[letter]], dtype=bool)
    glyph = np.kron(glyph, np.ones((scale, scale), dtype=bool))
    region = canvas[row:row + glyph.shape[0], col:col + glyph.shape[1]]
    region[glyph[:region.shape[0], :region.shape[1]]] = _LETTER_GREY


def render_preview(image: ImageSource, label_image: ImageSource, label_map: Mapping[int, str],
                   colors: Optional[Mapping[str, Color]] = None, size: int = DEFAULT_SIZE,
                   window: Optional[tuple[float, float]] = None) -> Preview:
    """The preview as an RGB array plus panel positions (see the module docstring for the views).

    ``window`` overrides the automatic grey window (CT [-500, 1000] HU, MR 1st-99th percentile).
    Segmentation labels missing from ``label_map`` are still drawn, in the palette colour, so nothing
    segmented goes unseen.
    """
    img = _spatial(_load(image), "image")
    seg = _spatial(_load(label_image), "segmentation")
    if not same_grid(seg, img):
        seg = reorient_to_grid(seg, img)
    img = nib.as_closest_canonical(img)
    seg = nib.as_closest_canonical(seg)
    data = np.asanyarray(img.dataobj)
    labels = _integer_labels(np.asanyarray(seg.dataobj))
    sx, sy, sz = (float(z) for z in img.header.get_zooms()[:3])
    nx, ny, nz = data.shape

    ct = window is None and _is_ct(data)
    if ct:
        window = CT_WINDOW

    front = {"coronal": _front_labels(labels, axis=1, from_high=True),   # seen from anterior
             "sagittal": _front_labels(labels, axis=0, from_high=False)}  # seen from the patient's left
    occupied = np.flatnonzero(front["coronal"].any(axis=0))
    k_mid = int((occupied[0] + occupied[-1]) // 2) if occupied.size else nz // 2

    views = {
        "coronal": (data.max(axis=1), front["coronal"], (sz, sx)),
        "sagittal": (data.max(axis=0), front["sagittal"], (sz, sy)),
        "axial": (data[:, :, k_mid], labels[:, :, k_mid], (sy, sx)),
    }
    mm = max(nx * sx, ny * sy, nz * sz) / float(size)
    max_label = int(max(labels.max(initial=0), max(label_map, default=0)))
    table = _color_table(max_label, label_map, colors)

    rendered = {}
    volume_window = window if window is not None else _percentile_window(data)
    for name, (plane, plane_labels, spacing) in views.items():
        grey_plane, label_plane = _display(plane), _display(plane_labels)
        shape = (max(1, int(round(grey_plane.shape[0] * spacing[0] / mm))),
                 max(1, int(round(grey_plane.shape[1] * spacing[1] / mm))))
        # an MR projection's maxima sit above the volume's percentiles, so it is windowed on its own
        plane_window = volume_window if (window is not None or name == "axial") else _percentile_window(grey_plane)
        grey = _to_grey(_resample(grey_plane.astype(np.float32), shape, spacing, mm, linear=True), plane_window)
        rendered[name] = _blend(grey, _resample(label_plane, shape, spacing, mm, linear=False), table)

    scale = max(1, size // 256)
    strip = 7 * scale + 4 * scale
    height = max(view.shape[0] for view in rendered.values()) + strip
    width = sum(view.shape[1] for view in rendered.values()) + PANEL_GAP * (len(rendered) - 1)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    panels = {}
    col = 0
    for name in PANELS:
        view = rendered[name]
        canvas[:view.shape[0], col:col + view.shape[1]] = view
        panels[name] = (0, col, view.shape[0], view.shape[1])
        left, right = _SIDE_LETTERS[name]
        letter_row = view.shape[0] + 2 * scale
        _draw_letter(canvas, left, letter_row, col + scale, scale)
        _draw_letter(canvas, right, letter_row, col + max(view.shape[1] - 6 * scale, scale), scale)
        col += view.shape[1] + PANEL_GAP
    return Preview(rgb=canvas, panels=panels)


# --------------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(rgb: np.ndarray) -> bytes:
    """8-bit RGB PNG bytes (filter type 0 on every row), from the standard library's zlib only.

    A dozen lines here spare the engine Pillow or matplotlib, which Slicer's Python and the engine's
    dependency list do not guarantee.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"Expected an (height, width, 3) array, got shape {rgb.shape}.")
    height, width = rgb.shape[:2]
    rows = np.zeros((height, width * 3 + 1), dtype=np.uint8)
    rows[:, 1:] = rgb.reshape(height, width * 3)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _chunk(b"IEND", b""))


def write_preview(image: ImageSource, label_image: ImageSource, label_map: Mapping[int, str], path: Union[str, Path],
                  colors: Optional[Mapping[str, Color]] = None, size: int = DEFAULT_SIZE,
                  window: Optional[tuple[float, float]] = None) -> Path:
    """Render the preview (:func:`render_preview`) and write it to ``path`` as PNG; returns the path.

    The file is written beside the target and renamed into place, so a reader never sees half a PNG
    and an existing preview (a previous run's) is replaced whole.
    """
    target = Path(path).expanduser()
    png = encode_png(render_preview(image, label_image, label_map, colors, size, window).rgb)
    with atomic_output(target, overwrite=True) as temp:
        temp.write_bytes(png)
    return target
