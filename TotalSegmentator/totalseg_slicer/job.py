"""One segmentation run as the panel performs it: export the volume, run the engine in a child process, import.

Qt-free on purpose: the Slicer logic calls :meth:`SegmentationJob.poll` from a QTimer, the tests call it in a
loop against slicer-core's scene, and both exercise exactly the same path. Nothing touches the output
segmentation until the child has finished successfully; a failure or Cancel leaves it as it was and removes
every temporary file.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import slicer
from totalseg_engine import runner
from totalseg_engine.progress import ProgressEvent
from totalseg_engine.tasks import get_task

from . import segmentation_import, sequences, statistics_table
from .volume_export import export_volume

ProgressFn = Callable[[Optional[float], str], None]
LogFn = Callable[[str], None]


@dataclass
class JobRequest:
    """What to run: the panel's options (also the keyword arguments of ``Logic.process``)."""

    task: str = "total"
    speed: str = "normal"
    roi_subset: list[str] = field(default_factory=list)
    device: str = "auto"
    robust_crop: bool = False
    body_seg: bool = False
    remove_small_blobs: bool = False
    higher_order_resampling: bool = False
    statistics: bool = False
    use_standard_names: bool = True
    replace_existing: bool = True
    license_number: Optional[str] = None
    offline: bool = False

    def validate(self) -> None:
        """Raise before anything starts: unknown task, speed or ROI class."""
        task = get_task(self.task)
        task.mode(self.speed)
        task.check_classes(self.roi_subset)


def slicer_python() -> str:
    """Slicer's own Python (``PythonSlicer``); in Slicer ``sys.executable`` is the application itself."""
    return shutil.which("PythonSlicer") or sys.executable


def _device_for_engine(device: str) -> str:
    return "gpu" if device == "auto" else device


class _Job:
    """What every job shares: the request, the scene and output node, callbacks and the final state."""

    def __init__(self, scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLScalarVolumeNode,
                 segmentation_node: Optional[slicer.vtkMRMLSegmentationNode], request: JobRequest,
                 python: Optional[str], temp_root: Optional[Path]) -> None:
        if input_volume is None:
            raise ValueError("Select an input volume.")
        request.validate()
        self.scene = scene
        self.input_volume = input_volume
        self.segmentation_node = segmentation_node
        self.request = request
        self.python = python or slicer_python()
        self.temp_root = temp_root
        self.on_progress: ProgressFn = lambda fraction, message: None
        self.on_log: LogFn = lambda line: None
        self.state_name = "not started"
        self.error_message = ""

    def _output_node(self) -> slicer.vtkMRMLSegmentationNode:
        """The segmentation to fill, created (named after the input and task) when none was given."""
        if self.segmentation_node is None:
            self.segmentation_node = self.scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{self.input_volume.GetName()} {self.request.task}")
            self.segmentation_node.CreateDefaultDisplayNodes()
        return self.segmentation_node


class SegmentationJob(_Job):
    """Export → child process → import for one volume; poll() until it returns True."""

    output_types: tuple[str, ...] = ("nifti",)  # the multilabel NIfTI that is imported comes first

    def __init__(self, scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLScalarVolumeNode,
                 segmentation_node: Optional[slicer.vtkMRMLSegmentationNode], request: JobRequest,
                 table_node: Optional[slicer.vtkMRMLTableNode] = None, python: Optional[str] = None,
                 temp_root: Optional[Path] = None) -> None:
        super().__init__(scene, input_volume, segmentation_node, request, python, temp_root)
        self.table_node = table_node
        self.segment_ids: list[str] = []
        self._process: Optional[runner.EngineProcess] = None
        self._folder: Optional[Path] = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Export the input and launch the engine; returns at once."""
        self._folder = Path(tempfile.mkdtemp(prefix="TotalSegmentator-", dir=self.temp_root))
        try:
            self.on_progress(0.0, "Exporting the input volume")
            source = self._export(self._folder / "input.nrrd")
            self._process = runner.EngineProcess(self._command(source)).start()
        except Exception:
            self._cleanup()
            raise
        self.state_name = "running"

    def _export(self, path: Path) -> Path:
        return export_volume(self.input_volume, path, compress=False)

    def _command(self, source: Path) -> list[str]:
        r = self.request
        return runner.engine_command(
            source, self._result_path, python=self.python, task=r.task, speed=r.speed,
            roi_subset=r.roi_subset or None, device=_device_for_engine(r.device), robust_crop=r.robust_crop,
            body_seg=r.body_seg, remove_small_blobs=r.remove_small_blobs,
            higher_order_resampling=r.higher_order_resampling, statistics=r.statistics,
            license_number=r.license_number, output_type=self.output_types, ml=True, overwrite=True,
            offline=r.offline)

    @property
    def _result_path(self) -> Path:
        return self._folder / "segmentation.nii.gz"

    def poll(self) -> bool:
        """Forward progress and log lines; import the result when the child is done. True once finished."""
        if self._process is None or self.state_name not in ("not started", "running"):
            return self.state_name not in ("not started", "running")
        for message in self._process.poll():
            if isinstance(message, runner.ProgressMessage):
                self._report(message.event)
            elif isinstance(message, runner.LogMessage):
                self.on_log(message.text)
            elif isinstance(message, runner.FinishedMessage):
                self._finish(message.state)
                return True
        return False

    def cancel(self) -> None:
        """Kill the whole process tree (within 2 s), remove temporary files, leave the output untouched."""
        if self._process is not None and not self._process.state.finished:
            self._process.cancel()
            self.poll()
        if self.state_name == "running":
            self._set_final("cancelled", "Cancelled.")

    def last_lines(self, n: int = 20) -> list[str]:
        return self._process.last_lines(n) if self._process else []

    @property
    def elapsed_s(self) -> float:
        return self._process.elapsed_s if self._process else 0.0

    # ---------------------------------------------------------------- progress and result

    def _report(self, event: ProgressEvent) -> None:
        label = f" (model {event.model} of {event.of})" if event.model and event.of else ""
        self.on_progress(event.fraction, f"{event.message or event.stage}{label}")

    def _finish(self, state: runner.State) -> None:
        if state is runner.State.SUCCEEDED:
            given = self.segmentation_node
            try:
                self._import_result()
            except Exception as err:  # the import failed: the node is unchanged (all-or-nothing import)
                self._discard_created_node(given)
                self._set_final("failed", f"Loading the result failed: {err}")
                return
            self._set_final("succeeded", "")
        elif state is runner.State.CANCELLED:
            self._set_final("cancelled", "Cancelled.")
        else:
            self._set_final("failed", self._process.error_summary())

    def _discard_created_node(self, given) -> None:
        """Remove an output node this job created for a result that could not be loaded."""
        if given is None and self.segmentation_node is not None:
            if self.segmentation_node.GetScene() is self.scene:
                self.scene.RemoveNode(self.segmentation_node)
            self.segmentation_node = None

    def _set_final(self, state: str, message: str) -> None:
        self.state_name = state
        self.error_message = message
        self._cleanup()

    def _import_result(self) -> None:
        self.on_progress(1.0, "Loading the segmentation")
        task = get_task(self.request.task)
        label_map = _requested_classes(task.classes, self.request.roi_subset)
        self.segment_ids = segmentation_import.import_segmentation(
            self.scene, self._labels(), self._output_node(), self.input_volume, label_map, task.name,
            segment_info_function(self.request.use_standard_names), self.request.replace_existing)
        if self.request.statistics:
            self._load_statistics()

    def _labels(self) -> segmentation_import.LabelSource:
        """What is imported: the engine's result file (a subclass may read it itself and pass the array on)."""
        return self._result_path

    def _load_statistics(self) -> None:
        path = self._folder / "statistics.json"
        stats = json.loads(path.read_text(encoding="utf-8"))
        names = {name: segment_info_function(self.request.use_standard_names)(0, name)[0] for name in stats}
        self.table_node = statistics_table.statistics_to_table(self.scene, stats, self.table_node, names)

    def _cleanup(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _requested_classes(classes: dict[int, str], roi_subset: list[str]) -> dict[int, str]:
    if not roi_subset:
        return dict(classes)
    return {label: name for label, name in classes.items() if name in roi_subset}


def segment_info_function(use_standard_names: bool) -> segmentation_import.SegmentInfoFn:
    """Segment name, colour and terminology entry of a class, from the terminology table."""
    from totalseg_engine import terminology

    def info(label: int, class_name: str):
        return terminology.segment_info(class_name, use_standard_names)

    return info


class SequenceJob(_Job):
    """Every frame of a volume sequence, one engine run after another, into a segmentation sequence.

    Frames are exported from the sequence's data nodes; each result becomes a segmentation of that frame,
    stored at the frame's index value. The output node becomes the proxy of the new segmentation sequence.
    """

    def __init__(self, scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLScalarVolumeNode,
                 segmentation_node: Optional[slicer.vtkMRMLSegmentationNode], request: JobRequest,
                 table_node: Optional[slicer.vtkMRMLTableNode] = None, python: Optional[str] = None,
                 temp_root: Optional[Path] = None) -> None:
        super().__init__(scene, input_volume, segmentation_node, request, python, temp_root)
        self.frames = sequences.frames_of(scene, input_volume)
        if not self.frames:
            raise ValueError(f"Volume '{input_volume.GetName()}' is not part of a sequence.")
        self._results: dict[str, slicer.vtkMRMLSegmentationNode] = {}
        self._current: Optional[_FrameJob] = None
        self._next = 0

    def start(self) -> None:
        self.state_name = "running"
        self._start_next()

    def _start_next(self) -> None:
        frame = self.frames[self._next]
        self._next += 1
        job = _FrameJob(self.scene, frame, self.input_volume, self.request, self.python, self.temp_root)
        total = len(self.frames)
        job.on_progress = lambda fraction, message, i=self._next: self.on_progress(
            None if fraction is None else ((i - 1) + fraction) / total, f"Frame {i} of {total}: {message}")
        job.on_log = self.on_log
        self._current = job
        job.start()

    def poll(self) -> bool:
        if self._current is None:
            return self.state_name != "running"
        if not self._current.poll():
            return False
        job, self._current = self._current, None
        if job.state_name != "succeeded":
            self.state_name, self.error_message = job.state_name, job.error_message
            return True
        self._results[job.frame.index_value] = job.segmentation_node
        if self._next < len(self.frames):
            self._start_next()
            return False
        self._assemble()
        return True

    def _assemble(self) -> None:
        sequences.assemble_segmentation_sequence(self.scene, self.input_volume, self._results, self._output_node())
        self.state_name = "succeeded"

    def cancel(self) -> None:
        if self._current is not None:
            self._current.cancel()
            self._current = None
        if self.state_name == "running":
            self.state_name, self.error_message = "cancelled", "Cancelled."

    def last_lines(self, n: int = 20) -> list[str]:
        return self._current.last_lines(n) if self._current else []


class _FrameJob(SegmentationJob):
    """A SegmentationJob for one sequence frame: exported through the proxy's transform, built off-scene."""

    def __init__(self, scene, frame: sequences.Frame, proxy, request: JobRequest, python, temp_root) -> None:
        super().__init__(scene, frame.volume, None, request, None, python, temp_root)
        self.frame = frame
        self.proxy = proxy

    def _export(self, path: Path) -> Path:
        return export_volume(self.frame.volume, path, compress=False, transform_source=self.proxy)

    def _import_result(self) -> None:
        task = get_task(self.request.task)
        self.segmentation_node = segmentation_import.build_segmentation_node(
            self._result_path, self.frame.volume, _requested_classes(task.classes, self.request.roi_subset),
            task.name, segment_info_function(self.request.use_standard_names), transform_source=self.proxy)
