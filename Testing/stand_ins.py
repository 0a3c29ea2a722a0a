"""Stand-in model runners with known answers, for testing everything around the network."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

BINS = (150.0, 450.0, 750.0)  # intensity thresholds -> labels 1..3


def label_by_intensity(values: np.ndarray) -> np.ndarray:
    """The answer the stand-in gives: label = number of thresholds the intensity exceeds."""
    return np.digitize(values, BINS).astype(np.uint8)


class IntensityRunner:
    """Labels each voxel by its intensity and records what the pipeline handed it."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def predict(self, channels: Sequence[np.ndarray], spacing_xyz: Sequence[float],
                on_tile: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        self.calls.append({"shape": channels[0].shape, "spacing": tuple(float(s) for s in spacing_xyz)})
        if on_tile is not None:
            on_tile(1, 1)
        return label_by_intensity(np.asarray(channels[0]))


def intensity_factory(runners: Optional[dict] = None):
    """A runner factory handing out IntensityRunners (kept in ``runners`` by dataset id)."""
    store = runners if runners is not None else {}

    def make(spec, step):
        store[spec.dataset_id] = IntensityRunner()
        return store[spec.dataset_id]

    return make
