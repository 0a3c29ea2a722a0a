"""Slicer's ``qt`` and ``ctk`` Python modules, stood in for by PySide6 with PythonQt's attribute rules.

In Slicer, ``import qt`` gives PythonQt's wrappers of Qt 5. Two of their rules matter to a module's code and
are reproduced here on real PySide6 widgets:

- every Qt property is a Python attribute (``combo.currentIndex = 2``, ``button.enabled``, ``label.text``),
  shadowing the getter method of the same name, and ``widget.name`` is the object name
  (PythonQt's ``PythonQtInstanceWrapper`` property lookup; ``slicer.util.childWidgetVariables`` relies on it);
- ``qt.QUiLoader`` builds Slicer's own widget classes from a ``.ui`` file and applies its ``<connections>`` by
  signature; a slot the receiver lacks is not an error but a ``QObject::connect: No such slot`` warning.
  :class:`UiLoader` records such warnings in :data:`CONNECT_WARNINGS` so tests can assert there are none.

Only plain Qt widgets come from PySide6; Slicer's and CTK's widget classes are stand-ins written from their
headers (see ``slicer_app_stand_in``).
"""

from __future__ import annotations

import os
import re
import types
import xml.etree.ElementTree as ET
from typing import Callable, Optional

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets  # noqa: E402
from PySide6.QtCore import Property, QObject, Signal  # noqa: E402

CONNECT_WARNINGS: list[str] = []

# Plain Qt classes a module panel and slicer.util create; each gets PythonQt's attribute access.
_WRAPPED = {
    QtWidgets: ("QWidget", "QLabel", "QPushButton", "QRadioButton", "QCheckBox", "QComboBox", "QLineEdit",
                "QListWidget", "QPlainTextEdit", "QProgressBar", "QFrame", "QGroupBox", "QToolButton",
                "QSpinBox", "QDoubleSpinBox", "QTextEdit", "QDialog", "QMessageBox", "QMainWindow"),
    QtCore: ("QTimer",),
}


def pythonqt_class(base: type, name: Optional[str] = None) -> type:
    """A subclass of ``base`` whose Qt properties are Python attributes, as PythonQt exposes them."""
    attributes: dict = {"name": property(lambda self: QObject.objectName(self),
                                         lambda self, value: QObject.setObjectName(self, value))}
    meta = base.staticMetaObject
    for index in range(meta.propertyCount()):
        prop = meta.property(index).name()
        attributes[prop] = property(lambda self, p=prop: QObject.property(self, p),
                                    lambda self, value, p=prop: QObject.setProperty(self, p, value))
    return type(name or base.__name__, (base,), attributes)


def _build_qt() -> types.ModuleType:
    module = types.ModuleType("qt")
    for source in (QtCore, QtGui, QtWidgets):
        for attr in dir(source):
            if attr.startswith("Q"):
                setattr(module, attr, getattr(source, attr))
    for source, names in _WRAPPED.items():
        for cls_name in names:
            setattr(module, cls_name, pythonqt_class(getattr(source, cls_name)))
    module.QUiLoader = UiLoader
    module.QInputDialog = _input_dialog_class()
    return module


def _input_dialog_class() -> type:
    """PythonQt drops ``bool* ok`` out-arguments: ``QInputDialog.getText`` returns the text ("" on Cancel)."""

    class QInputDialog(QtWidgets.QInputDialog):
        @staticmethod
        def getText(*args, **kwargs) -> str:
            text, ok = QtWidgets.QInputDialog.getText(*args, **kwargs)
            return text if ok else ""

    return QInputDialog


def _build_ctk(qt: types.ModuleType) -> types.ModuleType:
    """CTK widgets the panel's .ui uses, with the properties and signals their headers declare."""
    module = types.ModuleType("ctk")

    class ctkCollapsibleButton(qt.QWidget):
        """ctkCollapsibleButton.h: ``text`` and ``collapsed`` properties, ``contentsCollapsed(bool)`` signal."""

        contentsCollapsed = Signal(bool)

        def __init__(self, parent=None) -> None:
            super().__init__(parent)
            self._text, self._collapsed = "", False

        def _get_text(self) -> str:
            return self._text

        def _set_text(self, value: str) -> None:
            self._text = value

        def _get_collapsed(self) -> bool:
            return self._collapsed

        def _set_collapsed(self, value: bool) -> None:
            if bool(value) != self._collapsed:
                self._collapsed = bool(value)
                self.contentsCollapsed.emit(self._collapsed)

        text = Property(str, _get_text, _set_text)
        collapsed = Property(bool, _get_collapsed, _set_collapsed)

    class ctkPathLineEdit(qt.QWidget):
        """ctkPathLineEdit.h: ``currentPath`` property; ``currentPathChanged(QString)`` whenever it changes."""

        currentPathChanged = Signal(str)

        def __init__(self, parent=None) -> None:
            super().__init__(parent)
            self._path = ""

        def _get_path(self) -> str:
            return self._path

        def _set_path(self, value: str) -> None:
            value = value or ""
            if value != self._path:
                self._path = value
                self.currentPathChanged.emit(value)

        def setCurrentPath(self, value: str) -> None:
            self._set_path(value)

        currentPath = Property(str, _get_path, _set_path)

    class ctkCheckBox(qt.QCheckBox):
        """ctkCheckBox.h: a QCheckBox (the parameter node wrapper binds it like one)."""

    for cls in (ctkCollapsibleButton, ctkPathLineEdit, ctkCheckBox):
        setattr(module, cls.__name__, cls)
    return module


class UiLoader(QtUiTools.QUiLoader):
    """``qt.QUiLoader`` as Slicer's: builds registered Slicer/CTK classes, applies connections by name."""

    classes: dict[str, type] = {}

    def createWidget(self, className: str, parent=None, name: str = ""):
        cls = self.classes.get(className)
        if cls is None:
            return super().createWidget(className, parent, name)
        widget = cls(parent)
        widget.setObjectName(name)
        return widget

    def load(self, device, parentWidget=None):
        root = ET.fromstring(bytes(device.readAll()))
        connections = root.find("connections")
        if connections is not None:
            root.remove(connections)
        buffer = QtCore.QBuffer()
        buffer.setData(ET.tostring(root))
        buffer.open(QtCore.QIODevice.ReadOnly)
        widget = super().load(buffer, parentWidget)
        if widget is not None and connections is not None:
            for connection in connections.findall("connection"):
                _connect(widget, connection)
        return widget


def _member(signature: str) -> str:
    return re.match(r"\s*([A-Za-z_]\w*)", signature).group(1)


def _find(root, name: str):
    return root if QObject.objectName(root) == name else root.findChild(QObject, name)


def _connect(root, connection: ET.Element) -> None:
    """Qt's QFormBuilder connects by signature; a missing member only warns (and nothing is connected)."""
    sender, receiver = _find(root, connection.findtext("sender")), _find(root, connection.findtext("receiver"))
    signal, slot = _member(connection.findtext("signal")), _member(connection.findtext("slot"))
    if sender is None or receiver is None or not hasattr(sender, signal):
        CONNECT_WARNINGS.append(f"QObject::connect: No such signal {connection.findtext('signal')}")
        return
    target: Optional[Callable] = getattr(receiver, slot, None)
    if not callable(target):
        CONNECT_WARNINGS.append(
            f"QObject::connect: No such slot {type(receiver).__name__}::{connection.findtext('slot')}")
        return
    getattr(sender, signal).connect(target)


qt = _build_qt()
ctk = _build_ctk(qt)
