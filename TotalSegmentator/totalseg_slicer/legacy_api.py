"""What scripts written for the existing TotalSegmentator Slicer extension pass and expect, mapped onto ours.

That extension's logic (lassoan/SlicerTotalSegmentator, ``TotalSegmentator.py``) is also reached as
``slicer.util.getModuleLogic("TotalSegmentator")``, so its console scripts now call ours. Its conventions:
``quality`` is "normal" / "fast" / "faster" or a bool (``True`` meaning fast); ``cpu=True`` forces the CPU;
``subset`` is the ROI subset; ``tasks`` is a dict of task metadata; its parameter node stores ``Task``,
``Quality``, ``CPU`` and the options as "true"/"false" strings beside the ``InputVolume`` and
``OutputSegmentation`` references. Qt-free and slicer-free, so it is tested directly.

:class:`LegacyLogic` carries that logic's attributes and helpers into ours (mixed into ``TotalSegmentatorLogic``),
so our logic class reads as its own work.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Optional, Union

from totalseg_engine import all_tasks, get_task

from .job_request import JobRequest, job_request

QUALITY_OF_SPEED = {"normal": "normal", "fast": "fast", "fastest": "faster"}
SPEED_OF_QUALITY = {quality: speed for speed, quality in QUALITY_OF_SPEED.items()}

# The existing extension's parameter node: its name -> (our parameter, how the text maps).
LEGACY_FLAGS = {"UseStandardSegmentNames": "useStandardSegmentNames", "RobustCrop": "robustCrop",
                "RemoveSmallBlobs": "removeSmallBlobs", "HigherOrderResampling": "higherOrderResampling"}
LEGACY_REFERENCES = {"InputVolume": "inputVolume", "OutputSegmentation": "outputSegmentation"}


def speed_of(quality: Union[str, bool, None] = None, fast: Optional[bool] = None, fastest: bool = False) -> str:
    """Our speed for the existing extension's ``quality`` (or a bool), an older script's ``fast=``, or ours."""
    if fastest:
        return "fastest"
    if quality is None:
        return "fast" if fast else "normal"
    if isinstance(quality, bool):
        return "fast" if quality else "normal"
    if quality in SPEED_OF_QUALITY:
        return SPEED_OF_QUALITY[quality]
    if quality in QUALITY_OF_SPEED:
        return quality
    raise ValueError(f"Unknown quality '{quality}': use 'normal', 'fast' or 'faster'.")


def quality_modes(task: str) -> list[str]:
    """The quality names the existing extension offers for a task ("normal", "fast", "faster")."""
    return [QUALITY_OF_SPEED[speed] for speed in get_task(task).speeds]


def task_table() -> OrderedDict:
    """``logic.tasks`` as the existing extension built it, for every task of our registry."""
    table = OrderedDict()
    for task in all_tasks().values():
        entry: dict[str, Any] = {"title": task.name if task.modality == "CT" else f"{task.name} ({task.modality})",
                                 "modalities": [task.modality], "qualityModes": quality_modes(task.name),
                                 "supportsMultiLabel": True, "requiresLicense": task.licensed,
                                 "description": task.info or ", ".join(task.class_names)}
        table[task.name] = entry
    return table


def migrate_parameter_node(node) -> bool:
    """Carry a scene's parameter node of the existing extension over to our parameters (once; True if done).

    Runs before our wrapper fills in defaults, so a scene saved with the existing extension opens with its
    volume, segmentation, task, quality, CPU choice and options in our panel.
    """
    if not node.HasParameter("Task") or node.HasParameter("task"):
        return False
    task = node.GetParameter("Task")
    node.SetParameter("task", task if task in all_tasks() else "total")
    quality = node.GetParameter("Quality") or "normal"
    node.SetParameter("speed", SPEED_OF_QUALITY.get(quality, "normal"))
    node.SetParameter("device", "cpu" if node.GetParameter("CPU") == "true" else "auto")
    for legacy, ours in LEGACY_FLAGS.items():
        if node.HasParameter(legacy):
            node.SetParameter(ours, "True" if node.GetParameter(legacy) == "true" else "False")
    for legacy, ours in LEGACY_REFERENCES.items():
        referenced = node.GetNodeReferenceID(legacy)
        if referenced:
            node.SetParameter(ours, "")
            node.SetNodeReferenceID(ours, referenced)
    return True


class LegacyLogic:
    """The existing extension's logic interface, on ours: its attributes (read by console runs; the panel has its
    own parameters), its helper methods, and its console arguments mapped onto a job request.

    The class it is mixed into provides ``setLicenseKey``, ``ensureDependencies`` and ``setWeightsFolder``.
    """

    def initLegacyAttributes(self) -> None:
        self.useStandardSegmentNames = True
        self.robustCrop = False
        self.removeSmallBlobs = False
        self.higherOrderResampling = False
        self.totalSegmentatorWeightsPath: Optional[str] = None
        self.logCallback: Optional[Callable[[str], None]] = None

    def consoleJobRequest(self, quality: Union[str, bool, None], cpu: bool, task: Optional[str],
                          subset: Optional[list[str]], options: dict[str, Any]) -> JobRequest:
        """``process()``'s arguments in the existing extension's order, plus ours as keywords (``fast``,
        ``fastest``, ``roiSubset``, ``device`` and the request's own), with the attributes as defaults."""
        speed = speed_of(quality, options.pop("fast", None), options.pop("fastest", False))
        roi = options.pop("roiSubset", None) or subset
        device = options.pop("device", None) or ("cpu" if cpu else "auto")
        defaults = {"use_standard_names": self.useStandardSegmentNames, "robust_crop": self.robustCrop,
                    "remove_small_blobs": self.removeSmallBlobs,
                    "higher_order_resampling": self.higherOrderResampling}
        if self.totalSegmentatorWeightsPath:
            self.setWeightsFolder(self.totalSegmentatorWeightsPath)
        return job_request(task=task or "total", speed=speed, roi_subset=list(roi or []), device=device,
                           **{**defaults, **options})

    def log(self, line: str) -> None:
        """The existing extension's ``logCallback``: engine output and progress messages, as they come."""
        if self.logCallback:
            self.logCallback(line)

    @property
    def tasks(self) -> OrderedDict:
        """Task metadata as the existing extension's ``logic.tasks`` (title, modalities, qualityModes, ...)."""
        return task_table()

    def getSupportedQualityModesForTask(self, task: str) -> list[str]:
        return quality_modes(task)

    def isMultiLabelSupportedForTask(self, task: str) -> bool:
        return task in all_tasks()

    def isLicenseRequiredForTask(self, task: str) -> bool:
        return task in all_tasks() and all_tasks()[task].licensed

    def setLicense(self, licenseStr: str) -> None:
        self.setLicenseKey(licenseStr)

    def setupPythonRequirements(self, upgrade: bool = False) -> bool:
        """Install the engine's packages without asking (the existing extension's console entry point)."""
        return self.ensureDependencies(askConfirmation=False, reinstall=upgrade)
