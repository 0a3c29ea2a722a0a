"""Slicer's MRML widget classes, stood in for with exactly what their headers declare.

``qMRMLWidget``, ``qMRMLNodeComboBox`` (Libs/MRML/Widgets/*.h, Slicer v5.10.0) and
``qMRMLSegmentationShow3DButton`` (Modules/Loadable/Segmentations/Widgets/), plus the CTK classes, registered
with the stand-in ``qt.QUiLoader`` so that a ``.ui`` file builds them; a slot or property they lack behaves
as it would on the real class (a connection warning, nothing connected).
"""

from __future__ import annotations

from PySide6.QtCore import Property, Signal
from pythonqt_stand_in import UiLoader, ctk, qt

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
