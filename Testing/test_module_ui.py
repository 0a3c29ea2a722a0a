"""The panel's .ui file holds every widget the module code uses, with the right types and bindings.

No Slicer application runs here, so the module script is read as text/AST and the .ui as XML.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "TotalSegmentator"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "TotalSegmentator.ui"
SCRIPT = MODULE_DIR / "TotalSegmentator.py"

# What the code does with each kind of widget decides the class it must have.
EXPECTED_CLASSES = {
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "outputStatisticsTableSelector": "qMRMLNodeComboBox",
    "segmentationShow3DButton": "qMRMLSegmentationShow3DButton",
    "taskComboBox": "QComboBox",
    "modalityFilterComboBox": "QComboBox",
    "deviceComboBox": "QComboBox",
    "roiSubsetListWidget": "QListWidget",
    "roiSubsetFilterLineEdit": "QLineEdit",
    "licenseKeyLineEdit": "QLineEdit",
    "weightsFolderPathLineEdit": "ctkPathLineEdit",
    "applyButton": "QPushButton",
    "progressBar": "QProgressBar",
    "logTextEdit": "QPlainTextEdit",
    "advancedCollapsibleButton": "ctkCollapsibleButton",
    "speedNormalRadioButton": "QRadioButton",
    "speedFastRadioButton": "QRadioButton",
    "speedFastestRadioButton": "QRadioButton",
}

# Widget classes the parameter node wrapper can bind to each annotated type.
BINDABLE = {"bool": {"QCheckBox"}, "node": {"qMRMLNodeComboBox"}}


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def used_widget_names() -> set[str]:
    text = SCRIPT.read_text()
    names = set(re.findall(r"\bui\.([A-Za-z_][A-Za-z0-9_]*)", text))
    names |= {f"speed{s.capitalize()}RadioButton" for s in ("normal", "fast", "fastest")}  # built by name
    return names


def parameter_fields() -> dict[str, str]:
    tree = ast.parse(SCRIPT.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TotalSegmentatorParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_every_widget_the_code_uses_exists():
    widgets = ui_widgets()
    missing = sorted(used_widget_names() - set(widgets))
    assert not missing, f"widgets used in TotalSegmentator.py but absent from the .ui: {missing}"


@pytest.mark.parametrize("name, cls", sorted(EXPECTED_CLASSES.items()))
def test_widget_classes(name, cls):
    assert ui_widgets()[name].get("class") == cls


def bindings() -> dict[str, ET.Element]:
    found = {}
    for widget in ui_widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                found[prop.findtext("string")] = widget
    return found


def test_bindings_use_the_exact_property_name_and_stdset():
    for widget in ui_widgets().values():
        for prop in widget.findall("property"):
            name = prop.get("name")
            if name.lower() == "slicerparametername":
                assert name == "SlicerParameterName", f"{widget.get('name')} binds with misspelt '{name}'"
                assert prop.get("stdset") == "0", f"{widget.get('name')}: dynamic property needs stdset=0"


def test_bound_widgets_match_parameter_types():
    fields = parameter_fields()
    bound = bindings()
    assert bound, "no widget is bound to the parameter node"
    for parameter, widget in bound.items():
        assert parameter in fields, f"{widget.get('name')} binds to unknown parameter '{parameter}'"
        annotation = fields[parameter]
        kind = "node" if annotation.startswith("vtkMRML") else annotation
        assert widget.get("class") in BINDABLE[kind], (parameter, annotation, widget.get("class"))
        if kind == "node":
            node_types = [s.text for s in widget.find("property[@name='nodeTypes']").iter("string")]
            assert node_types == [annotation], (parameter, node_types)


def test_every_plain_option_is_bound_or_handled():
    """Bool options must be bound in the .ui; the others are synchronised by hand in the widget."""
    fields = parameter_fields()
    bound = set(bindings())
    script = SCRIPT.read_text()
    for name, annotation in fields.items():
        if annotation == "bool" or annotation.startswith("vtkMRML"):
            assert name in bound, f"parameter {name} has no widget"
        else:
            assert f'"{name}"' in script or f"params.{name}" in script, f"parameter {name} is never synchronised"


def test_advanced_section_starts_collapsed_and_apply_disabled():
    widgets = ui_widgets()
    collapsed = widgets["advancedCollapsibleButton"].find("property[@name='collapsed']/bool").text
    assert collapsed == "true"
    assert widgets["applyButton"].find("property[@name='enabled']/bool").text == "false"
    assert widgets["licenseKeyLineEdit"].find("property[@name='echoMode']/enum").text == "QLineEdit::Password"


def test_no_two_widgets_share_a_cell_of_a_form():
    """Defect: the licence key and the weights folder were both row 7 of the Advanced form; Qt's uic then adds only
    one of them ("QFormLayout::setWidget: Cell (7, 0) already occupied") and the other is never shown."""
    root = ET.parse(UI_FILE).getroot()
    for layout in root.iter("layout"):
        if layout.get("class") != "QFormLayout":
            continue
        cells = [(item.get("row"), item.get("column")) for item in layout.findall("item")]
        spans = [(item.get("row"), "1") for item in layout.findall("item") if item.get("colspan") == "2"]
        taken = cells + spans
        assert len(taken) == len(set(taken)), f"{layout.get('name')}: a cell is used twice: {sorted(taken)}"
        rows = sorted({int(row) for row, _ in cells})
        assert rows == list(range(len(rows))), f"{layout.get('name')}: rows {rows} have gaps"
