"""Every orientation, spacing, crop and axis-order conversion of the pipeline, in one place.

The released weights were trained on images prepared by TotalSegmentator's own steps, so these
functions reproduce them voxel for voxel: closest-canonical (RAS) reorientation, linear
``scipy.ndimage.zoom`` resampling to the task spacing (values truncated to int32, as the official
pipeline stores them), bounding-box crops with a margin in mm, and the exact inverse of each step.

Axis orders: nibabel arrays are (x, y, z) and task spacings are x, y, z; nnU-Net works on
(z, y, x) arrays with z, y, x spacings, as SimpleITK reads a NIfTI file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

from .errors import InvalidOptionError

BBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each array axis (column norms of the affine)."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def header_spacing(img: nib.Nifti1Image) -> np.ndarray:
    """Spacing as stored in a NIfTI header (float32), which is what readers of saved files see."""
    return np.asarray(img.header.get_zooms()[:3], dtype=np.float64)


def to_canonical(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Reorder/flip axes to the closest RAS orientation (no interpolation)."""
    return nib.as_closest_canonical(img)


def from_canonical(data: np.ndarray, canonical_affine: np.ndarray, original_affine: np.ndarray) -> np.ndarray:
    """Bring an array on the canonical grid back to the axis order of the original image."""
    img = nib.Nifti1Image(data, canonical_affine)
    back = ornt_transform(axcodes2ornt("RAS"), io_orientation(original_affine))
    return np.asanyarray(img.as_reoriented(back).dataobj)


def zoom_factors(from_spacing: Sequence[float], to_spacing: Sequence[float]) -> np.ndarray:
    return np.asarray(from_spacing, dtype=np.float64) / np.asarray(to_spacing, dtype=np.float64)


def resampled_affine(affine: np.ndarray, zoom: Sequence[float]) -> np.ndarray:
    """Affine after zooming each axis by ``zoom`` (corner voxel kept, as ndimage.zoom aligns corners)."""
    new = np.array(affine, dtype=np.float64, copy=True)
    for axis in range(3):
        new[:3, axis] = new[:3, axis] / zoom[axis]
    return new


def resample_image(img: nib.Nifti1Image, spacing_xyz: Sequence[float], order: int = 1,
                   dtype: Optional[np.dtype] = np.int32) -> nib.Nifti1Image:
    """Resample to a target spacing the way TotalSegmentator prepares a model's input.

    An image already at the spacing is returned unchanged (no cast), like the official pipeline.
    """
    spacing = header_spacing(img)
    target = np.asarray(spacing_xyz, dtype=np.float64)
    if np.array_equal(spacing, target):
        return img
    zoom = zoom_factors(spacing, target)
    data = np.asarray(img.get_fdata(), dtype=np.float64)
    out = ndimage.zoom(data, zoom, order=order, mode="nearest")
    if dtype is not None:
        out = out.astype(dtype)
    return nib.Nifti1Image(out, resampled_affine(img.affine, zoom))


def resample_labels_to_shape(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label map to an exact shape (back to the input grid)."""
    zoom = np.asarray(shape, dtype=np.float64) / np.asarray(labels.shape, dtype=np.float64)
    out = ndimage.zoom(labels, zoom, order=0, mode="nearest")
    if out.shape != tuple(shape):  # ndimage rounds the output shape; guard the contract
        raise RuntimeError(f"resampling produced shape {out.shape}, expected {tuple(shape)}")
    return out


def resample_labels_one_hot(labels: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """The official legacy upsampling of a label map (``--higher_order_resampling_LEGACY``): each label's mask,
    cropped to its box with a margin, is interpolated with a spline of ``order`` on the resized grid's voxel
    centres and kept where it reaches 0.5; a later (higher) label wins where two do."""
    old = np.asarray(labels.shape)
    new = np.asarray(shape, dtype=int)
    out = np.zeros(tuple(new), dtype=labels.dtype)
    margin = max(2, order + 1)
    for label in (value for value in np.unique(labels) if value != 0):
        placed = _resampled_label(labels, label, old, new, margin, order)
        if placed is not None:
            target, mask = placed
            out[target][mask] = label
    return out


def _resampled_label(labels: np.ndarray, label: int, old: np.ndarray, new: np.ndarray, margin: int,
                     order: int) -> Optional[tuple[tuple[slice, ...], np.ndarray]]:
    """One label of :func:`resample_labels_one_hot`: where it lands on the new grid, and its mask there."""
    where = np.nonzero(labels == label)
    low = np.maximum(np.array([axis.min() for axis in where]) - margin, 0)
    high = np.minimum(np.array([axis.max() + 1 for axis in where]) + margin, old)
    crop = (labels[tuple(slice(a, b) for a, b in zip(low, high))] == label).astype(np.float32)
    scale = new / old
    start = np.maximum(np.floor(low * scale).astype(int), 0)
    stop = np.minimum(np.ceil(high * scale).astype(int), new)
    if np.any(stop - start <= 0):
        return None
    # voxel centres of the new grid, in voxels of the cropped old grid
    axes = [(np.arange(a, b) + 0.5) * o / n - 0.5 - c for a, b, o, n, c in zip(start, stop, old, new, low)]
    values = ndimage.map_coordinates(crop, np.array(np.meshgrid(*axes, indexing="ij")), order=order, mode="nearest")
    return tuple(slice(a, b) for a, b in zip(start, stop)), values >= 0.5


def reoriented_like(img: nib.Nifti1Image, original: nib.Nifti1Image) -> nib.Nifti1Image:
    """A canonical (RAS) image turned back to the axis orientation of ``original``, on its own grid (voxel size
    and extent kept, affine adjusted): how ``--save_lowres`` keeps the model's grid in the input's orientation."""
    back = ornt_transform(axcodes2ornt("RAS"), io_orientation(original.affine))
    return img.as_reoriented(back)


def bbox_of_mask(mask: np.ndarray, margin_voxels: Sequence[int]) -> Optional[BBox]:
    """Bounding box of the nonzero voxels, grown by a margin and clipped; None for an empty mask."""
    coords = np.nonzero(mask)
    if coords[0].size == 0:
        return None
    box = []
    for axis in range(3):
        lo = max(0, int(coords[axis].min()) - int(margin_voxels[axis]))
        hi = min(mask.shape[axis], int(coords[axis].max()) + 1 + int(margin_voxels[axis]))
        box.append((lo, hi))
    return tuple(box)  # type: ignore[return-value]


def margin_in_voxels(margin_mm: Sequence[float], img: nib.Nifti1Image) -> np.ndarray:
    """Crop margin in voxels (truncated, as the official crop does)."""
    return (np.asarray(margin_mm, dtype=np.float64) / header_spacing(img)).astype(int)


def crop_image(img: nib.Nifti1Image, box: BBox, dtype: Optional[np.dtype] = np.int32) -> nib.Nifti1Image:
    """Crop to a bounding box; the affine origin moves to the box's first voxel."""
    slices = tuple(slice(lo, hi) for lo, hi in box)
    data = np.asarray(img.get_fdata()[slices])
    if dtype is not None:
        data = data.astype(dtype)
    affine = np.array(img.affine, dtype=np.float64, copy=True)
    affine[:3, 3] = (img.affine @ np.array([box[0][0], box[1][0], box[2][0], 1.0]))[:3]
    return nib.Nifti1Image(data, affine)


def uncrop(data: np.ndarray, shape: Sequence[int], box: BBox) -> np.ndarray:
    """Place a cropped array back into a zero array of the full shape."""
    full = np.zeros(tuple(shape), dtype=data.dtype)
    full[tuple(slice(lo, hi) for lo, hi in box)] = data
    return full


@dataclass(frozen=True)
class NnunetArray:
    """An image as nnU-Net reads it from a NIfTI file: (c, z, y, x) float32 and z, y, x spacing."""

    data: np.ndarray
    spacing_zyx: tuple[float, float, float]


def to_nnunet(channels: Sequence[np.ndarray], spacing_xyz: Sequence[float]) -> NnunetArray:
    """Stack (x, y, z) channel arrays into nnU-Net's (c, z, y, x) layout, as SimpleITK would read them."""
    stacked = np.stack([np.asarray(c).transpose(2, 1, 0) for c in channels])
    spacing = tuple(float(s) for s in np.asarray(spacing_xyz, dtype=np.float32)[::-1])
    return NnunetArray(stacked, spacing)  # type: ignore[arg-type]


def from_nnunet(labels_zyx: np.ndarray) -> np.ndarray:
    """nnU-Net's (z, y, x) label map back to nibabel's (x, y, z) order."""
    return np.ascontiguousarray(np.asarray(labels_zyx).transpose(2, 1, 0))


@dataclass(frozen=True)
class SplitPlan:
    """Three overlapping z-slabs for very large images (the official ``--force_split`` layout)."""

    third: int
    margin: int = 20

    def slabs(self, depth: int) -> list[slice]:
        t, m = self.third, self.margin
        return [slice(0, t + m), slice(t + 1 - m, 2 * t + m), slice(2 * t + 1 - m, depth)]

    def keep(self) -> list[tuple[slice, slice]]:
        """(slice of the slab's result, destination slice in the full volume) for each slab."""
        t, m = self.third, self.margin
        return [
            (slice(0, -m), slice(0, t)),
            (slice(m - 1, -m), slice(t, 2 * t)),
            (slice(m - 1, None), slice(2 * t, None)),
        ]


def split_plan(shape: Sequence[int], force: bool, allowed: bool) -> Optional[SplitPlan]:
    """Split along z when forced, or automatically for multi-model runs on very large volumes."""
    large = int(np.prod(shape)) > 512 * 512 * 900 and shape[2] > 200
    if not (force or (allowed and large)):
        return None
    plan = SplitPlan(third=shape[2] // 3)
    minimum = 3 * (plan.margin - 1)
    if plan.third < plan.margin - 1:
        raise InvalidOptionError(
            f"--force_split needs at least {minimum} slices along z at the model's spacing; this image (or its "
            f"cropped region) has {shape[2]}. Run without --force_split.")
    return plan
