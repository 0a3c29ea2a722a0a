"""TotalSegmentator module: segment CT and MR volumes with the TotalSegmentator models, in the background.

The widget only binds the panel to a parameter node and forwards buttons to the logic. The logic runs the
Qt-free path of ``totalseg_slicer.job`` (export the volume, run the engine in a child process, import the
result) and owns the QTimer that polls it, so Slicer stays responsive and the run can be cancelled.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SPEEDS = ("normal", "fast", "fastest")
POLL_INTERVAL_MS = 100
WEIGHTS_FOLDER_SETTING = "TotalSegmentator/WeightsFolder"


#
# Module
#


class TotalSegmentator(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "TotalSegmentator"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["TotalSegmentator for Slicer contributors"]
        self.parent.helpText = (
            "Fully automatic segmentation of 117 structures in CT, 50 in MR and about 50 specialised sub-tasks "
            "with the TotalSegmentator models. The segmentation runs in the background: Slicer stays usable, "
            "progress is shown, and Apply turns into Cancel while it runs. "
            "See <a href='https://github.com/wasserth/TotalSegmentator'>TotalSegmentator</a>."
        )
        self.parent.acknowledgementText = (
            "Models and method by Jakob Wasserthal et al., TotalSegmentator: robust segmentation of 104 anatomic "
            "structures in CT images, Radiology: Artificial Intelligence 2023 "
            "(https://pubs.rsna.org/doi/10.1148/ryai.230024). Please cite it when you use the results."
        )
        slicer.app.connect("startupCompleted()", registerTerminology)


def registerTerminology() -> None:
    """Load the shipped terminology context so the Segment Editor's selector offers its entries."""
    folder = Path(__file__).parent / "Resources"
    logic = slicer.modules.terminologies.logic()
    for path in sorted(folder.glob("*.term.json")):
        if not logic.LoadContextFromFile(str(path)):
            logging.warning(f"TotalSegmentator: could not load terminology context {path}")


#
# Parameter node
#


@parameterNodeWrapper
class TotalSegmentatorParameterNode:
    """Panel state, saved with the scene (licence key and weights folder are user settings instead)."""

    inputVolume: vtkMRMLScalarVolumeNode
    task: str = "total"
    speed: str = "normal"
    roiSubset: list[str]
    device: str = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    computeStatistics: bool = False
    outputStatisticsTable: vtkMRMLTableNode
    robustCrop: bool = False
    bodySeg: bool = False
    removeSmallBlobs: bool = False
    higherOrderResampling: bool = False
    useStandardSegmentNames: bool = True


#
# Widget
#


class TotalSegmentatorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin panel: widgets <-> parameter node; Apply/Cancel -> logic; no segmentation logic here."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[TotalSegmentatorLogic] = None
        self._parameterNode: Optional[TotalSegmentatorParameterNode] = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TotalSegmentator.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TotalSegmentatorLogic()

        self._fillTasks()
        self._fillDevices()
        self.ui.weightsFolderPathLineEdit.currentPath = qt.QSettings().value(WEIGHTS_FOLDER_SETTING, "")
        self.ui.licenseKeyLineEdit.text = self.logic.licenseKey() or ""

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._connectWidgets()
        self.initializeParameterNode()
        self.updateWeightsStatus()

    def _connectWidgets(self) -> None:
        ui = self.ui
        ui.modalityFilterComboBox.currentIndexChanged.connect(lambda _: self._fillTasks())
        ui.taskComboBox.currentIndexChanged.connect(self.onTaskChanged)
        for speed in SPEEDS:
            self._speedButton(speed).toggled.connect(lambda checked, s=speed: checked and self._setParam("speed", s))
        ui.roiSubsetFilterLineEdit.textChanged.connect(self.onRoiFilterChanged)
        ui.roiSubsetListWidget.itemChanged.connect(lambda _: self.onRoiSubsetChanged())
        ui.deviceComboBox.currentIndexChanged.connect(
            lambda _: self._setParam("device", ui.deviceComboBox.currentData or "auto"))
        ui.outputSegmentationSelector.currentNodeChanged.connect(ui.segmentationShow3DButton.setSegmentationNode)
        ui.applyButton.clicked.connect(self.onApplyOrCancel)
        ui.setLicenseButton.clicked.connect(self.onSetLicense)
        ui.weightsFolderPathLineEdit.currentPathChanged.connect(self.onWeightsFolderChanged)
        ui.downloadWeightsButton.clicked.connect(self.onDownloadWeights)
        ui.importWeightsButton.clicked.connect(self.onImportWeights)
        ui.installDependenciesButton.clicked.connect(self.onInstallDependencies)
        ui.advancedCollapsibleButton.contentsCollapsed.connect(
            lambda collapsed: collapsed or self.updateDependencyStatus())

    def cleanup(self) -> None:
        if self.logic:
            self.logic.cancel()
        self.removeObservers()

    # ---------------------------------------------------------------- parameter node

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic:
            self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameterNode: Optional[TotalSegmentatorParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
            self.updateGuiFromParameterNode()

    def _setParam(self, name: str, value) -> None:
        if self._parameterNode and not self._updatingGui and getattr(self._parameterNode, name) != value:
            setattr(self._parameterNode, name, value)

    def updateGuiFromParameterNode(self, caller=None, event=None) -> None:
        """Widgets not bound by connectGui (task list, speed, ROI checklist, device) follow the node here."""
        if not self._parameterNode:
            return
        self._updatingGui = True
        try:
            self._selectTask(self._parameterNode.task)
            self._updateSpeedButtons()
            self._updateRoiList()
            index = self.ui.deviceComboBox.findData(self._parameterNode.device)
            self.ui.deviceComboBox.currentIndex = max(index, 0)
        finally:
            self._updatingGui = False
        self._updateApplyButton()

    # ---------------------------------------------------------------- task, speed, ROI

    def _fillTasks(self) -> None:
        """Task list filtered by modality; licensed tasks marked; a tooltip per task."""
        from totalseg_engine.tasks import all_tasks

        modality = self.ui.modalityFilterComboBox.currentText
        combo = self.ui.taskComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for task in all_tasks().values():
            if modality in ("CT", "MR") and task.modality != modality:
                continue
            label = f"{task.name}  ({task.modality}{', licence' if task.licensed else ''})"
            combo.addItem(label, task.name)
            combo.setItemData(combo.count - 1, taskTooltip(task), qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)
        if self._parameterNode:
            self._selectTask(self._parameterNode.task)

    def _selectTask(self, name: str) -> None:
        index = self.ui.taskComboBox.findData(name)
        if index < 0 and self.ui.modalityFilterComboBox.currentIndex != 0:
            self.ui.modalityFilterComboBox.currentIndex = 0  # show all so the stored task is visible
            index = self.ui.taskComboBox.findData(name)
        wasBlocked = self.ui.taskComboBox.blockSignals(True)
        self.ui.taskComboBox.currentIndex = index
        self.ui.taskComboBox.blockSignals(wasBlocked)

    def onTaskChanged(self, index: int) -> None:
        name = self.ui.taskComboBox.itemData(index)
        if name and self._parameterNode and name != self._parameterNode.task:
            self._parameterNode.roiSubset = []
            self._setParam("task", name)
        self.updateWeightsStatus()

    def _speedButton(self, speed: str):
        return getattr(self.ui, f"speed{speed.capitalize()}RadioButton")

    def _updateSpeedButtons(self) -> None:
        from totalseg_engine.tasks import get_task

        task = get_task(self._parameterNode.task)
        for speed in SPEEDS:
            button = self._speedButton(speed)
            button.enabled = speed in task.modes
            button.checked = speed == self._parameterNode.speed
        if self._parameterNode.speed not in task.modes:
            self._parameterNode.speed = "normal"

    def _updateRoiList(self) -> None:
        """Checklist of the task's classes, shown only for tasks that support ROI subsets."""
        from totalseg_engine.tasks import get_task

        task = get_task(self._parameterNode.task)
        supported = task.name in ("total", "total_mr")
        for widget in (self.ui.roiSubsetLabel, self.ui.roiSubsetFilterLineEdit, self.ui.roiSubsetListWidget,
                       self.ui.roiSubsetSummaryLabel):
            widget.visible = supported
        listWidget = self.ui.roiSubsetListWidget
        wasBlocked = listWidget.blockSignals(True)
        if listWidget.property("task") != task.name:
            listWidget.clear()
            for name in task.class_names:
                item = qt.QListWidgetItem(displayName(name))
                item.setData(qt.Qt.UserRole, name)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                listWidget.addItem(item)
            listWidget.setProperty("task", task.name)
        chosen = set(self._parameterNode.roiSubset)
        for row in range(listWidget.count):
            item = listWidget.item(row)
            item.setCheckState(qt.Qt.Checked if item.data(qt.Qt.UserRole) in chosen else qt.Qt.Unchecked)
        listWidget.blockSignals(wasBlocked)
        self.ui.roiSubsetSummaryLabel.text = f"{len(chosen)} selected" if chosen else "All structures"
        self.onRoiFilterChanged(self.ui.roiSubsetFilterLineEdit.text)

    def onRoiFilterChanged(self, text: str) -> None:
        listWidget = self.ui.roiSubsetListWidget
        needle = text.strip().lower()
        for row in range(listWidget.count):
            item = listWidget.item(row)
            item.setHidden(bool(needle) and needle not in item.text().lower()
                           and needle not in str(item.data(qt.Qt.UserRole)).lower())

    def onRoiSubsetChanged(self) -> None:
        listWidget = self.ui.roiSubsetListWidget
        chosen = [listWidget.item(r).data(qt.Qt.UserRole) for r in range(listWidget.count)
                  if listWidget.item(r).checkState() == qt.Qt.Checked]
        self._setParam("roiSubset", chosen)

    def _fillDevices(self) -> None:
        combo = self.ui.deviceComboBox
        combo.clear()
        for label, value in self.logic.availableDevices():
            combo.addItem(label, value)

    # ---------------------------------------------------------------- run

    def _updateApplyButton(self) -> None:
        running = self.logic is not None and self.logic.isRunning
        if running:
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the segmentation; the output segmentation stays as it was."
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = "Apply"
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = "Run the segmentation in the background." if ready else "Select an input volume."

    def onApplyOrCancel(self) -> None:
        if self.logic.isRunning:
            self.logic.cancel()
            return
        if not self.logic.ensureDependencies(askConfirmation=True):
            return
        params = self._parameterNode
        if not self._confirmReplacement(params):
            return
        frames = self.logic.sequenceFrames(params.inputVolume)
        allFrames = len(frames) > 1 and slicer.util.confirmYesNoDisplay(
            f"The input volume is a sequence of {len(frames)} frames. Segment every frame into a segmentation "
            "sequence? (No: only the current frame.)")
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = ""
        try:
            self.logic.start(params, allFrames=allFrames, onProgress=self.onProgress, onLog=self.onLog,
                             onFinished=self.onFinished)
        except Exception as err:  # a bad request: say it, keep everything as it was
            slicer.util.errorDisplay(f"Could not start the segmentation: {err}")
            return
        self._startTime = time.monotonic()
        self._updateApplyButton()

    def _confirmReplacement(self, params: TotalSegmentatorParameterNode) -> bool:
        names = self.logic.segmentsToReplace(params)
        if not names:
            return True
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        return slicer.util.confirmOkCancelDisplay(
            f"The segmentation already has {len(names)} segment(s) of this task ({shown}). Replace them? "
            "Your other segments are kept.")

    def onProgress(self, fraction: Optional[float], message: str) -> None:
        if fraction is not None:
            self.ui.progressBar.value = int(round(100 * fraction))
        if message:
            self.ui.statusLabel.text = message
        self.ui.elapsedTimeLabel.text = f"{time.monotonic() - self._startTime:.0f} s"

    def onLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onFinished(self, state: str, message: str) -> None:
        self._updateApplyButton()
        self.ui.elapsedTimeLabel.text = f"{time.monotonic() - self._startTime:.0f} s"
        if state == "succeeded":
            self.ui.progressBar.value = 100
            self.ui.statusLabel.text = "Done."
            self.ui.outputSegmentationSelector.setCurrentNode(self._parameterNode.outputSegmentation)
            return
        if state == "cancelled":
            self.ui.statusLabel.text = "Cancelled; the segmentation was left as it was."
            return
        self.ui.statusLabel.text = "Failed."
        if self.logic.needsWeights(message):
            self._offerWeights(message)
        elif self.logic.needsLicense(message):
            self._askLicense(message)
        else:
            slicer.util.errorDisplay(f"Segmentation failed: {message}", detailedText=self.logic.lastLog())

    # ---------------------------------------------------------------- weights, licence, dependencies

    def _offerWeights(self, message: str) -> None:
        box = qt.QMessageBox(qt.QMessageBox.Warning, "Model weights missing", message, qt.QMessageBox.Cancel)
        download = box.addButton("Download", qt.QMessageBox.AcceptRole)
        importButton = box.addButton("Import...", qt.QMessageBox.ActionRole)
        box.exec_()
        if box.clickedButton() == download:
            self.onDownloadWeights()
        elif box.clickedButton() == importButton:
            self.onImportWeights()

    def _askLicense(self, message: str) -> None:
        key = qt.QInputDialog.getText(slicer.util.mainWindow(), "Licence key needed",
                                      f"{message}\n\nLicence key:", qt.QLineEdit.Password)
        if key:
            self.ui.licenseKeyLineEdit.text = key
            self.onSetLicense()

    def onSetLicense(self) -> None:
        try:
            self.logic.setLicenseKey(self.ui.licenseKeyLineEdit.text.strip())
        except Exception as err:
            slicer.util.errorDisplay(str(err))
            return
        self.ui.statusLabel.text = "Licence key stored."
        self.updateWeightsStatus()

    def onWeightsFolderChanged(self, path: str) -> None:
        qt.QSettings().setValue(WEIGHTS_FOLDER_SETTING, path)
        self.logic.setWeightsFolder(path)
        self.updateWeightsStatus()

    def onDownloadWeights(self) -> None:
        task = self._parameterNode.task if self._parameterNode else "total"
        with slicer.util.tryWithErrorDisplay(f"Downloading the weights of '{task}' failed.", waitCursor=True):
            self.logic.downloadWeights(task, onProgress=self.onProgress if hasattr(self, "_startTime") else None)
        self.updateWeightsStatus()

    def onImportWeights(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Import weights (zip)", "", "Zip (*.zip)")
        if not path:
            path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Import weights (folder)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Importing the weights failed.", waitCursor=True):
            report = self.logic.importWeights(path)
            skipped = f"; skipped {len(report.skipped)} (see the log)" if report.skipped else ""
            self.ui.statusLabel.text = f"Imported {len(report.installed)} model folder(s){skipped}."
            for item in report.skipped:
                logging.warning(f"Weights import skipped {item}")
        self.updateWeightsStatus()

    def updateWeightsStatus(self) -> None:
        if not self._parameterNode:
            return
        self.ui.weightsStatusLabel.text = self.logic.weightsStatus(self._parameterNode.task)

    def updateDependencyStatus(self) -> None:
        self.ui.dependenciesStatusLabel.text = self.logic.dependencySummary()

    def onInstallDependencies(self) -> None:
        self.logic.ensureDependencies(askConfirmation=True, reinstall=True)
        self.updateDependencyStatus()


def taskTooltip(task) -> str:
    """What a task segments, for the task list."""
    names = ", ".join(task.class_names[:25]) + (", ..." if len(task.class_names) > 25 else "")
    lines = [f"{task.name} ({task.modality}): {len(task.classes)} structures", names]
    if task.licensed:
        lines.append("Needs a licence key (free for non-commercial use).")
    if task.info:
        lines.append(task.info)
    return "\n".join(lines)


def displayName(className: str) -> str:
    """Standard display name of a class when the terminology table has it, else the class name."""
    try:
        from totalseg_engine import terminology

        return terminology.entry(className).display_name
    except Exception:
        return className


#
# Logic
#


class TotalSegmentatorLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, callable from the Python console.

    ``process(...)`` blocks until the segmentation is loaded; ``processAsync(...)`` returns at once and reports
    through callbacks (``cancel()`` stops it). Both run the engine in a child process with Slicer's Python.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._job = None
        self._lastJob = None
        self._timer = None
        self._callbacks: dict[str, Callable] = {}

    def getParameterNode(self) -> TotalSegmentatorParameterNode:
        return TotalSegmentatorParameterNode(super().getParameterNode())

    # ---------------------------------------------------------------- console API

    def process(self, inputVolume, outputSegmentation=None, task: str = "total", fast: bool = False,
                fastest: bool = False, roiSubset=None, device: str = "auto", **options):
        """Segment ``inputVolume`` into ``outputSegmentation`` (created if None) and return the node.

        Blocks (processing Qt events so the application stays alive). Raises RuntimeError on failure.
        """
        job = self._makeJob(inputVolume, outputSegmentation, task, fast, fastest, roiSubset, device, options)
        job.start()
        while not job.poll():
            slicer.app.processEvents(qt.QEventLoop.AllEvents, POLL_INTERVAL_MS)
            time.sleep(POLL_INTERVAL_MS / 1000)
        if job.state_name != "succeeded":
            raise RuntimeError(job.error_message or f"segmentation {job.state_name}")
        return job.segmentation_node

    def processAsync(self, inputVolume, outputSegmentation=None, task: str = "total", fast: bool = False,
                     fastest: bool = False, roiSubset=None, device: str = "auto", onProgress=None, onLog=None,
                     onFinished=None, **options):
        """Start a segmentation and return at once; callbacks run in the GUI thread; ``cancel()`` stops it."""
        job = self._makeJob(inputVolume, outputSegmentation, task, fast, fastest, roiSubset, device, options)
        self._run(job, onProgress, onLog, onFinished)
        return job

    def _makeJob(self, inputVolume, outputSegmentation, task, fast, fastest, roiSubset, device, options):
        from totalseg_slicer.job import JobRequest, SegmentationJob

        speed = "fastest" if fastest else ("fast" if fast else "normal")
        request = JobRequest(task=task, speed=speed, roi_subset=list(roiSubset or []), device=device, **options)
        return SegmentationJob(slicer.mrmlScene, inputVolume, outputSegmentation, request)

    # ---------------------------------------------------------------- panel runs

    def start(self, params: TotalSegmentatorParameterNode, allFrames: bool = False, onProgress=None, onLog=None,
              onFinished=None) -> None:
        """Start the run the panel describes (every frame of a sequence when ``allFrames``)."""
        from totalseg_slicer.job import JobRequest, SegmentationJob, SequenceJob

        request = JobRequest(
            task=params.task, speed=params.speed, roi_subset=list(params.roiSubset), device=params.device,
            robust_crop=params.robustCrop, body_seg=params.bodySeg, remove_small_blobs=params.removeSmallBlobs,
            higher_order_resampling=params.higherOrderResampling, statistics=params.computeStatistics,
            use_standard_names=params.useStandardSegmentNames)
        if not params.outputSegmentation:
            params.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{params.inputVolume.GetName()} {params.task}")
            params.outputSegmentation.CreateDefaultDisplayNodes()
        if params.computeStatistics and not params.outputStatisticsTable:
            params.outputStatisticsTable = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode", f"{params.inputVolume.GetName()} {params.task} statistics")
        jobClass = SequenceJob if allFrames else SegmentationJob
        job = jobClass(slicer.mrmlScene, params.inputVolume, params.outputSegmentation, request,
                       table_node=params.outputStatisticsTable if params.computeStatistics else None)
        self._run(job, onProgress, onLog, onFinished)

    def _run(self, job, onProgress, onLog, onFinished) -> None:
        if self.isRunning:
            raise RuntimeError("A segmentation is already running; cancel it first.")
        job.on_progress = lambda fraction, message: onProgress and onProgress(fraction, message)
        job.on_log = lambda line: onLog and onLog(line)
        self._callbacks = {"finished": onFinished}
        job.start()
        self._job = job
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._poll)
        self._timer.start()

    def _poll(self) -> None:
        if not self._job or not self._job.poll():
            return
        self._timer.stop()
        job, self._job = self._job, None
        self._lastJob = job
        finished = self._callbacks.get("finished")
        if finished:
            finished(job.state_name, job.error_message)

    @property
    def isRunning(self) -> bool:
        return self._job is not None

    def cancel(self) -> None:
        """Stop the running segmentation (the whole process tree) and leave the output as it was."""
        if self._job:
            self._job.cancel()
            self._poll()

    def lastLog(self) -> str:
        """The engine's last output lines of the previous run (for error details)."""
        return "\n".join(self._lastJob.last_lines()) if self._lastJob else ""

    # ---------------------------------------------------------------- helpers for the panel

    def segmentsToReplace(self, params: TotalSegmentatorParameterNode) -> list[str]:
        from totalseg_engine.tasks import get_task
        from totalseg_slicer.segmentation_import import segments_to_replace

        if not params.outputSegmentation:
            return []
        task = get_task(params.task)
        classes = list(params.roiSubset) or task.class_names
        ids = segments_to_replace(params.outputSegmentation, task.name, classes)
        segmentation = params.outputSegmentation.GetSegmentation()
        return [segmentation.GetSegment(i).GetName() for i in ids]

    def sequenceFrames(self, volumeNode) -> list:
        from totalseg_slicer import sequences

        return sequences.frames_of(slicer.mrmlScene, volumeNode) if volumeNode else []

    def availableDevices(self) -> list[tuple[str, str]]:
        """(label, value) pairs: auto, every CUDA GPU, the CPU, Apple MPS where present."""
        devices = [("auto (GPU if available)", "auto")]
        try:
            import torch

            devices += [(f"GPU {i}: {torch.cuda.get_device_name(i)}", f"gpu:{i}")
                        for i in range(torch.cuda.device_count())]
            if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
                devices.append(("Apple MPS", "mps"))
        except ImportError:
            pass  # torch not installed yet: offered after installation
        devices.append(("CPU", "cpu"))
        return devices

    def licenseKey(self) -> Optional[str]:
        from totalseg_engine import licensing

        return licensing.get_license_key()

    def setLicenseKey(self, key: str) -> None:
        from totalseg_engine import licensing

        licensing.set_license_key(key)

    def setWeightsFolder(self, path: str) -> None:
        """Use another weights folder (TotalSegmentator's layout) for this session and its child processes."""
        if path:
            os.environ["TOTALSEG_WEIGHTS_PATH"] = path
        else:
            os.environ.pop("TOTALSEG_WEIGHTS_PATH", None)

    def weightsStatus(self, task: str) -> str:
        from totalseg_engine import weights
        from totalseg_engine.tasks import models_of_task

        specs = models_of_task(task)
        missing = weights.missing_models(specs)
        if not missing:
            return "installed"
        return f"{len(specs) - len(missing)} of {len(specs)} models installed (rest downloaded on first use)"

    def downloadWeights(self, task: str, onProgress=None) -> None:
        from totalseg_engine import weights

        def report(event):
            if onProgress:
                onProgress(event.fraction, event.message)
            slicer.app.processEvents()

        weights.download_task(task, progress=report)

    def importWeights(self, path: str):
        """Install weights from a zip or folder; returns the report (installed folders, skipped ones and why)."""
        from totalseg_engine import weights_archive

        return weights_archive.import_weights(path)

    @staticmethod
    def needsWeights(message: str) -> bool:
        return "not installed" in message or "totalseg_import_weights" in message

    @staticmethod
    def needsLicense(message: str) -> bool:
        return "licen" in message.lower() and "key" in message.lower()

    # ---------------------------------------------------------------- dependencies

    def dependencySummary(self) -> str:
        from totalseg_slicer import dependencies

        return dependencies.summary(dependencies.check())

    def ensureDependencies(self, askConfirmation: bool = True, reinstall: bool = False) -> bool:
        """Install torch (via the PyTorch extension when present) and nnU-Net after one confirmation."""
        from totalseg_slicer import dependencies

        statuses = dependencies.check()
        todo = dependencies.missing(statuses)
        if not todo and not reinstall:
            return True
        names = ", ".join(s.requirement.name for s in todo) or "the engine's packages"
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                f"TotalSegmentator needs {names} in Slicer's Python (several GB with torch). Install now?"):
            return False
        with slicer.util.WaitCursor():
            self._installTorch(statuses)
            self._installRest(dependencies.check(), reinstall)
        return not dependencies.missing(dependencies.check())

    def _installTorch(self, statuses) -> None:
        torchStatus = next(s for s in statuses if s.requirement.name == "torch")
        if torchStatus.ok:
            return
        try:
            import PyTorchUtils

            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError("PyTorch installation was not completed.")
        except ImportError:
            slicer.util.pip_install("torch")

    def _installRest(self, statuses, reinstall: bool) -> None:
        import tempfile

        from totalseg_slicer import dependencies

        with tempfile.TemporaryDirectory() as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text(dependencies.constraints_text())
            args = dependencies.pip_arguments(statuses, constraints)
            if reinstall and not args:
                args = ["install", "--force-reinstall", "--no-deps", "nnunetv2", "-c", str(constraints)]
            if args:
                slicer.util.pip_install(args)


#
# Test
#


class TotalSegmentatorTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: a real segmentation of a sample CT, skipped with a message when weights are absent."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_FastTotalOnSampleCT()

    def test_FastTotalOnSampleCT(self) -> None:
        from totalseg_engine import weights
        from totalseg_engine.tasks import get_task

        self.delayDisplay("Starting the TotalSegmentator test")
        task = get_task("total")
        if weights.missing_models(task.mode("fast").models):
            self.delayDisplay("Skipped: the weights of 'total --fast' are not installed "
                              "(download them in the panel's Advanced section, or run totalseg_download_weights).")
            return
        import SampleData

        volume = SampleData.downloadSample("CTACardio")
        logic = TotalSegmentatorLogic()
        segmentation = logic.process(volume, None, task="total", fast=True, device="auto")
        from totalseg_slicer.segmentation_import import CLASS_TAG, segment_tag

        seg = segmentation.GetSegmentation()
        byClass = {segment_tag(seg.GetNthSegment(i), CLASS_TAG): seg.GetNthSegmentID(i)
                   for i in range(seg.GetNumberOfSegments())}
        for expected in ("liver", "aorta", "heart"):
            self.assertIn(expected, byClass)
        names = list(byClass)
        liverId = byClass["liver"]
        liverVoxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, liverId, volume).sum()
        spacing = volume.GetSpacing()
        liverMl = liverVoxels * spacing[0] * spacing[1] * spacing[2] / 1000
        self.assertGreater(liverMl, 500)
        self.assertLess(liverMl, 4000)
        self.delayDisplay(f"Test passed: {len(names)} segments, liver {liverMl:.0f} mL")
