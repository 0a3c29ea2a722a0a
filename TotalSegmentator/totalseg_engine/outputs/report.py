"""The machine-readable run report (``-rp/--report``): what ran, on what, for how long, and what was written.

The keys and their meaning are the official 2.18 ``build_run_report``'s, so automation written for it reads ours;
``totalsegmentator_version`` holds this engine's version (``totalseg_engine x.y.z``), as it is what ran.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any, Optional, Union

import nibabel as nib

from .. import __version__
from ..imageio import atomic_output
from ..request import SegmentationRequest
from ..tasks import get_task

Source = Union[str, Path, nib.Nifti1Image]


def run_report(source: Source, output: Optional[Path], request: SegmentationRequest, device: str,
               seconds: float) -> dict[str, Any]:
    """The report of a finished run; ``device`` is the device it ran on (cpu, cuda:N or mps)."""
    task = get_task(request.task)
    classes = {label: name for label, name in task.classes.items()
               if not request.roi_subset or name in request.roi_subset}
    types = list(request.output_types)
    return {
        "totalsegmentator_version": f"totalseg_engine {__version__}",
        "nnunetv2_version": _version("nnunetv2"),
        "torch_version": _version("torch"),
        "task": task.name,
        "modality": task.modality,
        "license_required": task.licensed,
        "device": "gpu" if device.startswith("cuda") else device,
        "fast": request.speed == "fast",
        "fastest": request.speed == "fastest",
        "save_lowres": request.save_lowres,
        "multilabel": request.multilabel,
        "output_type": types[0] if len(types) == 1 else types,  # as the official passes it on: one type as a string
        "roi_subset": list(request.roi_subset) or None,
        "input": "Nifti1Image" if isinstance(source, nib.Nifti1Image) else str(source),
        "output": None if output is None else str(output),
        "num_classes": len(classes),
        "classes": {str(label): name for label, name in classes.items()},
        "runtime_seconds": round(seconds, 2),
        "output_files": sorted(p.name for p in output.glob("*.nii.gz")) if output is not None and output.is_dir()
        else [],
    }


def write_report(report: dict[str, Any], path: Union[str, Path]) -> Path:
    """Write the report as the official does (JSON, indent 2), atomically, creating its folder."""
    with atomic_output(Path(path).expanduser().absolute(), overwrite=True) as temp, \
            open(temp, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    return Path(path)


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
