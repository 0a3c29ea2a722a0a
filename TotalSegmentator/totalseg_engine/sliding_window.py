"""nnU-Net v2 inference around a network forward pass, in NumPy: preprocessing, Gaussian sliding window, argmax.

Each step reproduces nnU-Net's own arithmetic (``DefaultPreprocessor.run_case_npy``,
``compute_steps_for_sliding_window``, ``compute_gaussian``, ``pad_nd_image``, the export back to the input
shape). The Gaussian-weighted tile sums come in two kinds:

- ``half_precision=True`` (the torch runtime): nnU-Net's CPU arithmetic exactly (half-precision sums per fold,
  division by the summed weights, fold mean, first-index argmax), so the labels equal ``nnUNetPredictor``'s.
  The rounding matters: with 118 classes about 0.1 % of voxels change without it. It is done through
  vectorised float32 conversions and a running-maximum argmax, several times faster than nnU-Net's mixed-type
  adds and half-precision argmax.
- float32 (ONNX Runtime, whose logits differ from torch's by ~1e-3 anyway): sums without the division, which
  does not change the argmax, and no weighting at all for a single tile.

The forward pass is any callable taking a (1, channels, *patch) float32 array and returning (1, classes, *patch)
logits, so the same code serves ONNX Runtime and torch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from scipy.ndimage import binary_fill_holes, gaussian_filter1d

from .nnunet_plans import ModelPlans

Forward = Callable[[np.ndarray], np.ndarray]
TileCallback = Callable[[int, int], None]


class NeedsResampling(ValueError):
    """The image is not on the model's spacing; nnU-Net would resample it inside its own preprocessing."""


@dataclass
class Preprocessed:
    """The normalised crop nnU-Net feeds to the network, and what is needed to put the labels back."""

    data: np.ndarray  # (channels, *cropped shape), float32
    bbox: tuple[tuple[int, int], ...]  # half-open crop box in the transposed full array
    shape_before_cropping: tuple[int, ...]


def preprocess(channels: np.ndarray, spacing: Sequence[float], plans: ModelPlans) -> Preprocessed:
    """Transpose, crop to the non-zero region and normalise a (channels, z, y, x) image, as nnU-Net does.

    Raises NeedsResampling when ``spacing`` (z, y, x) would make nnU-Net resample the crop: the pipeline hands
    over images already on the model's grid, so this only happens for models whose spacing differs from the
    task's, and those run through nnU-Net's own predictor.
    """
    data = channels.astype(np.float32)
    data = data.transpose([0, *[i + 1 for i in plans.transpose_forward]])
    spacing_t = [spacing[i] for i in plans.transpose_forward]
    shape_before = tuple(int(s) for s in data.shape[1:])
    nonzero = _nonzero_mask(data)
    bbox = _bbox(nonzero)
    crop = tuple(slice(lo, hi) for lo, hi in bbox)
    data = data[(slice(None), *crop)]
    mask = nonzero[crop]
    new_shape = [int(round(s / t * n)) for s, t, n in zip(spacing_t, plans.spacing, data.shape[1:])]
    if list(data.shape[1:]) != new_shape:
        raise NeedsResampling(f"spacing {tuple(spacing_t)} is not the model's {plans.spacing}")
    for c in range(data.shape[0]):
        data[c] = normalize(data[c], mask, plans.normalization_schemes[c], plans.use_mask_for_norm[c],
                            plans.intensity_properties.get(str(c), {}))
    return Preprocessed(data, bbox, shape_before)


def _nonzero_mask(data: np.ndarray) -> np.ndarray:
    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    return binary_fill_holes(mask)


def _bbox(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Half-open bounding box of the mask; the whole array when it is empty (as acvl_utils returns it)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1) if hits.size else (0, mask.shape[axis]))
    return tuple(box)


def normalize(image: np.ndarray, mask: np.ndarray, scheme: str, use_mask: bool, properties: dict) -> np.ndarray:
    """One channel normalised with nnU-Net's scheme, operation for operation (same float32 rounding)."""
    eps = 1e-8
    image = image.astype(np.float32, copy=False)
    if scheme == "CTNormalization":
        np.clip(image, properties["percentile_00_5"], properties["percentile_99_5"], out=image)
        image -= properties["mean"]
        image /= max(properties["std"], eps)
    elif scheme == "ZScoreNormalization" and use_mask:
        mean, std = image[mask].mean(), image[mask].std()
        image[mask] = (image[mask] - mean) / (max(std, eps))
    elif scheme == "ZScoreNormalization":
        mean, std = image.mean(), image.std()
        image -= mean
        image /= (max(std, eps))
    elif scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
    elif scheme != "NoNormalization":
        raise ValueError(f"Unknown nnU-Net normalisation scheme '{scheme}'.")
    return image


def tile_starts(image_size: Sequence[int], patch_size: Sequence[int], step: float) -> list[list[int]]:
    """Start index of every tile along each axis: evenly spread, at most ``step`` x patch apart."""
    starts = []
    for size, patch in zip(image_size, patch_size):
        count = int(np.ceil((size - patch) / (patch * step))) + 1
        spread = (size - patch) / (count - 1) if count > 1 else 0.0
        starts.append([int(np.round(spread * i)) for i in range(count)])
    return starts


def gaussian_weights(patch_size: Sequence[int]) -> np.ndarray:
    """nnU-Net's tile importance map: sigma patch/8, peak 10, stored in half precision, no zeros.

    nnU-Net filters a 3-D impulse; filtering an impulse is separable, so the outer product of the 1-D
    filtered impulses is the same array (bit for bit) at a hundredth of the cost.
    """
    weights = np.ones((1,) * len(patch_size))
    for axis, size in enumerate(patch_size):
        impulse = np.zeros(size)
        impulse[size // 2] = 1
        shape = [1] * len(patch_size)
        shape[axis] = size
        weights = weights * gaussian_filter1d(impulse, size / 8, mode="constant", cval=0).reshape(shape)
    # torch (which nnU-Net uses) rounds float64 to half through float32; NumPy rounds directly
    weights = (weights / (np.max(weights) / 10)).astype(np.float32).astype(np.float16)
    weights[weights == 0] = weights[weights != 0].min()
    return weights.astype(np.float32)


def pad_to_patch(data: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad (channels, *shape) to at least the patch size, content centred, and the slices that undo it."""
    shape = np.array(data.shape[1:])
    target = np.maximum(shape, patch_size)
    below = (target - shape) // 2
    above = target - shape - below
    if not (target - shape).any():
        return data, tuple(slice(0, s) for s in shape)
    padded = np.pad(data, [(0, 0), *zip(below, above)], mode="constant", constant_values=0)
    return padded, tuple(slice(int(b), int(b + s)) for b, s in zip(below, shape))


def count_tiles(shape: Sequence[int], plans: ModelPlans, step: float) -> int:
    """Tiles one fold needs for a crop of ``shape`` (after padding to the patch size)."""
    return len(_tiles(np.maximum(np.asarray(shape), plans.patch_size), plans.patch_size, step))


def predict_labels(image: Preprocessed, forwards: Sequence[Forward], plans: ModelPlans, step: float,
                   on_tile: Optional[TileCallback] = None, half_precision: bool = False) -> np.ndarray:
    """Label map on the untransposed, uncropped grid of ``preprocess``'s input (nnU-Net's axis order).

    ``half_precision`` sums the tiles exactly as nnU-Net does on a CPU (torch half tensors), which makes the
    labels bit-identical to ``nnUNetPredictor`` for the same logits; otherwise the float32 sums decide.
    """
    data, unpad = pad_to_patch(image.data, plans.patch_size)
    tiles = _tiles(data.shape[1:], plans.patch_size, step)
    if half_precision:
        labels = _half_precision_labels(data, tiles, forwards, plans, unpad, on_tile)
    else:
        scores = _weighted_logit_sums(data, tiles, forwards, plans, on_tile)
        labels = argmax_classes(scores[(slice(None), *unpad)], np.dtype(plans.label_dtype))
        del scores
    full = np.zeros(image.shape_before_cropping, dtype=labels.dtype)
    full[tuple(slice(lo, hi) for lo, hi in image.bbox)] = labels
    return full.transpose(plans.transpose_backward)


def _tiles(shape: Sequence[int], patch: Sequence[int], step: float) -> list[tuple[slice, ...]]:
    starts = tile_starts(shape, patch, step)
    return [tuple(slice(s, s + p) for s, p in zip(corner, patch))
            for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(patch))]


def _counter(total: int, on_tile: Optional[TileCallback]) -> Callable[[], None]:
    """A callable that reports one more finished tile (of ``total``) to ``on_tile``."""
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_tile is not None:
            on_tile(done, total)

    return tick


def _tile_logits(data: np.ndarray, tiles: list[tuple[slice, ...]], forward: Forward,
                 tick: Callable[[], None]) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """(tile, float32 logits) for every tile, in nnU-Net's order, each reported once its forward pass is done."""
    for tile in tiles:
        logits = np.asarray(forward(np.ascontiguousarray(data[(slice(None), *tile)][None])), dtype=np.float32)[0]
        tick()
        yield tile, logits


def _half_precision_labels(data: np.ndarray, tiles: list[tuple[slice, ...]], forwards: Sequence[Forward],
                           plans: ModelPlans, unpad: tuple[slice, ...], on_tile: Optional[TileCallback]) -> np.ndarray:
    """nnU-Net's CPU arithmetic, operation for operation: half-precision sums per fold, fold mean, argmax."""
    import torch

    weights = torch.from_numpy(gaussian_weights(plans.patch_size)).half()
    tick = _counter(len(tiles) * len(forwards), on_tile)
    total = None
    for forward in forwards:  # each fold summed and divided by the weights in half, as nnU-Net does
        sums = torch.zeros((plans.num_classes, *data.shape[1:]), dtype=torch.half)
        counts = torch.zeros(data.shape[1:], dtype=torch.half)
        for tile, logits in _tile_logits(data, tiles, forward, tick):
            prediction = torch.from_numpy(logits)
            prediction *= weights
            region = sums[(slice(None), *tile)]
            prediction += region.float()  # half + float: added in float32, rounded to half, as torch does in
            region.copy_(prediction)      # nnU-Net's mixed-type "+=", but through fast vectorised conversions
            counts[tile] += weights
        torch.div(sums, counts, out=sums)
        sums = sums[(slice(None), *unpad)]
        total = sums if total is None else total + sums
    if len(forwards) > 1:
        total /= len(forwards)
    # half -> float32 is exact and keeps the order, and the running maximum takes the first of equal classes
    # like torch.argmax, at a fraction of the cost of argmax over the class axis of a half tensor
    return argmax_classes(total.float().numpy(), np.dtype(plans.label_dtype))


def _weighted_logit_sums(data: np.ndarray, tiles: list[tuple[slice, ...]], forwards: Sequence[Forward],
                         plans: ModelPlans, on_tile: Optional[TileCallback]) -> np.ndarray:
    """Sum over folds and tiles of Gaussian-weighted logits (whose argmax is nnU-Net's prediction).

    A single tile of a single fold needs no weights at all: a positive weight per voxel leaves its argmax as is.
    """
    tick = _counter(len(tiles) * len(forwards), on_tile)
    if len(tiles) == 1 and len(forwards) == 1:
        return next(_tile_logits(data, tiles, forwards[0], tick))[1]
    weights = gaussian_weights(plans.patch_size)
    scores = np.zeros((plans.num_classes, *data.shape[1:]), dtype=np.float32)
    for forward in forwards:
        for tile, logits in _tile_logits(data, tiles, forward, tick):
            np.multiply(logits, weights, out=logits)
            scores[(slice(None), *tile)] += logits
    return scores


def argmax_classes(scores: np.ndarray, dtype: np.dtype, workers: int = 2) -> np.ndarray:
    """First index of the largest score along axis 0 (as torch.argmax), as a running maximum over classes.

    The first axis of the spatial block is split between ``workers`` threads (NumPy releases the GIL).
    """
    labels = np.zeros(scores.shape[1:], dtype=dtype)
    if scores.shape[1] == 0:
        return labels
    bounds = np.linspace(0, scores.shape[1], min(workers, scores.shape[1]) + 1).astype(int)

    def run(lo: int, hi: int) -> None:
        block, out = scores[:, lo:hi], labels[lo:hi]
        best = block[0].copy()
        better = np.empty(best.shape, dtype=bool)
        for c in range(1, block.shape[0]):
            np.greater(block[c], best, out=better)
            np.copyto(best, block[c], where=better)
            out[better] = c

    with ThreadPoolExecutor(len(bounds) - 1) as pool:
        list(pool.map(run, bounds[:-1], bounds[1:]))
    return labels
