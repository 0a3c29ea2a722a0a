"""How a problem with an input reaches the user: one InvalidInputError naming the file, or an InputWarning."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Union

from ..errors import InvalidInputError, TotalSegmentatorError

PathLike = Union[str, os.PathLike]


class InputWarning(UserWarning):
    """An input that can be segmented but probably not as the user expects (4-D, constant, several series)."""


def non_scalar_message(voxel_type: str) -> str:
    return (
        f"Expected a scalar (grayscale) image, got voxel type {voxel_type}. "
        "Convert RGB, vector or complex images to a single-channel intensity image first."
    )


@contextmanager
def read_errors(source: PathLike, what: str) -> Iterator[None]:
    """Turn any library error while reading into an InvalidInputError naming the file."""
    try:
        yield
    except TotalSegmentatorError:
        raise
    except Exception as err:
        raise InvalidInputError(
            f"Could not read {source} as {what}: {err}. Check that it is complete and not corrupt."
        ) from err

