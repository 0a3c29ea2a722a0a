"""One segmentation run as the panel performs it: export the volume, run the engine in a child process, import.

Qt-free on purpose: the Slicer logic calls :meth:`SegmentationJob.poll` from a QTimer, the tests call it in a
loop against slicer-core's scene, and both exercise exactly the same path. Nothing touches the output
segmentation until the child has finished successfully; a failure or Cancel leaves it as it was and removes
every temporary file.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import slicer
from totalseg_engine import (
    EngineProcess,
    FinishedMessage,
    LogMessage,
    ProgressEvent,
    ProgressMessage,
    SegmentationRequest,
    State,
    engine_command,
    get_task,
    segment_info,
)

from . import segmentation_import, sequences, statistics_table
from .devices import slicer_python
from .job_request import JobRequest
from .volume_export import export_volume

ProgressFn = Callable[[Optional[float], str], None]
LogFn = Callable[[str], None]
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
        self.state = State.NOT_STARTED
        self.error_message = ""

    def _output_node(self) -> slicer.vtkMRMLSegmentationNode:
        """The segmentation to fill, created (named after the input and task) when none was given."""
        if self.segmentation_node is None:
            self.segmentation_node = self.scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{self.input_volume.GetName()} {self.request.task}")
            self.segmentation_node.CreateDefaultDisplayNodes()
        return self.segmentation_node


class SegmentationJob(_Job):
    """Export → child process → import for one volume; poll() until it returns True.

    Hooks for subclasses (the web app's job, a sequence frame's job), each with the panel's behaviour by default:

    - :attr:`output_types`: what the engine writes (the multilabel NIfTI that is imported comes first);
    - :meth:`export_input`: the file the engine reads;
    - :meth:`result_labels`: what is imported (the result file, or an array read from it);
    - :meth:`import_result`: loading the finished result into the scene;
    - :meth:`load_statistics`: what happens with statistics.json (a table node).

    Hooks run in the thread that polls (Slicer's main thread, the web app's event loop); the engine's files
    are in the job's temporary folder until the job finishes (:attr:`result_path`).
    """

    output_types: tuple[str, ...] = ("nifti",)

    def __init__(self, scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLScalarVolumeNode,
                 segmentation_node: Optional[slicer.vtkMRMLSegmentationNode], request: JobRequest,
                 table_node: Optional[slicer.vtkMRMLTableNode] = None, python: Optional[str] = None,
                 temp_root: Optional[Path] = None) -> None:
        super().__init__(scene, input_volume, segmentation_node, request, python, temp_root)
        self.table_node = table_node
        self.segment_ids: list[str] = []
        self._process: Optional[EngineProcess] = None
        self._folder: Optional[Path] = None

    # ---------------------------------------------------------------- hooks

    def export_input(self, path: Path) -> Path:
        """Hook: write the input for the engine (an NRRD at ``path``) and return the file the engine reads."""
        return export_volume(self.input_volume, path, compress=False)

    def result_labels(self) -> segmentation_import.LabelSource:
        """Hook: what is imported: the engine's result file (a subclass may read it itself and pass the array on)."""
        return self.result_path

    def import_result(self) -> None:
        """Hook: load the finished result into the output segmentation (all or nothing), then the statistics."""
        self.on_progress(1.0, "Loading the segmentation")
        task = get_task(self.request.task)
        label_map = _requested_classes(task.classes, self.request.roi_subset)
        self.segment_ids = segmentation_import.import_segmentation(
            self.scene, self.result_labels(), self._output_node(), self.input_volume, label_map, task.name,
            segment_info_function(self.request.use_standard_names), self.request.replace_existing)
        if self.request.segmentation.statistics:
            self.load_statistics()

    def load_statistics(self) -> None:
        """Hook: statistics.json of the run as a table node (names as the segments are named)."""
        stats = json.loads((self._folder / "statistics.json").read_text(encoding="utf-8"))
        names = {name: segment_info_function(self.request.use_standard_names)(0, name)[0] for name in stats}
        self.table_node = statistics_table.statistics_to_table(self.scene, stats, self.table_node, names)

    @property
    def result_path(self) -> Path:
        """The multilabel NIfTI the engine writes (others beside it, named by the engine's rule)."""
        return self._folder / "segmentation.nii.gz"

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Export the input and launch the engine; returns at once."""
        source = self._export_into_new_folder()
        try:
            self._process = EngineProcess(self._command(source)).start()
        except Exception:
            self._cleanup()
            raise
        self.state = State.RUNNING

    def _export_into_new_folder(self) -> Path:
        """The job's temporary folder, with the input exported into it (nothing is left when that fails)."""
        self._folder = Path(tempfile.mkdtemp(prefix="TotalSegmentator-", dir=self.temp_root))
        try:
            self.on_progress(0.0, "Exporting the input volume")
            return self.export_input(self._folder / "input.nrrd")
        except Exception:
            self._cleanup()
            raise

    def engine_request(self) -> SegmentationRequest:
        """The request the engine runs: the user's, writing this job's outputs into its temporary folder."""
        return replace(self.request.segmentation, output_types=self.output_types, multilabel=True,
                       overwrite="always")

    def _command(self, source: Path) -> list[str]:
        return engine_command(source, self.result_path, self.engine_request(), python=self.python)

    def poll(self) -> bool:
        """Forward progress and log lines; import the result when the child is done. True once finished."""
        if self._process is None or self.state.finished:
            return self.state.finished
        for message in self._process.poll():
            if isinstance(message, ProgressMessage):
                self._report(message.event)
            elif isinstance(message, LogMessage):
                self.on_log(message.text)
            elif isinstance(message, FinishedMessage):
                self._finish(message.state)
                return True
        return False

    def cancel(self) -> None:
        """Kill the whole process tree (within 2 s), remove temporary files, leave the output untouched."""
        if self._process is not None and not self._process.state.finished:
            self._process.cancel()
            self.poll()
        if self.state is State.RUNNING:
            self._set_final(State.CANCELLED, "Cancelled.")

    def last_lines(self, n: int = 20) -> list[str]:
        return self._process.last_lines(n) if self._process else []

    @property
    def elapsed_s(self) -> float:
        return self._process.elapsed_s if self._process else 0.0

    # ---------------------------------------------------------------- progress and result

    def _report(self, event: ProgressEvent) -> None:
        label = f" (model {event.model} of {event.of})" if event.model and event.of else ""
        self.on_progress(event.fraction, f"{event.message or event.stage}{label}")

    def _finish(self, state: State) -> None:
        if state is State.SUCCEEDED:
            self._import_and_succeed()
        elif state is State.CANCELLED:
            self._set_final(State.CANCELLED, "Cancelled.")
        else:
            self._set_final(State.FAILED, self._process.error_summary())

    def _import_and_succeed(self) -> None:
        """Load the finished result; a failed import leaves the node unchanged (all or nothing) and fails the job."""
        given = self.segmentation_node
        try:
            self.import_result()
        except Exception as err:
            self._discard_created_node(given)
            self._set_final(State.FAILED, f"Loading the result failed: {err}")
            return
        self._set_final(State.SUCCEEDED, "")

    def _discard_created_node(self, given) -> None:
        """Remove an output node this job created for a result that could not be loaded."""
        if given is None and self.segmentation_node is not None:
            if self.segmentation_node.GetScene() is self.scene:
                self.scene.RemoveNode(self.segmentation_node)
            self.segmentation_node = None

    def _set_final(self, state: State, message: str) -> None:
        self.state = state
        self.error_message = message
        self._cleanup()

    def _cleanup(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _requested_classes(classes: dict[int, str], roi_subset: tuple[str, ...]) -> dict[int, str]:
    if not roi_subset:
        return dict(classes)
    return {label: name for label, name in classes.items() if name in roi_subset}


def segment_info_function(use_standard_names: bool) -> segmentation_import.SegmentInfoFn:
    """Segment name, colour and terminology entry of a class, from the terminology table."""

    def info(label: int, class_name: str):
        return segment_info(class_name, use_standard_names)

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
        self.state = State.RUNNING
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
            return self.state is not State.RUNNING
        if not self._current.poll():
            return False
        job, self._current = self._current, None
        if job.state is not State.SUCCEEDED:
            self.state, self.error_message = job.state, job.error_message
            return True
        self._results[job.frame.index_value] = job.segmentation_node
        if self._next < len(self.frames):
            self._start_next()
            return False
        self._assemble()
        return True

    def _assemble(self) -> None:
        sequences.assemble_segmentation_sequence(self.scene, self.input_volume, self._results, self._output_node())
        self.state = State.SUCCEEDED

    def cancel(self) -> None:
        if self._current is not None:
            self._current.cancel()
            self._current = None
        if self.state is State.RUNNING:
            self.state, self.error_message = State.CANCELLED, "Cancelled."

    def last_lines(self, n: int = 20) -> list[str]:
        return self._current.last_lines(n) if self._current else []


class _FrameJob(SegmentationJob):
    """A SegmentationJob for one sequence frame: exported through the proxy's transform, built off-scene."""

    def __init__(self, scene, frame: sequences.Frame, proxy, request: JobRequest, python, temp_root) -> None:
        super().__init__(scene, frame.volume, None, request, None, python, temp_root)
        self.frame = frame
        self.proxy = proxy

    def export_input(self, path: Path) -> Path:
        return export_volume(self.frame.volume, path, compress=False, transform_source=self.proxy)

    def import_result(self) -> None:
        task = get_task(self.request.task)
        self.segmentation_node = segmentation_import.build_segmentation_node(
            self.result_path, self.frame.volume, _requested_classes(task.classes, self.request.roi_subset),
            task.name, segment_info_function(self.request.use_standard_names), transform_source=self.proxy)
