"""Exception types of the engine, chosen by meaning so callers can react to each."""

from __future__ import annotations


class TotalSegmentatorError(Exception):
    """Base class: an error whose message is meant for the user, not a traceback."""


class InvalidInputError(TotalSegmentatorError, ValueError):
    """The input image cannot be segmented (wrong dimension, empty, non-finite, unreadable)."""


class UnknownTaskError(TotalSegmentatorError, ValueError):
    """A task, mode or class name that the registry does not know."""


class WeightsError(TotalSegmentatorError):
    """Model weights are missing, corrupt or could not be fetched."""


class WeightsMissingError(WeightsError):
    """Weights for a dataset are not installed and could not be downloaded."""


class ModelPlansError(WeightsError):
    """A model folder's plans.json or dataset.json is missing, unreadable or lacks what inference needs."""


class DownloadError(WeightsError):
    """A weights download or import failed; nothing was installed."""


class LicenseError(TotalSegmentatorError):
    """A licensed task was requested without a valid licence key."""


class OutputExistsError(TotalSegmentatorError, FileExistsError):
    """The output path exists and overwriting was not allowed."""


class CancelledError(TotalSegmentatorError):
    """The run was cancelled by the caller."""


class InvalidOptionError(TotalSegmentatorError, ValueError):
    """An option value or combination that cannot work (bad output path, output type, ...)."""
