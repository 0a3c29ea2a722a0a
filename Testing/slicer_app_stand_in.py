"""The parts of a running 3D Slicer that a scripted module touches, stood in for around slicer-core's real MRML.

What is real here: the MRML scene and nodes (slicer-core), ``slicer.util`` (slicer-core ships Slicer's own
``util.py``: ``loadUI``, ``childWidgetVariables``, ``tryWithErrorDisplay``, the message displays,
``VTKObservationMixin``), and every plain Qt widget (PySide6, with PythonQt's attribute rules, see
``pythonqt_stand_in``). What is stood in for, each written from the Slicer v5.10.0 source named in its docstring:

- ``slicer.app`` (qSlicerApplication): testing mode off, ``temporaryPath``, ``processEvents``, cursors;
- ``slicer.ScriptedLoadableModule`` and the C++ module panel that owns the widget (setup, enter, exit);
- ``slicer.parameterNodeWrapper``: typed parameters stored in the scripted module node as Slicer stores them,
  ``connectGui`` / ``disconnectGui``; ``connect_gui_returns_tag=False`` reproduces Slicer 5.8, whose
  ``connectGui`` returned None (fixed in 5.10 by commit b5a65a49a0);
- ``qMRMLWidget``, ``qMRMLNodeComboBox``, ``qMRMLSegmentationShow3DButton``: the properties, signals and slots
  their headers declare, and nothing more (a ``.ui`` connection to a slot they lack is recorded as Qt warns);
- the user: every message box goes to :class:`Dialogs`, which records the text and gives scripted answers.
"""

from __future__ import annotations

import os
import sys
import types
import typing
import unittest
from pathlib import Path
from typing import Any, Callable, Optional

import slicer
import slicer.util
import vtk
from PySide6.QtCore import Property, QSettings, Signal
from PySide6.QtWidgets import QApplication
from pythonqt_stand_in import CONNECT_WARNINGS, UiLoader, ctk, qt

SLICER_PARAMETER_NAME = "SlicerParameterName"  # parameterNodeWrapper/guiConnectors.py


# --------------------------------------------------------------------------------------------------
# MRML widgets (Libs/MRML/Widgets/*.h, Modules/Loadable/Segmentations/Widgets/*.h)
# --------------------------------------------------------------------------------------------------


class qMRMLWidget(qt.QWidget):
    """qMRMLWidget.h: ``setMRMLScene`` slot emitting ``mrmlSceneChanged(vtkMRMLScene*)``."""

    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


def _string_list_property(attribute: str) -> Property:
    return Property("QStringList", lambda self: list(getattr(self, attribute)),
                    lambda self, value: setattr(self, attribute, list(value)))


def _bool_property(attribute: str) -> Property:
    return Property(bool, lambda self: getattr(self, attribute), lambda self, value: setattr(self, attribute, value))


class qMRMLNodeComboBox(qt.QWidget):
    """qMRMLNodeComboBox.h: the nodes of ``nodeTypes`` in the scene; None only when ``noneEnabled``.

    Like the real one (a QComboBox over the scene model) it selects the first node by itself when None is not
    allowed, and falls back when the current node leaves the scene.
    """

    currentNodeChanged = Signal(object)
    currentNodeIDChanged = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._types: list[str] = []
        self._none = False
        self._add = self._remove = self._rename = self._edit = True
        self._hidden = False
        self._child_types = True
        self._none_display = "None"
        self._base_name = ""
        self._scene = None
        self._node = None
        self._observations: list[int] = []

    nodeTypes = _string_list_property("_types")
    noneEnabled = _bool_property("_none")
    addEnabled = _bool_property("_add")
    removeEnabled = _bool_property("_remove")
    renameEnabled = _bool_property("_rename")
    editEnabled = _bool_property("_edit")
    showHidden = _bool_property("_hidden")
    showChildNodeTypes = _bool_property("_child_types")
    noneDisplay = Property(str, lambda self: self._none_display, lambda self, v: setattr(self, "_none_display", v))
    baseName = Property(str, lambda self: self._base_name, lambda self, v: setattr(self, "_base_name", v))

    def setMRMLScene(self, scene) -> None:
        if self._scene is not None:
            for tag in self._observations:
                self._scene.RemoveObserver(tag)
        self._scene, self._observations = scene, []
        if scene is not None:
            self._observations = [scene.AddObserver(event, lambda *_: self._sceneChanged())
                                  for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent)]
        self._sceneChanged()

    def mrmlScene(self):
        return self._scene

    def nodes(self) -> list:
        if self._scene is None:
            return []
        found = []
        for index in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(index)
            if self._accepts(node) and node not in found:
                found.append(node)
        return found

    def _accepts(self, node) -> bool:
        if not self._hidden and node.GetHideFromEditors():
            return False
        if self._child_types:
            return any(node.IsA(t) for t in self._types)
        return node.GetClassName() in self._types

    def _sceneChanged(self) -> None:
        nodes = self.nodes()
        if self._node is not None and self._node not in nodes:
            self._setNode(None)
        if self._node is None and not self._none and nodes:
            self._setNode(nodes[0])

    def currentNode(self):
        return self._node

    def currentNodeID(self) -> str:
        return self._node.GetID() if self._node is not None else ""

    def setCurrentNode(self, node) -> None:
        if isinstance(node, str):
            node = self._scene.GetNodeByID(node) if self._scene is not None and node else None
        if node is not None and node not in self.nodes():
            return  # the real combo box cannot select a node outside its model
        if node is None and not self._none and self.nodes():
            return
        self._setNode(node)

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(node_id)

    def _setNode(self, node) -> None:
        if node is self._node:
            return
        self._node = node
        self.currentNodeChanged.emit(node)
        self.currentNodeIDChanged.emit(self.currentNodeID())


class qMRMLSegmentationShow3DButton(qt.QPushButton):
    """qMRMLSegmentationShow3DButton.h (a ctkMenuButton): slots ``setSegmentationNode`` and ``setLocked`` only."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.segmentation_node = None
        self._locked = False

    def setSegmentationNode(self, node) -> None:
        self.segmentation_node = node

    def setLocked(self, locked: bool) -> None:
        self._locked = locked

    locked = Property(bool, lambda self: self._locked, setLocked)


UiLoader.classes = {
    "qMRMLWidget": qMRMLWidget,
    "qMRMLNodeComboBox": qMRMLNodeComboBox,
    "qMRMLSegmentationShow3DButton": qMRMLSegmentationShow3DButton,
    "ctkCollapsibleButton": ctk.ctkCollapsibleButton,
    "ctkPathLineEdit": ctk.ctkPathLineEdit,
    "ctkCheckBox": ctk.ctkCheckBox,
    **{name: getattr(qt, name) for name in ("QWidget", "QLabel", "QPushButton", "QRadioButton", "QCheckBox",
                                            "QComboBox", "QLineEdit", "QListWidget", "QPlainTextEdit",
                                            "QProgressBar", "QFrame", "QGroupBox", "QToolButton")},
}


# --------------------------------------------------------------------------------------------------
# slicer.parameterNodeWrapper (Base/Python/slicer/parameterNodeWrapper/wrapper.py, serializers.py)
# --------------------------------------------------------------------------------------------------

SLICER_5_8 = {"connect_gui_returns_tag": False}


class _Serializer:
    """How serializers.py stores one annotated type in a vtkMRMLScriptedModuleNode."""

    def __init__(self, annotation) -> None:
        self.annotation = annotation
        self.is_list = typing.get_origin(annotation) is list
        self.is_node = isinstance(annotation, type) and issubclass(annotation, vtk.vtkObject)

    def default(self):
        if self.is_list:
            return []
        if self.is_node:
            return None
        return {str: "", bool: False, int: 0, float: 0.0}[self.annotation]

    def is_in(self, node, name: str) -> bool:
        return node.HasParameter(f"{name}.len" if self.is_list else name)

    def write(self, node, name: str, value) -> None:
        if self.is_node:  # NodeSerializer: an empty parameter plus a node reference of the same name
            node.SetParameter(name, "")
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        elif self.is_list:  # ListSerializer: name.len and name.0 ... name.N-1
            old = int(node.GetParameter(f"{name}.len") or 0)
            for index, item in enumerate(value):
                node.SetParameter(f"{name}.{index}", str(item))
            node.SetParameter(f"{name}.len", str(len(value)))
            for index in range(len(value), old):
                node.UnsetParameter(f"{name}.{index}")
        elif self.annotation is bool:
            node.SetParameter(name, "True" if value else "False")
        else:
            node.SetParameter(name, str(value))

    def read(self, node, name: str):
        if self.is_node:
            return node.GetNodeReference(name)
        if self.is_list:
            return [node.GetParameter(f"{name}.{i}") for i in range(int(node.GetParameter(f"{name}.len") or 0))]
        text = node.GetParameter(name)
        return text == "True" if self.annotation is bool else self.annotation(text)


class _Connector:
    """guiConnectors.py: QCheckBox/ctkCheckBox <-> bool (stateChanged), qMRMLNodeComboBox <-> node."""

    def __init__(self, widget, serializer: _Serializer) -> None:
        self.widget = widget
        if type(widget) in (qt.QCheckBox, ctk.ctkCheckBox) and serializer.annotation is bool:
            self.signal, self.read, self.write = widget.stateChanged, lambda: widget.checked, self._write_checked
        elif type(widget) is qMRMLNodeComboBox and serializer.is_node:
            widget.nodeTypes = [serializer.annotation.__name__]
            self.signal, self.read, self.write = widget.currentNodeChanged, widget.currentNode, widget.setCurrentNode
        else:
            raise RuntimeError(f"Unable to create GUI connector from widget {type(widget).__name__} "
                               f"to {serializer.annotation}")
        self.callback: Optional[Callable] = None

    def _write_checked(self, value: bool) -> None:
        self.widget.checked = value

    def on_changed(self, callback: Optional[Callable]) -> None:
        if self.callback is not None:
            self.signal.disconnect(self.callback)
        self.callback = callback
        if callback is not None:
            self.signal.connect(callback)


def parameterNodeWrapper(classtype=None, connect_gui_returns_tag: bool = True):
    """The decorator: one property per annotation, stored in the wrapped node; connectGui/disconnectGui."""

    def wrap(cls):
        hints = typing.get_type_hints(cls)
        serializers = {name: _Serializer(annotation) for name, annotation in hints.items()}
        defaults = {name: getattr(cls, name) if hasattr(cls, name) else s.default()
                    for name, s in serializers.items()}

        def init(self, parameterNode) -> None:
            self.parameterNode = parameterNode
            self._parameterGUIs, self._nextParameterGUIsTag, self._updating = {}, 0, False
            for name, serializer in serializers.items():
                if not serializer.is_in(parameterNode, name):
                    serializer.write(parameterNode, name, defaults[name])

        def make_property(name: str) -> property:
            def setter(self, value) -> None:
                with slicer.util.NodeModify(self.parameterNode):
                    serializers[name].write(self.parameterNode, name, value)
            return property(lambda self: serializers[name].read(self.parameterNode, name), setter)

        def connect_gui(self, gui):
            widgets = gui.findChildren(qt.QWidget) if hasattr(gui, "findChildren") else list(vars(gui).values())
            mapping = {w.property(SLICER_PARAMETER_NAME): w for w in widgets
                       if hasattr(w, "property") and w.property(SLICER_PARAMETER_NAME)}
            connectors = {name: _Connector(widget, serializers[name]) for name, widget in mapping.items()}
            tag = self._nextParameterGUIsTag
            self._nextParameterGUIsTag += 1
            self._parameterGUIs[tag] = connectors
            for name, connector in connectors.items():
                connector.write(getattr(self, name))
                connector.on_changed(gui_to_parameter(self, name, connector))
            self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda *_: update_gui(self))
            return tag if connect_gui_returns_tag else None

        def gui_to_parameter(self, name: str, connector: _Connector) -> Callable:
            def changed(*_signal_arguments) -> None:
                if not self._updating:
                    setattr(self, name, connector.read())
            return changed

        def update_gui(self) -> None:
            if self._updating:
                return
            self._updating = True
            try:
                for connectors in list(self._parameterGUIs.values()):
                    for name, connector in connectors.items():
                        connector.write(getattr(self, name))
            finally:
                self._updating = False

        def disconnect_gui(self, tag) -> None:
            for connector in self._parameterGUIs.pop(tag, {}).values():
                connector.on_changed(None)

        for name in serializers:
            setattr(cls, name, make_property(name))
        cls.allParameters = dict(serializers)
        cls.__init__ = init
        cls.connectGui, cls.disconnectGui = connect_gui, disconnect_gui
        cls.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(
            event, callback, priority)
        cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
        cls.Modified = lambda self: self.parameterNode.Modified()
        cls.StartModify = lambda self: self.parameterNode.StartModify()
        cls.EndModify = lambda self, was: self.parameterNode.EndModify(was)
        return cls

    return wrap if classtype is None else wrap(classtype)


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


def open_panel(module: Any) -> tuple[Any, ModulePanel]:
    """Create the module's widget as Slicer does on first show: panel, widget, setup(), then enter()."""
    panel = ModulePanel()
    widget = module.TotalSegmentatorWidget(panel)
    panel.widget = widget
    widget.setup()
    panel.enter()
    return widget, panel
