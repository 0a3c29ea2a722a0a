"""nnU-Net v2 inference around a network forward pass, in NumPy: preprocessing, Gaussian sliding window, argmax.

Each step reproduces nnU-Net's own arithmetic (``DefaultPreprocessor.run_case_npy``,
``compute_steps_for_sliding_window``, ``compute_gaussian``, ``pad_nd_image``, the export back to the input
shape) and nnU-Net's CPU arithmetic for the Gaussian-weighted tile sums: half-precision sums per fold,
division by the summed weights, fold mean, first-index argmax. That rounding matters: with 118 classes about
0.1 % of voxels change without it. Here it runs slab by slab on every core through float32 conversions, several
times faster than nnU-Net's mixed-type adds and half-precision argmax, and needs no torch.

The forward pass is any callable taking a (1, channels, *patch) float32 array and returning (1, classes, *patch)
logits, so the same code serves ONNX Runtime and torch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from scipy.ndimage import binary_fill_holes, gaussian_filter1d

from .cpu import cpu_threads
from .nnunet_plans import ModelPlans

Forward = Callable[[np.ndarray], np.ndarray]
TileCallback = Callable[[int, int], None]
Cast = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class HalfCasts:
    """float32 -> float16 (round to nearest even) and back, as new arrays, and the tile sum built on them.

    The runtimes supply their own (F16C code in torch or ONNX Runtime): NumPy's casts give the same bits but
    are over ten times slower, and nnU-Net's arithmetic needs one of each per value and step.
    """

    to_half: Cast
    to_float: Cast

    def accumulate(self, region: np.ndarray, logits: np.ndarray, weights: np.ndarray) -> None:
        """``region`` (half) += ``logits`` x ``weights``, added in float32 and rounded, as torch does for nnU-Net.

        ``logits`` is overwritten.
        """
        def add(rows: slice) -> None:
            block = logits[:, rows]
            np.multiply(block, weights[rows], out=block)
            block += self.to_float(region[:, rows])
            region[:, rows] = self.to_half(block)

        in_slabs(logits.shape, add)


NUMPY_CASTS = HalfCasts(lambda a: a.astype(np.float16), lambda a: a.astype(np.float32))


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
    """nnU-Net's tile importance map: sigma patch/8, peak 10, stored in half precision, no zeros (read-only).

    Made once per patch size: the models of a task share one.
    """
    return _gaussian_weights(tuple(int(p) for p in patch_size))


@lru_cache(maxsize=4)
def _gaussian_weights(patch_size: tuple[int, ...]) -> np.ndarray:
    """nnU-Net filters a 3-D impulse; filtering an impulse is separable, so the outer product of the 1-D
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
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


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
                   on_tile: Optional[TileCallback] = None, casts: HalfCasts = NUMPY_CASTS) -> np.ndarray:
    """Label map on the untransposed, uncropped grid of ``preprocess``'s input (nnU-Net's axis order).

    The tiles are summed with nnU-Net's CPU arithmetic, rounding for rounding, so for the same logits the
    labels equal ``nnUNetPredictor``'s.
    """
    data, unpad = pad_to_patch(image.data, plans.patch_size)
    tiles = _tiles(data.shape[1:], plans.patch_size, step)
    tick = _counter(len(tiles) * len(forwards), on_tile)
    dtype = np.dtype(plans.label_dtype)
    if len(tiles) == 1 and len(forwards) == 1:
        labels = _single_tile_labels(data, tiles[0], forwards[0], plans, unpad, tick, dtype, casts)
    else:
        folds = [_logit_sums(data, tiles, forward, plans, tick, casts) for forward in forwards]
        labels = _fold_mean_argmax(folds, weight_sums(data.shape[1:], plans.patch_size, step), unpad, dtype, casts)
        del folds
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


SLAB_VALUES = 1 << 22  # values per slab and step: a few MiB, in the cache and worth a task


def in_slabs(shape: Sequence[int], work: Callable[[slice], None]) -> None:
    """Call ``work`` on slabs along the second axis of a (classes, *spatial) array of ``shape``, on every core.

    NumPy and torch release the GIL in their loops, and a slab of a few MiB stays in the cache between the
    steps of ``work``, which full-volume operations would stream through memory once per step.
    """
    length = shape[1]
    rows = max(1, min(length, SLAB_VALUES // max(1, int(np.prod(shape)) // max(1, length))))
    slabs = [slice(lo, min(lo + rows, length)) for lo in range(0, length, rows)]
    workers = min(cpu_threads(), len(slabs))
    if workers <= 1:
        for slab in slabs:
            work(slab)
        return
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, slabs))


def weight_sums(shape: Sequence[int], patch_size: Sequence[int], step: float) -> np.ndarray:
    """The Gaussian weights of every tile added up in half precision, in tile order, as nnU-Net adds them.

    They depend on the tile layout only, so the folds and part models of a run share one read-only array.
    """
    return _weight_sums(tuple(int(s) for s in shape), tuple(int(p) for p in patch_size), float(step))


@lru_cache(maxsize=2)
def _weight_sums(shape: tuple[int, ...], patch_size: tuple[int, ...], step: float) -> np.ndarray:
    weights = gaussian_weights(patch_size)
    sums = np.zeros(shape, np.float16)
    for tile in _tiles(shape, patch_size, step):
        sums[tile] += weights  # half + half: computed in float32 and rounded, as torch does
    sums.flags.writeable = False
    return sums


def _logit_sums(data: np.ndarray, tiles: list[tuple[slice, ...]], forward: Forward, plans: ModelPlans,
                tick: Callable[[], None], casts: HalfCasts) -> np.ndarray:
    """Sum one fold's tiles as nnU-Net does on a CPU: float32 logits times the weights, added into a half array.

    torch adds a float32 tile to a half tensor in float32 and rounds the sum to half.
    """
    weights = gaussian_weights(plans.patch_size)
    sums = np.zeros((plans.num_classes, *data.shape[1:]), np.float16)
    for tile, logits in _tile_logits(data, tiles, forward, tick):
        casts.accumulate(sums[(slice(None), *tile)], logits, weights)
    return sums


def _fold_mean_argmax(folds: Sequence[np.ndarray], weights: np.ndarray, unpad: tuple[slice, ...], dtype: np.dtype,
                      casts: HalfCasts = NUMPY_CASTS) -> np.ndarray:
    """nnU-Net's last steps, in half precision: each fold's logit sums over the weight sums (the same tiles, so
    the same weights for every fold), the fold mean, first-index argmax.

    Every half-precision operation is done as torch does it on a CPU: in float32, rounded back to half.
    """
    labels = np.zeros(tuple(s.stop - s.start for s in unpad), dtype)

    def finish(rows: slice) -> None:
        window = _rows_of(unpad, rows)
        divisor = casts.to_float(weights[window])
        mean = None
        for fold in folds:
            quotient = casts.to_float(fold[(slice(None), *window)])
            quotient /= divisor
            if mean is None:
                mean = quotient
            else:
                mean = _rounded(mean, casts)
                mean += _rounded(quotient, casts)
        if len(folds) > 1:
            mean = _rounded(mean, casts) / np.float32(len(folds))
        _half_argmax(mean, casts, labels[rows])

    in_slabs((len(folds[0]), *labels.shape), finish)
    return labels


def _single_tile_labels(data: np.ndarray, tile: tuple[slice, ...], forward: Forward, plans: ModelPlans,
                        unpad: tuple[slice, ...], tick: Callable[[], None], dtype: np.dtype,
                        casts: HalfCasts) -> np.ndarray:
    """The same arithmetic for one tile of one fold, without the sum arrays (an image no larger than the patch).

    nnU-Net's sums start at zero, so after one tile they hold the weighted logits rounded to half (0 + x is x)
    and the weights themselves; each slab goes from logits to labels while it is in the cache.
    """
    _, logits = next(_tile_logits(data, [tile], forward, tick))
    weights = gaussian_weights(plans.patch_size)
    labels = np.zeros(tuple(s.stop - s.start for s in unpad), dtype)

    def finish(rows: slice) -> None:
        window = _rows_of(unpad, rows)
        quotient = _rounded(logits[(slice(None), *window)] * weights[window], casts)
        quotient /= weights[window]
        _half_argmax(quotient, casts, labels[rows])

    in_slabs((len(logits), *labels.shape), finish)
    return labels


def _rows_of(unpad: tuple[slice, ...], rows: slice) -> tuple[slice, ...]:
    """The window of the padded array holding ``rows`` of the unpadded one."""
    return (slice(unpad[0].start + rows.start, unpad[0].start + rows.stop), *unpad[1:])


def _rounded(values: np.ndarray, casts: HalfCasts) -> np.ndarray:
    """float32 values rounded to half precision, kept in float32 (exact) for the next step."""
    return casts.to_float(casts.to_half(values))


def _half_argmax(values: np.ndarray, casts: HalfCasts, out: np.ndarray) -> None:
    """First-index argmax over classes of float32 values rounded to half, as torch.argmax of the half tensor."""
    _first_argmax(half_order_keys(casts.to_half(values)), out)


def half_order_keys(halves: np.ndarray) -> np.ndarray:
    """int16 keys that order and tie exactly as the (non-NaN) half values do, -0 equal to +0.

    A half's bits read as an integer order the positive values; for negative ones the magnitude bits are
    flipped and one is added, which also maps -0 onto +0's key. Comparing these keys moves half the bytes of
    float32 comparisons.
    """
    bits = halves.view(np.int16)
    sign = bits >> 15  # 0 for positive, -1 for negative values
    keys = np.bitwise_and(sign, 0x7FFF)
    np.bitwise_xor(keys, bits, out=keys)
    np.subtract(keys, sign, out=keys)
    return keys


def _first_argmax(scores: np.ndarray, out: np.ndarray) -> None:
    """Running maximum over classes; ties keep the first class, like torch.argmax, and need no class-axis sort."""
    best = scores[0].copy()
    better = np.empty(best.shape, dtype=bool)
    out[...] = 0
    for c in range(1, scores.shape[0]):
        np.greater(scores[c], best, out=better)
        np.maximum(best, scores[c], out=best)
        np.copyto(out, c, where=better)
