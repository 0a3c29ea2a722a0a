"""TotalSegmentator module: segment CT and MR volumes with the TotalSegmentator models, in the background.

The widget only binds the panel to a parameter node and forwards buttons to the logic. The logic runs the
Qt-free path of ``totalseg_slicer.job`` (export the volume, run the engine in a child process, import the
result), or of ``totalseg_slicer.remote`` on a remote server (upload, follow, download, the same import), and
owns the QTimer that polls it, so Slicer stays responsive and the run can be cancelled.
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
from totalseg_engine import (
    State,
    download_task,
    get_license_key,
    get_task,
    import_weights,
    missing_models,
    models_of_task,
    segment_info,
    set_license_key,
)
from totalseg_slicer import (
    dependencies,
    dependency_install,
    devices,
    legacy_api,
    panel_state,
    remote,
    resources,
    sequences,
)
from totalseg_slicer.job_request import REMOTE_DEVICE, from_parameter_node

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
    forceSplit: bool = False
    useStandardSegmentNames: bool = True


#
# Widget
#


class TotalSegmentatorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin panel: widgets <-> parameter node; Apply/Cancel -> logic. The rules live in ``panel_state``."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[TotalSegmentatorLogic] = None
        self._parameterNode: Optional[TotalSegmentatorParameterNode] = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._startTime = time.monotonic()

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
        self.ui.licenseKeyLineEdit.text = self.logic.licenseKey() or ""
        self._showRemoteSettings()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._connectWidgets()
        # After the connection, so that the restored folder goes through onWeightsFolderChanged like a choice.
        self.ui.weightsFolderPathLineEdit.currentPath = self.logic.weightsFolder()
        self.initializeParameterNode()
        self.updateWeightsStatus()

    def _connectWidgets(self) -> None:
        ui = self.ui
        ui.modalityFilterComboBox.currentIndexChanged.connect(self.onModalityFilterChanged)
        ui.taskComboBox.currentIndexChanged.connect(self.onTaskChanged)
        for speed in panel_state.SPEEDS:
            self._speedButton(speed).toggled.connect(lambda checked, s=speed: checked and self._setParam("speed", s))
        ui.roiSubsetFilterLineEdit.textChanged.connect(self.onRoiFilterChanged)
        ui.roiSubsetListWidget.itemChanged.connect(lambda _: self.onRoiSubsetChanged())
        ui.deviceComboBox.currentIndexChanged.connect(lambda _: self.onDeviceChanged())
        ui.remoteUrlLineEdit.textChanged.connect(lambda _: self.onRemoteSettingsChanged())
        ui.remoteTokenLineEdit.textChanged.connect(lambda _: self.onRemoteSettingsChanged())
        ui.remoteTestButton.clicked.connect(self.onTestRemoteServer)
        ui.outputSegmentationSelector.currentNodeChanged.connect(ui.segmentationShow3DButton.setSegmentationNode)
        ui.inputVolumeSelector.currentNodeChanged.connect(lambda _: self._updateApplyButton())
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
        self._disconnectParameterNode()

    # ---------------------------------------------------------------- parameter node

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._disconnectParameterNode()

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
        self._disconnectParameterNode()
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = connectGui(self._parameterNode, self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
            self.updateGuiFromParameterNode()

    def _disconnectParameterNode(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                    self.updateGuiFromParameterNode)
        self._parameterNodeGuiTag = None

    def _setParam(self, name: str, value) -> None:
        if self._parameterNode and not self._updatingGui and getattr(self._parameterNode, name) != value:
            setattr(self._parameterNode, name, value)

    def updateGuiFromParameterNode(self, caller=None, event=None) -> None:
        """Widgets not bound by connectGui (task list, speed, ROI checklist, device) follow the node here."""
        if not self._parameterNode:
            return
        self._updatingGui = True
        try:
            self._showTask(self._parameterNode.task)
            self._updateSpeedButtons()
            self._updateRoiList()
            index = self.ui.deviceComboBox.findData(self._parameterNode.device)
            self.ui.deviceComboBox.currentIndex = max(index, 0)
            self._showRemoteGroup()
        finally:
            self._updatingGui = False
        self._updateApplyButton()

    # ---------------------------------------------------------------- task, speed, ROI

    def _fillTasks(self) -> None:
        """Task list of the current filter, licensed tasks marked, a tooltip per task."""
        combo = self.ui.taskComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for choice in panel_state.task_choices(self.ui.modalityFilterComboBox.currentText):
            combo.addItem(choice.label, choice.name)
            combo.setItemData(combo.count - 1, choice.tooltip, qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)

    def onModalityFilterChanged(self, index: int) -> None:
        """The user picked a filter: list its tasks and choose the current task's counterpart when hidden."""
        self._fillTasks()
        if not self._parameterNode:
            return
        task = panel_state.task_after_filter_change(self.ui.modalityFilterComboBox.currentText,
                                                    self._parameterNode.task)
        self._chooseTask(task)
        self._showTask(self._parameterNode.task)

    def _showTask(self, name: str) -> None:
        """Select a task set elsewhere (scene, console); widen the filter only if it hides that task."""
        combo = self.ui.modalityFilterComboBox
        wanted = panel_state.filter_showing(combo.currentText, name)
        if wanted != combo.currentText:
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = combo.findText(wanted)
            combo.blockSignals(wasBlocked)
            self._fillTasks()
        wasBlocked = self.ui.taskComboBox.blockSignals(True)
        self.ui.taskComboBox.currentIndex = self.ui.taskComboBox.findData(name)
        self.ui.taskComboBox.blockSignals(wasBlocked)

    def onTaskChanged(self, index: int) -> None:
        self._chooseTask(self.ui.taskComboBox.itemData(index))

    def _chooseTask(self, name: Optional[str]) -> None:
        params = self._parameterNode
        if name and params and name != params.task:
            with slicer.util.NodeModify(params.parameterNode):
                params.roiSubset = []
                params.speed = panel_state.speed_for(name, params.speed)
                params.task = name
        self.updateWeightsStatus()

    def _speedButton(self, speed: str):
        return getattr(self.ui, f"speed{speed.capitalize()}RadioButton")

    def _updateSpeedButtons(self) -> None:
        for speed, offered in panel_state.offered_speeds(self._parameterNode.task).items():
            button = self._speedButton(speed)
            button.enabled = offered
            button.checked = speed == self._parameterNode.speed

    def _updateRoiList(self) -> None:
        """Checklist of the task's classes, shown only for tasks that support ROI subsets."""
        task = get_task(self._parameterNode.task)
        supported = panel_state.roi_supported(task.name)
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
        chosen = list(self._parameterNode.roiSubset)
        for row in range(listWidget.count):
            item = listWidget.item(row)
            item.setCheckState(qt.Qt.Checked if item.data(qt.Qt.UserRole) in chosen else qt.Qt.Unchecked)
        listWidget.blockSignals(wasBlocked)
        self.ui.roiSubsetSummaryLabel.text = panel_state.roi_summary(chosen)
        self.onRoiFilterChanged(self.ui.roiSubsetFilterLineEdit.text)

    def onRoiFilterChanged(self, text: str) -> None:
        listWidget = self.ui.roiSubsetListWidget
        for row in range(listWidget.count):
            item = listWidget.item(row)
            item.setHidden(not panel_state.roi_matches(text, item.text(), str(item.data(qt.Qt.UserRole))))

    def onRoiSubsetChanged(self) -> None:
        listWidget = self.ui.roiSubsetListWidget
        chosen = [listWidget.item(r).data(qt.Qt.UserRole) for r in range(listWidget.count)
                  if listWidget.item(r).checkState() == qt.Qt.Checked]
        self._setParam("roiSubset", chosen)

    def _fillDevices(self) -> None:
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for label, value in self.logic.availableDevices():
            combo.addItem(label, value)
        combo.blockSignals(wasBlocked)
        if self._parameterNode:
            combo.currentIndex = max(combo.findData(self._parameterNode.device), 0)

    def onDeviceChanged(self) -> None:
        self._setParam("device", self.ui.deviceComboBox.currentData or "auto")
        self._showRemoteGroup()

    # ---------------------------------------------------------------- remote server

    def _showRemoteGroup(self) -> None:
        """The server's address and token are shown only while the device is the remote server."""
        self.ui.remoteServerGroupBox.visible = self.ui.deviceComboBox.currentData == REMOTE_DEVICE

    def _showRemoteSettings(self) -> None:
        settings = self.logic.remoteServerSettings()
        self.ui.remoteUrlLineEdit.text = settings.url
        self.ui.remoteTokenLineEdit.text = settings.token
        self.ui.remoteTokenNoteLabel.text = self.logic.remoteTokenNote()
        self._showRemoteGroup()

    def onRemoteSettingsChanged(self) -> None:
        self.logic.setRemoteServerSettings(self.ui.remoteUrlLineEdit.text, self.ui.remoteTokenLineEdit.text)
        self.ui.remoteStatusLabel.text = ""

    def onTestRemoteServer(self) -> None:
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            self.ui.remoteStatusLabel.text = self.logic.remoteServerStatus()
        except Exception as err:  # the client's message says what to fix
            self.ui.remoteStatusLabel.text = f"Not connected: {getattr(err, 'message', None) or err}"
        finally:
            slicer.app.restoreOverrideCursor()

    # ---------------------------------------------------------------- run

    def _updateApplyButton(self) -> None:
        state = panel_state.apply_button(self.logic is not None and self.logic.isRunning,
                                         bool(self._parameterNode and self._parameterNode.inputVolume))
        self.ui.applyButton.text = state.text
        self.ui.applyButton.enabled = state.enabled
        self.ui.applyButton.toolTip = state.tooltip

    def onApplyOrCancel(self) -> None:
        if self.logic.isRunning:
            self.logic.cancel()
            return
        params = self._parameterNode
        remoteRun = params.device == REMOTE_DEVICE  # the server has the engine: nothing to install here
        if not remoteRun and not self._withErrorDisplay("Installing the Python packages failed.",
                                                        self.logic.ensureDependencies):
            return
        if not self._confirmReplacement(params) or not self._confirmResources(params):
            return
        frames = self.logic.sequenceFrames(params.inputVolume)
        allFrames = len(frames) > 1 and slicer.util.confirmYesNoDisplay(
            f"The input volume is a sequence of {len(frames)} frames. Segment every frame into a segmentation "
            "sequence? (No: only the current frame.)")
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = ""
        self._startTime = time.monotonic()  # before start(): the job reports its first progress from start()
        try:
            self.logic.start(params, allFrames=allFrames, onProgress=self.onProgress, onLog=self.onLog,
                             onFinished=self.onFinished)
        except Exception as err:  # a bad request: say it, keep everything as it was
            slicer.util.errorDisplay(f"Could not start the segmentation: {err}")
            return
        self._updateApplyButton()

    def _withErrorDisplay(self, message: str, action: Callable[[], object]) -> bool:
        """Run ``action``; False when it raised (shown with ``message`` by Slicer's error display) or declined
        (returned False, as ``ensureDependencies`` does when the user says no)."""
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
                return action() is not False
        except Exception:
            return False  # already shown to the user; the panel stays usable

    def _confirmReplacement(self, params: TotalSegmentatorParameterNode) -> bool:
        names = self.logic.segmentsToReplace(params)
        if not names:
            return True
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        return slicer.util.confirmOkCancelDisplay(
            f"The segmentation already has {len(names)} segment(s) of this task ({shown}). Replace them? "
            "Your other segments are kept.")

    def _confirmResources(self, params: TotalSegmentatorParameterNode) -> bool:
        """When the run will probably not fit into the free memory: offer fast mode or split processing (as the
        existing extension offers fast mode on a small GPU). False: the user cancelled."""
        shortfall = self.logic.checkResources(params)
        if shortfall is None:
            return True
        box = qt.QMessageBox(qt.QMessageBox.Warning, "Not enough memory", shortfall.message, qt.QMessageBox.NoButton)
        choices = {}
        if "fast" in shortfall.advice:
            choices[box.addButton("Fast mode (3 mm)", qt.QMessageBox.AcceptRole)] = ("speed", "fast")
        if "force_split" in shortfall.advice:
            choices[box.addButton("Split processing", qt.QMessageBox.AcceptRole)] = ("forceSplit", True)
        anyway = box.addButton("Run anyway", qt.QMessageBox.DestructiveRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.exec_()
        clicked = box.clickedButton()
        if clicked in choices:
            name, value = choices[clicked]
            setattr(params, name, value)
            return True
        return clicked == anyway

    def onProgress(self, fraction: Optional[float], message: str) -> None:
        if fraction is not None:
            self.ui.progressBar.value = int(round(100 * fraction))
        if message:
            self.ui.statusLabel.text = message
        self.ui.elapsedTimeLabel.text = f"{time.monotonic() - self._startTime:.0f} s"

    def onLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onFinished(self, state: State, message: str) -> None:
        self._updateApplyButton()
        self.ui.elapsedTimeLabel.text = f"{time.monotonic() - self._startTime:.0f} s"
        if state is State.SUCCEEDED:
            self.ui.progressBar.value = 100
            self.ui.statusLabel.text = "Done."
            return
        if state is State.CANCELLED:
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
        if self._withErrorDisplay("The licence key was not stored.",
                                  lambda: self.logic.setLicenseKey(self.ui.licenseKeyLineEdit.text.strip())):
            self.ui.statusLabel.text = "Licence key stored."
        self.updateWeightsStatus()

    def onWeightsFolderChanged(self, path: str) -> None:
        self.logic.setWeightsFolder(path, remember=True)
        self.updateWeightsStatus()

    def onDownloadWeights(self) -> None:
        task = self._parameterNode.task if self._parameterNode else "total"
        self._startTime = time.monotonic()
        self._withErrorDisplay(f"Downloading the weights of '{task}' failed.",
                               lambda: self.logic.downloadWeights(task, onProgress=self.onProgress))
        self.updateWeightsStatus()

    def onImportWeights(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Import weights (zip)", "", "Zip (*.zip)")
        if not path:
            path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Import weights (folder)")
        if path:
            self._withErrorDisplay("Importing the weights failed.", lambda: self._importWeights(path))
        self.updateWeightsStatus()

    def _importWeights(self, path: str) -> None:
        report = self.logic.importWeights(path)
        skipped = f"; skipped {len(report.skipped)} (see the log)" if report.skipped else ""
        self.ui.statusLabel.text = f"Imported {len(report.installed)} model folder(s){skipped}."
        for item in report.skipped:
            logging.warning(f"Weights import skipped {item}")

    def updateWeightsStatus(self) -> None:
        if self._parameterNode:
            self.ui.weightsStatusLabel.text = self.logic.weightsStatus(self._parameterNode.task)

    def updateDependencyStatus(self) -> None:
        self.ui.dependenciesStatusLabel.text = self.logic.dependencySummary()

    def onInstallDependencies(self) -> None:
        if self._withErrorDisplay("Installing the Python packages failed.",
                                  lambda: self.logic.ensureDependencies(askConfirmation=True, reinstall=True)):
            self._fillDevices()  # a new torch may see GPUs the old answer did not
        self.updateDependencyStatus()


def connectGui(parameterNode, gui):
    """``parameterNode.connectGui(gui)`` and its tag on every Slicer version.

    Slicer 5.8's ``connectGui`` registers the connection but returns None (fixed in 5.10, commit b5a65a49a0),
    so ``disconnectGui(None)`` would leave it in place and every ``enter()`` would add another; its wrapper
    numbers connections from ``_nextParameterGUIsTag``, so the last one handed out is this one's tag.
    """
    tag = parameterNode.connectGui(gui)
    if tag is None:
        tag = parameterNode._nextParameterGUIsTag - 1
    return tag


def displayName(className: str) -> str:
    """Standard display name of a class (the terminology table's, else the class name)."""
    return segment_info(className)[0]


#
# Logic
#


class TotalSegmentatorLogic(legacy_api.LegacyLogic, ScriptedLoadableModuleLogic):
    """Everything the panel does, callable from the Python console.

    ``process(...)`` blocks until the segmentation is loaded; ``processAsync(...)`` returns at once and reports
    through callbacks (``cancel()`` stops it). Both run the engine in a child process with Slicer's Python.
    The existing extension's attributes and helpers come from :class:`legacy_api.LegacyLogic`.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.initLegacyAttributes()
        self._job = None
        self._lastJob = None
        self._timer = None
        self._callbacks: dict[str, Callable] = {}
        if self.weightsFolder():  # the panel's choice applies to console runs too
            self.setWeightsFolder(self.weightsFolder())

    def getParameterNode(self) -> TotalSegmentatorParameterNode:
        node = super().getParameterNode()
        legacy_api.migrate_parameter_node(node)  # a scene saved with the existing extension
        return TotalSegmentatorParameterNode(node)

    # ---------------------------------------------------------------- console API

    def process(self, inputVolume, outputSegmentation=None, quality=None, cpu: bool = False, task=None,
                subset=None, interactive: bool = False, sequenceBrowserNode=None, server: Optional[str] = None,
                token: Optional[str] = None, **options):
        """Segment ``inputVolume`` into ``outputSegmentation`` (created if None) and return the node.

        The positional order is the existing extension's: ``quality`` "normal" / "fast" / "faster" or a bool,
        ``cpu``, ``task`` (None: total), ``subset`` (ROI subset), ``interactive`` (accepted),
        ``sequenceBrowserNode`` (given: every frame of the volume's sequence). Keyword-only, ours: ``fast``,
        ``fastest``, ``roiSubset``, ``device`` and the request's options (``statistics``, ``robust_crop``, ...).
        ``server`` (and ``token``, default $TOTALSEG_SERVER_TOKEN): segment on that TotalSegmentator server, as
        ``device="remote"`` does on the panel's; this Slicer then needs neither torch nor nnU-Net.
        Blocks (processing Qt events so the application stays alive). Raises RuntimeError on failure.
        """
        request, server = self._consoleRequest(quality, cpu, task, subset, server, token, options)
        job = self._makeJob(inputVolume, outputSegmentation, request, sequenceBrowserNode is not None, server=server)
        job.on_log = self.log
        job.on_progress = self._logProgress
        job.start()
        while not job.poll():
            slicer.app.processEvents(qt.QEventLoop.AllEvents, POLL_INTERVAL_MS)
            time.sleep(POLL_INTERVAL_MS / 1000)
        if job.state is not State.SUCCEEDED:
            raise RuntimeError(job.error_message or f"segmentation {job.state.value}")
        return job.segmentation_node

    def processAsync(self, inputVolume, outputSegmentation=None, quality=None, cpu: bool = False, task=None,
                     subset=None, interactive: bool = False, sequenceBrowserNode=None, onProgress=None,
                     onLog=None, onFinished=None, server: Optional[str] = None, token: Optional[str] = None,
                     **options):
        """Start a segmentation and return at once; callbacks run in the GUI thread; ``cancel()`` stops it."""
        request, server = self._consoleRequest(quality, cpu, task, subset, server, token, options)
        job = self._makeJob(inputVolume, outputSegmentation, request, sequenceBrowserNode is not None, server=server)
        self._run(job, onProgress or self._logProgress, onLog or self.log, onFinished)
        return job

    def start(self, params: TotalSegmentatorParameterNode, allFrames: bool = False, onProgress=None, onLog=None,
              onFinished=None) -> None:
        """Start the run the panel describes (every frame of a sequence when ``allFrames``).

        New output nodes appear only with a result: a cancelled or failed first run adds nothing to the scene.
        """
        request = from_parameter_node(params)
        server = self.remoteServerSettings().server() if request.remote else None
        if server is None:
            self.requireDependencies()
        job = self._makeJob(params.inputVolume, params.outputSegmentation, request, allFrames,
                            table=params.outputStatisticsTable if params.computeStatistics else None, server=server)

        def finished(state: State, message: str) -> None:
            if state is State.SUCCEEDED:
                params.outputSegmentation = job.segmentation_node
                if request.segmentation.statistics and getattr(job, "table_node", None) is not None:
                    params.outputStatisticsTable = job.table_node
            if onFinished:
                onFinished(state, message)

        self._run(job, onProgress, onLog, finished)

    def _consoleRequest(self, quality, cpu, task, subset, server, token, options):
        """The console's arguments as a job request and the remote server to run it on (None: this computer)."""
        if token and not server:
            raise ValueError("token= is the access token of a server: give server= too.")
        if server:
            options["device"] = REMOTE_DEVICE
        request = self.consoleJobRequest(quality, cpu, task, subset, options)
        if not request.remote:
            self.requireDependencies()
            return request, None
        if server:
            settings = remote.ServerSettings(server, token or "")
            return request, settings.server(token_hint="the token= argument of process(), or $TOTALSEG_SERVER_TOKEN")
        return request, self.remoteServerSettings().server()

    def _makeJob(self, inputVolume, outputSegmentation, request, allFrames: bool, table=None, server=None):
        """The job for a request: on ``server`` (a ``totalseg_remote.RemoteServer``), every frame of the volume's
        sequence when ``allFrames``, else one run."""
        from totalseg_slicer.job import SegmentationJob, SequenceJob

        if server is not None:
            if allFrames:
                raise ValueError("Every frame of a sequence is segmented on this computer only: choose a local device, "
                                 "or segment the current frame.")
            return remote.RemoteSegmentationJob(slicer.mrmlScene, inputVolume, outputSegmentation, request, server,
                                                table_node=table, temp_root=self.temporaryFolder())
        if allFrames:
            return SequenceJob(slicer.mrmlScene, inputVolume, outputSegmentation, request,
                               temp_root=self.temporaryFolder())
        return SegmentationJob(slicer.mrmlScene, inputVolume, outputSegmentation, request, table_node=table,
                               temp_root=self.temporaryFolder())

    def _logProgress(self, fraction: Optional[float], message: str) -> None:
        if message:
            self.log(message)

    @staticmethod
    def temporaryFolder() -> Path:
        """Slicer's temporary folder (Application settings), where exports and engine outputs go while running."""
        return Path(slicer.app.temporaryPath)

    # ---------------------------------------------------------------- running

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
            finished(job.state, job.error_message)

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

    # ---------------------------------------------------------------- what the panel asks

    def segmentsToReplace(self, params: TotalSegmentatorParameterNode) -> list[str]:
        """Names of the output's segments a run of this task would replace (they came from an earlier run)."""
        if not params.outputSegmentation:
            return []
        from totalseg_slicer.segmentation_import import segments_to_replace  # imports nibabel: after the install

        task = get_task(params.task)
        classes = list(params.roiSubset) or task.class_names
        ids = segments_to_replace(params.outputSegmentation, task.name, classes)
        segmentation = params.outputSegmentation.GetSegmentation()
        return [segmentation.GetSegment(i).GetName() for i in ids]

    def sequenceFrames(self, volumeNode) -> list:
        return sequences.frames_of(slicer.mrmlScene, volumeNode) if volumeNode else []

    def checkResources(self, params: TotalSegmentatorParameterNode):
        """None when the panel's run fits into the free memory (or nobody could tell), else what is short and what
        would help: asked of Slicer's Python in a child process (only torch knows a GPU's free memory)."""
        volume = params.inputVolume
        if volume is None or volume.GetImageData() is None or params.device == REMOTE_DEVICE:
            return None  # a remote server's memory is its own
        return resources.check_resources(devices.slicer_python(), volume.GetImageData().GetDimensions(),
                                         volume.GetSpacing(), from_parameter_node(params).segmentation)

    def availableDevices(self) -> list[tuple[str, str]]:
        """(label, value) pairs: auto, every CUDA GPU, Apple MPS where present, the CPU.

        Asked of Slicer's Python in a child process (once, cached): importing torch here would open a CUDA
        context in Slicer itself, and a broken torch install would stop the panel from opening.
        """
        return [*devices.query_devices(devices.slicer_python()), (remote.REMOTE_LABEL, REMOTE_DEVICE)]

    # ---------------------------------------------------------------- remote server

    def _showRemoteGroup(self) -> None:
        """The server's address and token are shown only while the device is the remote server."""
        self.ui.remoteServerGroupBox.visible = self.ui.deviceComboBox.currentData == REMOTE_DEVICE

    @staticmethod
    def remoteServerSettings() -> remote.ServerSettings:
        """The remote server's address and token, as kept in Slicer's settings."""
        return remote.ServerSettings.load(qt.QSettings())

    @staticmethod
    def setRemoteServerSettings(url: str, token: str) -> None:
        remote.ServerSettings(url, token).save(qt.QSettings())

    @staticmethod
    def remoteTokenNote() -> str:
        """Where the token is kept, for the panel to say."""
        return remote.token_storage_note(qt.QSettings().fileName())

    def remoteServerStatus(self) -> str:
        """Ask the remote server about itself (version, installed tasks, devices, queue); raises RemoteError."""
        return remote.describe_server(self.remoteServerSettings().server().info())

    # ---------------------------------------------------------------- licence and weights

    @staticmethod
    def licenseKey() -> Optional[str]:
        return get_license_key()

    @staticmethod
    def setLicenseKey(key: str) -> None:
        set_license_key(key)

    @staticmethod
    def weightsFolder() -> str:
        """The weights folder chosen in the panel (application settings), or "" for the default."""
        return str(qt.QSettings().value(WEIGHTS_FOLDER_SETTING, "") or "")

    def setWeightsFolder(self, path: str, remember: bool = False) -> None:
        """Use another weights folder (TotalSegmentator's layout) here and in the engine's child processes."""
        if remember:
            qt.QSettings().setValue(WEIGHTS_FOLDER_SETTING, path or "")
        if path:
            os.environ["TOTALSEG_WEIGHTS_PATH"] = path
        else:
            os.environ.pop("TOTALSEG_WEIGHTS_PATH", None)

    @staticmethod
    def weightsStatus(task: str) -> str:
        specs = models_of_task(task)
        missing = missing_models(specs)
        if not missing:
            return "installed"
        return f"{len(specs) - len(missing)} of {len(specs)} models installed (rest downloaded on first use)"

    @staticmethod
    def downloadWeights(task: str, onProgress=None) -> None:
        def report(event):
            if onProgress:
                onProgress(event.fraction, event.message)
            slicer.app.processEvents()

        download_task(task, progress=report)

    @staticmethod
    def importWeights(path: str):
        """Install weights from a zip or folder; returns the report (installed folders, skipped ones and why)."""
        return import_weights(path)

    @staticmethod
    def needsWeights(message: str) -> bool:
        return "not installed" in message or "totalseg_import_weights" in message

    @staticmethod
    def needsLicense(message: str) -> bool:
        return "licen" in message.lower() and "key" in message.lower()

    # ---------------------------------------------------------------- dependencies

    @staticmethod
    def dependencySummary() -> str:
        return dependencies.summary(dependencies.check())

    @staticmethod
    def requireDependencies() -> None:
        """Raise a RuntimeError naming what to install when the engine's packages are missing (console runs)."""
        missing = dependencies.missing(dependencies.check())
        if missing:
            raise RuntimeError(dependencies.missing_message(missing))

    def ensureDependencies(self, askConfirmation: bool = True, reinstall: bool = False) -> bool:
        """Install what is missing (torch through the PyTorch extension when present) after one confirmation.

        Returns False when the user declines; raises when an install fails, naming the package and what to do.
        """
        statuses = dependencies.check()
        plan = dependency_install.plan_install(statuses, reinstall=reinstall)
        if plan.empty:
            return True
        names = ", ".join(s.requirement.name for s in dependencies.missing(statuses)) or "nnunetv2 (repair)"
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                f"TotalSegmentator needs {names} in Slicer's Python (several GB with torch). Install now?",
                detailedText=plan.describe()):
            return False
        with slicer.util.WaitCursor():
            dependency_install.install_dependencies(plan, slicer.util, _slicerPackaging(),
                                                    dependency_install.find_pytorch_utils())
        devices.query_devices.cache_clear()
        self.requireDependencies()
        return True


def _slicerPackaging():
    """``slicer.packaging`` on Slicer 5.12 and later, None before."""
    try:
        import slicer.packaging

        return slicer.packaging
    except ImportError:
        return None


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
        self.delayDisplay("Starting the TotalSegmentator test")
        try:
            TotalSegmentatorLogic().requireDependencies()
        except RuntimeError as missing:
            self.delayDisplay(f"Skipped: {missing}")
            return
        task = get_task("total")
        if missing_models(task.mode("fast").models):
            self.delayDisplay("Skipped: the weights of 'total --fast' are not installed "
                              "(download them in the panel's Advanced section, or run totalseg_download_weights).")
            return
        import SampleData

        volume = SampleData.downloadSample("CTACardio")
        logic = TotalSegmentatorLogic()
        segmentation = logic.process(volume, None, task="total", fast=True, device="auto")
        from totalseg_slicer.segmentation_import import CLASS_TAG, segment_tag  # imports nibabel: installed now

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
