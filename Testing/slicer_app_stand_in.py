"""The parts of a running 3D Slicer that a scripted module touches, stood in for around slicer-core's real MRML.

What is real here: the MRML scene and nodes (slicer-core), ``slicer.util`` (slicer-core ships Slicer's own
``util.py``: ``loadUI``, ``childWidgetVariables``, ``tryWithErrorDisplay``, the message displays,
``VTKObservationMixin``), and every plain Qt widget (PySide6, with PythonQt's attribute rules, see
``pythonqt_stand_in``). What is stood in for, each written from the Slicer v5.10.0 source named in its docstring:

- ``slicer.app`` (qSlicerApplication): testing mode off, ``temporaryPath``, ``processEvents``, cursors;
- ``slicer.ScriptedLoadableModule`` and the C++ module panel that owns the widget (setup, enter, exit);
- ``slicer.parameterNodeWrapper`` (``parameter_node_stand_in``); ``slicer_5_8=True`` makes its ``connectGui``
  return None as Slicer 5.8's did (fixed in 5.10 by commit b5a65a49a0);
- the MRML widgets (``mrml_widgets_stand_in``): the properties, signals and slots their headers declare;
- the user: every message box goes to :class:`Dialogs`, which records the text and gives scripted answers.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
import unittest
from pathlib import Path
from typing import Any, Callable, Iterator

import slicer
import slicer.util
from mrml_widgets_stand_in import qMRMLNodeComboBox, qMRMLSegmentationShow3DButton, qMRMLWidget
from parameter_node_stand_in import SLICER_5_8, parameterNodeWrapper
from PySide6.QtCore import Property, QSettings
from PySide6.QtWidgets import QApplication
from pythonqt_stand_in import CONNECT_WARNINGS, ctk, qt

# --------------------------------------------------------------------------------------------------
# slicer.ScriptedLoadableModule (Base/Python/slicer/ScriptedLoadableModule.py) and the C++ module panel
# --------------------------------------------------------------------------------------------------


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.moduleName = self.__class__.__name__[:-len("Widget")]
        self.developerMode = False
        if parent is None:
            parent = qMRMLWidget()
            parent.setLayout(qt.QVBoxLayout())
            parent.setMRMLScene(slicer.mrmlScene)
        self.parent = parent
        self.layout = self.parent.layout()

    def resourcePath(self, filename: str) -> str:
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def setup(self) -> None:
        pass

    def cleanup(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.moduleName = self.__class__.__name__[:-len("Logic")]

    def getParameterNode(self):
        """The scene's singleton scripted module node tagged with the module name (ScriptedLoadableModule.py)."""
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 0) -> None:
        slicer.util.delayDisplay(message, msec)


def module_parent(module_file: Path) -> types.SimpleNamespace:
    """qSlicerScriptedLoadableModule as ``ScriptedLoadableModule.__init__`` fills it (its Qt properties)."""
    return types.SimpleNamespace(path=str(module_file), title="", categories=[], dependencies=[], contributors=[],
                                 helpText="", acknowledgementText="")


class ModulePanel(qMRMLWidget):
    """qSlicerScriptedLoadableModuleWidget: owns the Python widget; ``isEntered`` between enter() and exit()."""

    def __init__(self) -> None:
        super().__init__()
        self.setLayout(qt.QVBoxLayout())
        self.setMRMLScene(slicer.mrmlScene)
        self._entered = False
        self.widget = None

    isEntered = Property(bool, lambda self: self._entered)

    def enter(self) -> None:
        assert not self._entered  # qSlicerAbstractModuleWidget::enter asserts it
        self._entered = True
        self.widget.enter()

    def exit(self) -> None:
        assert self._entered
        self._entered = False
        self.widget.exit()


# --------------------------------------------------------------------------------------------------
# slicer.app and the user
# --------------------------------------------------------------------------------------------------


class SlicerApp:
    """qSlicerApplication as a module sees it, not in testing mode (message boxes are shown)."""

    applicationName = "3D Slicer"

    def __init__(self, temporary: Path) -> None:
        self.temporaryPath = str(temporary)
        self.connections: list[tuple[str, Callable]] = []
        self.cursor_depth = 0

    def testingEnabled(self) -> bool:
        return False

    def processEvents(self, *args) -> None:
        QApplication.processEvents(*args)

    def connect(self, signal: str, slot: Callable) -> None:
        self.connections.append((signal, slot))

    def setOverrideCursor(self, cursor) -> None:
        self.cursor_depth += 1

    def restoreOverrideCursor(self) -> None:
        self.cursor_depth -= 1

    def thread(self):
        return QApplication.instance().thread()


class Dialogs:
    """The user at the message boxes: records each (level, text) and answers from a queue (default: OK/Yes)."""

    def __init__(self) -> None:
        self.shown: list[tuple[str, str]] = []
        self.answers: list[bool] = []

    def message_box(self, text, parent=None, **kwargs):
        buttons = kwargs.get("standardButtons", qt.QMessageBox.Ok)
        self.shown.append((str(kwargs.get("windowTitle", "")), str(text)))
        yes = self.answers.pop(0) if self.answers else True
        if buttons & qt.QMessageBox.Yes:
            return qt.QMessageBox.Yes if yes else qt.QMessageBox.No
        return qt.QMessageBox.Ok if yes else qt.QMessageBox.Cancel

    def modal(self, box) -> int:
        """A QMessageBox the module builds itself: recorded, then closed as with Escape (no button clicked)."""
        self.shown.append((str(box.windowTitle), str(box.text)))
        return int(qt.QMessageBox.Cancel.value)

    def texts(self) -> list[str]:
        return [text for _, text in self.shown]


class Harness(types.SimpleNamespace):
    """What a test holds: the app, the main window, the dialogs, and Qt connection warnings."""

    def spin(self, until: Callable[[], bool], timeout_s: float = 300.0) -> None:
        """Run Qt's event loop (the logic's poll timer among it) until ``until()`` or fail after the timeout."""
        import time

        deadline = time.monotonic() + timeout_s
        while not until():
            assert time.monotonic() < deadline, "timed out waiting for the panel"
            QApplication.processEvents()
            time.sleep(0.02)


def install(monkeypatch, scene, temporary: Path, module_file: Path, slicer_5_8: bool = False) -> Harness:
    """Put the stand-ins where Slicer has them (``sys.modules``, ``slicer.*``) for one test."""
    application = QApplication.instance() or QApplication([])
    # Slicer's settings file, per test: qt.QSettings() in the module reads and writes here.
    application.setOrganizationName("NA-MIC")
    application.setApplicationName("Slicer")
    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(temporary / "settings"))
    app = SlicerApp(temporary)
    dialogs = Dialogs()
    main_window = qt.QMainWindow()
    CONNECT_WARNINGS.clear()
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = (lambda cls=None: parameterNodeWrapper(cls, **SLICER_5_8)) if slicer_5_8 \
        else parameterNodeWrapper
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)
    for name, module in (("qt", qt), ("ctk", ctk), ("slicer.parameterNodeWrapper", wrapper),
                         ("slicer.ScriptedLoadableModule", slm)):
        monkeypatch.setitem(sys.modules, name, module)
    for name, value in (("app", app), ("mrmlScene", scene), ("qMRMLWidget", qMRMLWidget),
                        ("qMRMLNodeComboBox", qMRMLNodeComboBox),
                        ("qMRMLSegmentationShow3DButton", qMRMLSegmentationShow3DButton),
                        ("parameterNodeWrapper", wrapper), ("ScriptedLoadableModule", slm)):
        monkeypatch.setattr(slicer, name, value, raising=False)
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()  # real (slicer-core), as Slicer's module has it
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        terminologies=types.SimpleNamespace(logic=lambda: terminologies)), raising=False)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: main_window)
    monkeypatch.setattr(slicer.util, "messageBox", dialogs.message_box)
    # Modal dialogs would wait for a user: closed at once unless a test scripts an answer.
    monkeypatch.setattr(qt.QMessageBox, "exec_", lambda box: dialogs.modal(box))
    monkeypatch.setattr(qt.QInputDialog, "getText", lambda *args, **kwargs: "")
    monkeypatch.setattr(qt.QFileDialog, "getOpenFileName", lambda *args, **kwargs: "")
    monkeypatch.setattr(qt.QFileDialog, "getExistingDirectory", lambda *args, **kwargs: "")
    monkeypatch.setattr(slicer.util, "modulePath", lambda name: str(module_file))
    return Harness(qapp=application, app=app, dialogs=dialogs, main_window=main_window,
                   connect_warnings=CONNECT_WARNINGS, terminologies=terminologies)


def import_module(monkeypatch, module_file: Path) -> types.ModuleType:
    """Import the module script under its own name, as Slicer's module factory does (annotations resolve)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module_file.stem, module_file)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_file.stem, module)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def opened_panel(module: Any) -> Iterator[Any]:
    """The module's widget, opened as :func:`open_panel` does; left and cleaned up as Slicer does afterwards."""
    widget, panel = open_panel(module)
    try:
        yield widget
    finally:
        if panel.isEntered:
            panel.exit()
        widget.cleanup()


def open_panel(module: Any) -> tuple[Any, ModulePanel]:
    """Create the module's widget as Slicer does on first show: panel, widget, setup(), then enter()."""
    panel = ModulePanel()
    widget = module.TotalSegmentatorWidget(panel)
    panel.widget = widget
    widget.setup()
    panel.enter()
    return widget, panel
