"""Per-class volume and intensity, the ``statistics.json`` of ``TotalSegmentator --statistics``.

The numbers follow the official 2.18 rules: the image is cast to int16 (truncating), volume is
voxel count times the float32 voxel volume, intensity is the mean (or median) rounded to 5
decimals, and classes that reach into the three outermost slices on any side count as
incomplete and report 0.0 unless ``exclude_masks_at_border`` is off; empty classes report 0.0 as
well. Unlike the official per-class full-volume masks, every label is counted in one chunked
``np.bincount`` pass and the border check looks at the six border slabs only.

``extra`` adds the official ``--statistics_extra`` metrics (n_voxels, intensity_std/min/max, centroid_vox and
bbox_vox in voxel indices, inclusive); ``normalized`` scales the int16 intensities to 0..1 by the image's minimum
and maximum first (``statistics_normalized_intensities``), with the official's int16 arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from ..errors import InvalidInputError
from ..imageio import atomic_output
from .postprocessing import voxel_volume

BORDER_SLICES = 3
"""Masks in the outermost slices are cut off; the last slices are also often badly segmented."""

METRICS = ("mean", "median")
_CHUNK_VOXELS = 1 << 24

Stats = dict[str, dict[str, Any]]
EMPTY_EXTRA = {"n_voxels": 0, "intensity_std": 0.0, "intensity_min": 0.0, "intensity_max": 0.0, "centroid_vox": None,
               "bbox_vox": None}
"""The extra metrics of a structure that is empty or cut off, as the official reports them."""


def _label_array(seg: np.ndarray) -> np.ndarray:
    """Integer labels usable by bincount (predictions read as float hold whole numbers)."""
    seg = np.asarray(seg)
    if seg.dtype.kind in "iub":
        return seg if seg.dtype.kind != "b" else seg.astype(np.uint8)
    return seg.astype(np.int64)


def _chunks(shape: Sequence[int]) -> Iterable[slice]:
    """Slabs along the first axis, bounding the temporary float copies of large volumes."""
    step = max(1, _CHUNK_VOXELS // max(1, int(np.prod(shape[1:]))))
    return (slice(start, start + step) for start in range(0, shape[0], step))


def _counts_and_sums(seg: np.ndarray, image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxel count and intensity sum of every label; integer sums are exact in float64."""
    counts = np.zeros(size, dtype=np.int64)
    sums = np.zeros(size, dtype=np.float64)
    for chunk in _chunks(seg.shape):
        labels = seg[chunk].ravel()
        counts += np.bincount(labels, minlength=size)[:size]
        sums += np.bincount(labels, weights=image[chunk].ravel(), minlength=size)[:size]
    return counts, sums


def _groups(seg: np.ndarray, labels: Iterable[int]) -> dict[int, np.ndarray]:
    """The flat indices of each wanted label's voxels in C order, from one stable sort of the foreground (the same
    voxels, in the same order, as the official's per-class ``image[seg == label]``)."""
    wanted = np.zeros(int(seg.max(initial=0)) + 1, dtype=bool)
    wanted[[label for label in labels if label < len(wanted)]] = True
    flat = seg.ravel()
    inside = np.flatnonzero(wanted[flat])
    order = np.argsort(flat[inside], kind="stable")
    inside = inside[order]
    sorted_labels = flat[inside]
    starts = np.searchsorted(sorted_labels, np.flatnonzero(wanted), side="left")
    stops = np.searchsorted(sorted_labels, np.flatnonzero(wanted), side="right")
    return {int(label): inside[a:b] for label, a, b in zip(np.flatnonzero(wanted), starts, stops) if b > a}


def _medians(image: np.ndarray, groups: Mapping[int, np.ndarray]) -> dict[int, float]:
    values = image.ravel()
    return {label: float(np.median(values[index])) for label, index in groups.items()}


def _extra_metrics(image: np.ndarray, shape: Sequence[int], index: np.ndarray, box: tuple) -> dict[str, Any]:
    """The official ``statistics_extra`` of one structure: its voxel count, the spread of its intensities, its
    centroid (voxel indices, 2 decimals) and bounding box (inclusive voxel indices)."""
    values = image.ravel()[index]
    coordinates = np.unravel_index(index, shape)
    return {"n_voxels": int(index.size), "intensity_std": float(np.std(values).round(5)),
            "intensity_min": float(values.min()), "intensity_max": float(values.max()),
            "centroid_vox": [round(float(axis.mean()), 2) for axis in coordinates],
            "bbox_vox": [[int(part.start), int(part.stop - 1)] for part in box]}


def border_labels(seg: np.ndarray, size: int, depth: int = BORDER_SLICES) -> np.ndarray:
    """Boolean per label: does the label occur within ``depth`` slices of any face of the volume."""
    seg = _label_array(seg)
    touching = np.zeros(size, dtype=bool)
    for axis in range(seg.ndim):
        for part in (slice(None, depth), slice(-depth, None)):
            index = [slice(None)] * seg.ndim
            index[axis] = part
            touching |= np.bincount(seg[tuple(index)].ravel(), minlength=size)[:size] > 0
    return touching


def _selected(class_map: Mapping[int, str], roi_subset: Optional[Iterable[str]]) -> dict[int, str]:
    """Classes to report, in class-map order (the roi subset only filters, it does not reorder)."""
    if roi_subset is None:
        return dict(class_map)
    wanted = set(roi_subset)
    return {label: name for label, name in class_map.items() if name in wanted}


def compute_statistics(
    seg: np.ndarray,
    image: np.ndarray,
    spacing_xyz: Sequence[float],
    class_map: Mapping[int, str],
    exclude_masks_at_border: bool = True,
    roi_subset: Optional[Iterable[str]] = None,
    metric: str = "mean",
    extra: bool = False,
    normalized: bool = False,
) -> Stats:
    """``{class name: {"volume": mm³, "intensity": mean or median, ...}}`` for every class of the map.

    ``seg`` and ``image`` share one grid with ``spacing_xyz``. The official computes these at the
    grid of the prediction with ``--fast`` (3 mm) and at the input grid otherwise.
    """
    if metric not in METRICS:
        raise InvalidInputError(f"Unknown statistics aggregation '{metric}'. Valid: {', '.join(METRICS)}.")
    seg = _label_array(seg)
    if seg.ndim != 3 or np.shape(image) != seg.shape:
        raise InvalidInputError(
            f"Segmentation {seg.shape} and image {np.shape(image)} must be equal 3D shapes."
        )
    if seg.size and seg.min() < 0:
        raise InvalidInputError("Segmentation labels must not be negative.")
    ct = np.asarray(image).astype(np.int16, copy=False)
    if normalized:  # the official's expression, int16 arithmetic included
        ct = (ct - ct.min()) / (ct.max() - ct.min())
    classes = _selected(class_map, roi_subset)
    size = max([*classes, 0]) + 1
    counts, sums = _counts_and_sums(seg, ct, size)
    incomplete = border_labels(seg, size) if exclude_masks_at_border else np.zeros(size, dtype=bool)
    reported = [label for label in classes if not incomplete[label] and counts[label]]
    groups = _groups(seg, reported) if metric == "median" or extra else {}
    medians = _medians(ct, groups) if metric == "median" else {}
    boxes = ndimage.find_objects(seg, max_label=size - 1) if extra else []
    vox = float(voxel_volume(spacing_xyz))
    stats: Stats = {}
    for label, name in classes.items():
        if label not in reported:
            stats[name] = {"volume": 0.0, "intensity": 0.0, **(EMPTY_EXTRA if extra else {})}
            continue
        value = medians[label] if metric == "median" else sums[label] / counts[label]
        stats[name] = {"volume": float(counts[label]) * vox, "intensity": float(np.round(value, 5))}
        if extra:
            stats[name].update(_extra_metrics(ct, seg.shape, groups[label], boxes[label - 1]))
    return stats


def write_statistics(stats: Mapping[str, Mapping[str, float]], path: Union[str, Path]) -> Path:
    """Write ``statistics.json`` in the official layout (``json.dump``, indent 4), replacing any old one.

    The write is atomic so that readers such as the Slicer panel never see a half-written file.
    """
    with atomic_output(path, overwrite=True) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(stats, handle, indent=4)
    return Path(path)
