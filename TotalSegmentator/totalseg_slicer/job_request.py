"""What a panel or console run asks for, in the engine's terms: the Slicer vocabulary mapped onto one request.

Light on purpose (the engine's request, the task registry and the standard library): the module script imports it
when Slicer starts, before nibabel or torch may be installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from totalseg_engine import SegmentationRequest, get_task

REMOTE_DEVICE = "remote"  # the panel's device choice "Remote server": run on the server set in the panel


@dataclass(frozen=True)
class JobRequest:
    """What a panel or console run asks for: the engine's request, and how its result is loaded into the scene."""

    segmentation: SegmentationRequest = field(default_factory=SegmentationRequest)
    use_standard_names: bool = True
    replace_existing: bool = True
    remote: bool = False  # on the panel's remote server (the server's own engines choose the device)

    @property
    def task(self) -> str:
        return self.segmentation.task

    @property
    def roi_subset(self) -> tuple[str, ...]:
        return self.segmentation.roi_subset

    def validate(self) -> None:
        """Raise before anything starts: unknown task, speed or ROI class."""
        task = get_task(self.task)
        task.mode(self.segmentation.speed)
        task.check_classes(list(self.roi_subset))


def job_request(*, device: str = "auto", offline: bool = False, use_standard_names: bool = True,
                replace_existing: bool = True, **options: Any) -> JobRequest:
    """The Slicer vocabulary (the panel's parameters and the console's keywords) as a job request, in one place.

    ``device`` is the panel's choice ("auto": CUDA, then Apple MPS, then the CPU; "remote": the panel's remote
    server, whose engines choose theirs); ``offline`` the console's name
    for not downloading; every other keyword is a :class:`SegmentationRequest` field under its own name (``task``,
    ``speed``, ``roi_subset``, ``statistics``, ``remove_small_blobs`` ...).
    """
    remote = device == REMOTE_DEVICE
    try:
        segmentation = SegmentationRequest(device="auto" if remote else device, download=not offline, **options)
    except TypeError as err:  # a keyword that is no option
        raise ValueError(f"Unknown segmentation option: {err}") from err
    return JobRequest(segmentation, use_standard_names, replace_existing, remote)


def from_parameter_node(params: Any) -> JobRequest:
    """The panel's parameter node (``TotalSegmentatorParameterNode``) as a job request: its one mapping."""
    return job_request(
        task=params.task, speed=params.speed, roi_subset=list(params.roiSubset), device=params.device,
        robust_crop=params.robustCrop, body_seg=params.bodySeg, remove_small_blobs=params.removeSmallBlobs,
        higher_order_resampling=params.higherOrderResampling, force_split=params.forceSplit,
        statistics=params.computeStatistics, use_standard_names=params.useStandardSegmentNames)
