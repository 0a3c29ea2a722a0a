"""``slicer.parameterNodeWrapper`` stood in for: typed parameters stored in a scripted module node.

Written from Base/Python/slicer/parameterNodeWrapper/wrapper.py, serializers.py and guiConnectors.py (Slicer
v5.10.0): str/bool/list[str]/node parameters stored as Slicer's serializers store them, ``connectGui`` binding the
widgets that carry a ``SlicerParameterName`` property, ``disconnectGui``. ``connect_gui_returns_tag=False``
reproduces Slicer 5.8, whose ``connectGui`` registered the connection but returned None.
"""

from __future__ import annotations

import typing
from typing import Callable, Optional

import slicer
import slicer.util
import vtk
from mrml_widgets_stand_in import qMRMLNodeComboBox
from pythonqt_stand_in import ctk, qt

SLICER_PARAMETER_NAME = "SlicerParameterName"  # parameterNodeWrapper/guiConnectors.py

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
