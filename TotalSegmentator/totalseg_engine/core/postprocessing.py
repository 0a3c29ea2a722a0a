"""Label-map postprocessing with the official TotalSegmentator 2.18 rules.

Everything works on a multilabel ``uint8`` array indexed (x, y, z). The results must be voxel for
voxel those of the official package, so the rules keep its semantics exactly: 6-connected
components (scipy's default structure), the same size thresholds (computed from the float32 voxel
size that a NIfTI header stores), the same tie-breaking and the same order of operations. The work
itself is organised differently for speed: one ``find_objects`` pass gives every label's bounding
box and each class is labelled only inside its box, instead of full-volume passes per class.

Public functions never modify their input; they return a new array.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from ..errors import InvalidInputError
from ..tasks import Task, get_task

Spacing = Sequence[float]
Box = tuple[slice, ...]
Rule = Callable[[np.ndarray, Task, Spacing], np.ndarray]

DEFAULT_SMALL_BLOB_MM3 = 200.0
"""Threshold of ``--remove_small_blobs`` when it is given without a value."""

NO_UPPER_LIMIT = 1e10
"""Upper blob size (voxels) the official uses when it only wants to drop small blobs."""

BODY_EXTREMITIES_MIN_MM3 = 50000.0
VERTEBRAE_MIN_COMPONENT_MM3 = 100.0
VERTEBRAE_DILATION_MM = 3.0
"""vertebrae_pp was trained on labels eroded by 3 mm; dilating by as much restores their size."""
VERTEBRAE_REFINE_DILATION_MM = 2.0


# --- voxel geometry -------------------------------------------------------------------------------


def _float32_spacing(spacing_xyz: Spacing) -> tuple[np.float32, ...]:
    """The spacing as a NIfTI header holds it; the official derives every threshold from these."""
    if len(spacing_xyz) != 3:
        raise InvalidInputError(f"Expected a 3D voxel spacing, got {tuple(spacing_xyz)}.")
    return tuple(np.float32(s) for s in spacing_xyz)


def voxel_volume(spacing_xyz: Spacing) -> np.float32:
    """Voxel volume in mm³, multiplied in float32 like ``np.prod(header.get_zooms())``."""
    sx, sy, sz = _float32_spacing(spacing_xyz)
    return sx * sy * sz


def mm3_to_voxels(volume_mm3: float, spacing_xyz: Spacing) -> float:
    """Blob-size threshold in voxels, divided in float32 as the official's numpy arithmetic does."""
    return float(np.float32(volume_mm3) / voxel_volume(spacing_xyz))


def dilation_voxels(dilation_mm: float, spacing_xyz: Spacing) -> int:
    """Voxel iterations for a dilation in mm: the official truncates mm / mean spacing (float32)."""
    mean_spacing = np.mean(np.asarray(_float32_spacing(spacing_xyz), dtype=np.float32))
    return int(np.float32(dilation_mm) / mean_spacing)


# --- helpers --------------------------------------------------------------------------------------


def _as_labels(data: np.ndarray) -> np.ndarray:
    """A private uint8 copy, the dtype the official casts predictions to before postprocessing."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise InvalidInputError(f"Expected a 3D label map, got shape {data.shape}.")
    return data.astype(np.uint8, copy=True)


def _boxes(data: np.ndarray) -> dict[int, Box]:
    """Bounding box of every label present, from a single pass over the volume."""
    return {label: box for label, box in enumerate(ndimage.find_objects(data), start=1) if box is not None}


def _padded(box: Box, pad: Sequence[int], shape: Sequence[int]) -> Box:
    return tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(box, pad, shape))


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """6-connected components and their sizes (index 0 counts the background)."""
    components, _ = ndimage.label(mask)
    return components, np.bincount(components.ravel())


def _filter_blobs(
    data: np.ndarray, labels: Iterable[int], drop: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Clear, per label, the components whose sizes ``drop`` flags; the rest stays.

    Components never leave their label's bounding box, and labelling a box visits voxels in the
    same raster order as the full volume, so component numbering (and any tie-breaking on it)
    is the official one.
    """
    out = _as_labels(data)
    boxes = _boxes(out)
    for label in sorted(set(int(v) for v in labels)):
        if label not in boxes:
            continue
        view = out[boxes[label]]
        components, sizes = _components(view == label)
        dropped = drop(sizes)
        dropped[0] = False
        view[dropped[components]] = 0
    return out


def _labels_of(task: Task, names: Iterable[str]) -> list[int]:
    return [task.label_of(name) for name in names]


# --- generic rules --------------------------------------------------------------------------------


def remove_auxiliary_labels(data: np.ndarray, task: Union[Task, str]) -> np.ndarray:
    """Zero the labels a model predicts only as training aids (e.g. kidney_cysts' extra classes)."""
    task = get_task(task) if isinstance(task, str) else task
    out = _as_labels(data)
    if task.auxiliary_labels:
        lookup = np.arange(256, dtype=np.uint8)
        lookup[sorted(task.auxiliary_labels)] = 0
        out = lookup[out]
    return out


def keep_largest_blob(data: np.ndarray, labels: Iterable[int]) -> np.ndarray:
    """Keep only the largest component of each given label (the first one found on a tie)."""

    def all_but_largest(sizes: np.ndarray) -> np.ndarray:
        dropped = np.ones(sizes.shape, dtype=bool)
        if len(sizes) > 1:
            dropped[1 + int(np.argmax(sizes[1:]))] = False
        return dropped

    return _filter_blobs(data, labels, all_but_largest)


def remove_small_blobs(
    data: np.ndarray, labels: Iterable[int], min_voxels: float, max_voxels: float = NO_UPPER_LIMIT
) -> np.ndarray:
    """Remove each given label's components with a size outside ``(min_voxels, max_voxels]``.

    The interval is open below: a component of exactly ``min_voxels`` voxels is removed, as in
    the official ``remove_small_blobs``.
    """
    return _filter_blobs(data, labels, lambda sizes: (sizes <= min_voxels) | (sizes > max_voxels))


def remove_outside_of_mask(data: np.ndarray, mask: np.ndarray, dilation_voxels: int) -> np.ndarray:
    """Zero every label outside ``mask`` grown by ``dilation_voxels`` 6-connected dilation steps.

    Like scipy's ``iterations``, a count below 1 means growing until nothing changes, which covers
    the whole volume whenever the mask is not empty.
    """
    out = _as_labels(data)
    mask = np.asarray(mask) != 0
    if mask.shape != out.shape:
        raise InvalidInputError(f"Mask shape {mask.shape} does not match the label map {out.shape}.")
    if not mask.any():
        return np.zeros_like(out)
    if dilation_voxels < 1:
        return out
    box = _padded(ndimage.find_objects(mask.astype(np.uint8))[0], [dilation_voxels] * 3, out.shape)
    keep = np.zeros(out.shape, dtype=bool)
    keep[box] = ndimage.binary_dilation(mask[box], iterations=dilation_voxels)
    out[~keep] = 0
    return out


# --- vertebrae_pp ---------------------------------------------------------------------------------


def _ellipsoid(spacing_xyz: Spacing, radius_mm: float) -> np.ndarray:
    """Ellipsoid of ``radius_mm`` in voxel units, with the official's float32 grid.

    The grid runs from -r in steps of 1, so for a non-integer radius r it is not centred on 0;
    the official kernel has that shape, so this one does too.
    """
    radii = [np.float32(radius_mm) / s for s in _float32_spacing(spacing_xyz)]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    distance = sum((grid * grid) / (r * r) for grid, r in zip(grids, radii))
    return distance <= 1


def dilate_labels(
    data: np.ndarray, labels: Iterable[int], spacing_xyz: Spacing, dilation_mm: float
) -> np.ndarray:
    """Grow each label by an ellipsoid of ``dilation_mm`` into background only.

    Labels are grown one at a time in ascending order, each from its original voxels, so a lower
    label claims contested background first; no label overwrites another.
    """
    out = _as_labels(data)
    if dilation_mm <= 0:
        return out
    original = out.copy()
    kernel = _ellipsoid(spacing_xyz, dilation_mm)
    pad = [int(np.ceil(np.float32(dilation_mm) / s)) for s in _float32_spacing(spacing_xyz)]
    boxes = _boxes(original)
    for label in sorted(set(int(v) for v in labels)):
        if label not in boxes:
            continue
        box = _padded(boxes[label], pad, out.shape)
        grown = ndimage.binary_dilation(original[box] == label, structure=kernel)
        view = out[box]
        view[grown & (view == 0)] = label
    return out


def labels_touch(data: np.ndarray) -> bool:
    """Whether two different labels are face neighbours anywhere in the volume."""
    for axis in range(data.ndim):
        lower = [slice(None)] * data.ndim
        upper = [slice(None)] * data.ndim
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        a, b = data[tuple(lower)], data[tuple(upper)]
        if np.any((a != b) & (a > 0) & (b > 0)):
            return True
    return False


def _z_centres(components: np.ndarray, count: int) -> np.ndarray:
    """Mean z index of every component, summed slice by slice to avoid a full-size float grid."""
    sums = np.zeros(count, dtype=np.float64)
    sizes = np.zeros(count, dtype=np.float64)
    for z in range(components.shape[2]):
        in_slice = np.bincount(components[:, :, z].ravel(), minlength=count)
        sums += in_slice * float(z)
        sizes += in_slice
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / sizes


def _relabel_vertebrae(
    data: np.ndarray, class_map: Mapping[int, str], spacing_xyz: Spacing, min_size_mm3: float
) -> np.ndarray:
    """Give each vertebral body its own label by counting connected bodies along z.

    Bodies smaller than ``min_size_mm3`` are dropped. Counting starts at the bottom with the
    lowest label present, or at the top with C1 when C1 but not L5 is in view (head scans).
    """
    components, sizes = _components(data > 0)
    kept = sizes * float(voxel_volume(spacing_xyz)) >= min_size_mm3
    kept[0] = False
    present = sorted({int(v) for v in np.unique(data[kept[components]])} & set(class_map))
    if not present:
        return np.zeros_like(data)
    by_name = {name: label for label, name in class_map.items()}
    c1, l5 = by_name["vertebrae_C1"], by_name["vertebrae_L5"]
    from_top = l5 not in present and c1 in present
    centres = _z_centres(components, len(sizes))
    ordered = sorted(np.flatnonzero(kept), key=lambda comp: centres[comp], reverse=from_top)
    targets = range(c1, max(class_map) + 1) if from_top else range(max(present), min(class_map) - 1, -1)
    lookup = np.zeros(len(sizes), dtype=np.uint8)
    for component, label in zip(ordered, targets):
        lookup[component] = label
    return lookup[components]


def postprocess_vertebrae_pp(
    data: np.ndarray,
    class_map: Mapping[int, str],
    spacing_xyz: Spacing,
    min_size_mm3: float = VERTEBRAE_MIN_COMPONENT_MM3,
    dilation_mm: float = VERTEBRAE_DILATION_MM,
) -> np.ndarray:
    """Repair vertebrae_pp predictions and undo the model's training erosion.

    The model segments vertebral bodies only, so different labels should never touch; when they
    do, labels leaked between bodies and every body is relabelled by its position. Either way
    the labels are then dilated by ``dilation_mm``.
    """
    out = _as_labels(data)
    if labels_touch(out):
        out = _relabel_vertebrae(out, class_map, spacing_xyz, min_size_mm3)
    return dilate_labels(out, class_map, spacing_xyz, dilation_mm)


def refine_vertebrae_pp(
    data: np.ndarray,
    body_mask: np.ndarray,
    labels: Iterable[int],
    spacing_xyz: Spacing,
    dilation_mm: float = VERTEBRAE_REFINE_DILATION_MM,
) -> np.ndarray:
    """vertebrae_pp_refined: grow the labels a little more, then clip them to the vertebral bodies.

    ``body_mask`` is the vertebrae_body prediction on the same (output) grid; only its label 1
    (vertebrae_body, not the discs) is kept. ``labels`` are those to grow, i.e. the task's
    classes, restricted to the roi subset when one is used.
    """
    body_mask = np.asarray(body_mask)
    if body_mask.shape != np.shape(data):
        raise InvalidInputError(
            f"vertebrae_pp and vertebrae_body shapes do not match: {np.shape(data)} vs {body_mask.shape}"
        )
    out = dilate_labels(data, labels, spacing_xyz, dilation_mm)
    out[body_mask != 1] = 0
    return out


# --- task rules table -----------------------------------------------------------------------------


def _keep_largest_rule(
    data: np.ndarray, task: Task, spacing_xyz: Spacing, names: Sequence[str]
) -> np.ndarray:
    return keep_largest_blob(data, _labels_of(task, names))


def _min_volume_rule(
    data: np.ndarray, task: Task, spacing_xyz: Spacing, names: Sequence[str], min_mm3: float
) -> np.ndarray:
    return remove_small_blobs(data, _labels_of(task, names), mm3_to_voxels(min_mm3, spacing_xyz))


def _vertebrae_pp_rule(data: np.ndarray, task: Task, spacing_xyz: Spacing) -> np.ndarray:
    return postprocess_vertebrae_pp(data, task.classes, spacing_xyz)


TASK_RULES: dict[str, tuple[Rule, ...]] = {
    # The official applies these whenever the body model runs under the task name "body": the
    # body task (normal and fast) and the body model used for body_seg / body cropping.
    "body": (
        partial(_keep_largest_rule, names=("body_trunc",)),
        partial(_min_volume_rule, names=("body_extremities",), min_mm3=BODY_EXTREMITIES_MIN_MM3),
    ),
    "vertebrae_pp": (_vertebrae_pp_rule,),
    # vertebrae_pp_refined predicts with the vertebrae_pp model; refine_vertebrae_pp follows later
    # on the output grid.
    "vertebrae_pp_refined": (_vertebrae_pp_rule,),
}
"""Task-specific rules, run in order at the prediction grid after auxiliary labels are removed."""


def postprocess(
    data: np.ndarray,
    task_name: str,
    spacing_xyz: Spacing,
    remove_small_blobs_mm3: Optional[float] = None,
) -> np.ndarray:
    """All prediction-grid postprocessing of a task, in the official order.

    Auxiliary labels are removed, then the task's :data:`TASK_RULES` run, then, when
    ``remove_small_blobs_mm3`` is set (``--remove_small_blobs``; 200 mm³ without a value), every
    class's components of at most that volume are removed.
    """
    task = get_task(task_name)
    out = remove_auxiliary_labels(data, task)
    for rule in TASK_RULES.get(task.name, ()):
        out = rule(out, task, spacing_xyz)
    if remove_small_blobs_mm3 is not None:
        if remove_small_blobs_mm3 <= 0:
            raise InvalidInputError(
                f"remove_small_blobs needs a positive volume, got {remove_small_blobs_mm3}."
            )
        out = remove_small_blobs(out, task.classes, mm3_to_voxels(remove_small_blobs_mm3, spacing_xyz))
    return out
