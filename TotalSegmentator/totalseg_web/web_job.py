"""The Slicer panel's job, as the web app runs it: on the opened file itself, keeping the outputs for download.

Running the engine on the uploaded file (not on a copy exported from the scene) makes the downloaded NIfTI the
command line's result voxel for voxel, and lets a DICOM input also get its DICOM SEG from the same run. The
export, child process, progress, cancel and import are the panel's ``SegmentationJob``: no second pipeline.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import slicer
from totalseg_engine import (
    atomic_output,
    multi_output_paths,
    read_image,
    segment_info,
    split_suffix,
    statistics_file,
    surface_file_has_triangles,
)
from totalseg_slicer import seg_nrrd, segmentation_import
from totalseg_slicer.job import SegmentationJob
from totalseg_slicer.job_request import JobRequest

from .inputs import OpenedInput

DOWNLOAD_KINDS = {  # kind -> (file suffix, what the download link says)
    "nifti": (".nii.gz", "Multilabel NIfTI (with label table)"),
    "seg_nrrd": (".seg.nrrd", "Slicer segmentation (.seg.nrrd)"),
    "dicom_seg": ("_seg.dcm", "DICOM SEG"),
    "statistics_csv": ("_statistics.csv", "Statistics (CSV)"),
    "statistics_json": ("_statistics.json", "Statistics (JSON)"),
    "surfaces_stl": ("_surfaces_stl.zip", "Surfaces (STL, zip)"),
}


class WebSegmentationJob(SegmentationJob):
    def __init__(self, scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLScalarVolumeNode,
                 request: JobRequest, opened: OpenedInput, results_folder: Path, python: Optional[str] = None,
                 temp_root: Optional[Path] = None, surfaces: bool = False) -> None:
        request = replace(request, segmentation=replace(request.segmentation, statistics=True))
        super().__init__(scene, input_volume, None, request, python=python, temp_root=temp_root)
        self.opened = opened
        self.results_folder = results_folder
        self.output_types = ("nifti", *(("dicom_seg",) if opened.is_dicom else ()), *(("stl",) if surfaces else ()))
        self.downloads: dict[str, Path] = {}
        self.labels: Optional[np.ndarray] = None  # on the volume's voxels (i, j, k), for "what is under the cursor"
        self.statistics: Optional[list[dict]] = None  # statistics_rows() of the engine's statistics.json

    @property
    def engine_pid(self) -> Optional[int]:
        """The engine child's PID, which is also its process group's (the run queue records it)."""
        return self._process.pid if self._process is not None else None

    def export_input(self, path: Path) -> Path:
        return self.opened.source

    def result_labels(self) -> np.ndarray:
        """The result read once, on the volume's voxels: imported as such, and kept for the cursor probe."""
        image = read_image(self.result_path)
        self.labels = segmentation_import.labels_on_volume_grid(
            np.asanyarray(image.dataobj), image.affine, self.input_volume)
        return self.labels

    def load_statistics(self) -> None:
        """Rows for the page's table and the CSV, read once; no table node (the page shows its own table)."""
        self.statistics = statistics_rows(self._engine_files()["statistics_json"])

    def import_result(self) -> None:
        super().import_result()
        try:
            self._keep_outputs()
        except Exception:  # no half set of downloads: the job fails as a whole (the panel's job reports it)
            shutil.rmtree(self.results_folder, ignore_errors=True)
            raise

    def _engine_files(self) -> dict[str, Path]:
        """Where the engine wrote each output, by its own naming rule for several output types."""
        files = multi_output_paths(self.result_path, self.output_types, self.request.task)
        files["statistics_json"] = statistics_file(True, self.result_path, True, self.output_types)
        return files

    def _keep_outputs(self) -> None:
        """Move the engine's files out of the job's temporary folder (removed after this) and add the others."""
        self.results_folder.mkdir(parents=True, exist_ok=True)
        stem = f"{_file_stem(self.opened.name)}_{self.request.task}"
        target = {kind: self.results_folder / f"{stem}{suffix}" for kind, (suffix, _) in DOWNLOAD_KINDS.items()}
        files = self._engine_files()
        surfaces_folder = files.pop("stl", None)
        for kind, source in files.items():
            if source.exists():
                shutil.move(str(source), target[kind])
                self.downloads[kind] = target[kind]
        if surfaces_folder is not None:
            self.downloads["surfaces_stl"] = zip_surfaces(surfaces_folder, target["surfaces_stl"])
        seg_nrrd.save_seg_nrrd(self.segmentation_node, target["seg_nrrd"], overwrite=True)
        self.downloads["seg_nrrd"] = target["seg_nrrd"]
        if self.statistics is not None:
            write_statistics_csv(self.statistics, target["statistics_csv"])
            self.downloads["statistics_csv"] = target["statistics_csv"]


def zip_surfaces(folder: Path, target: Path) -> Path:
    """The surfaces of the structures found, in one zip (the engine also writes empty ones for absent classes)."""
    with atomic_output(target, overwrite=True) as temp, zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.glob("*.stl")):
            if surface_file_has_triangles(path):
                archive.write(path, path.name)
    return target


def _file_stem(name: str) -> str:
    stem = split_suffix(name)[0]
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "segmentation"


def statistics_rows(statistics_json: Path) -> list[dict]:
    """One row per class: class name, display name, volume (mm³) and mean intensity, as the engine computed."""
    stats = json.loads(statistics_json.read_text(encoding="utf-8"))
    rows = []
    for class_name, values in stats.items():
        display = segment_info(class_name)[0]
        rows.append({"structure": class_name, "name": display, "volume_mm3": values.get("volume"),
                     "intensity": values.get("intensity")})
    return rows


def write_statistics_csv(rows: list[dict], target: Path) -> None:
    with atomic_output(target, overwrite=True) as temp, open(temp, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=["structure", "name", "volume_mm3", "intensity"])
        writer.writeheader()
        writer.writerows(rows)
