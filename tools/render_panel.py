"""Render the module panel (.ui) off-screen to a PNG for README.md, without a Slicer application.

Slicer's own widget classes (qMRMLNodeComboBox, ctkCollapsibleButton, ...) are mapped to the closest
plain Qt widgets, and the lists are filled with what the panel shows for the task ``total``. Replace
the picture with a real Slicer screenshot when one can be taken.

    QT_QPA_PLATFORM=offscreen python tools/render_panel.py Resources/Screenshots/panel.png
    QT_QPA_PLATFORM=offscreen python tools/render_panel.py Resources/Screenshots/panel-remote.png --remote
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TotalSegmentator"))

PLAIN_CLASSES = {
    "qMRMLWidget": "QWidget",
    "qMRMLNodeComboBox": "QComboBox",
    "ctkCollapsibleButton": "QGroupBox",
    "ctkPathLineEdit": "QLineEdit",
    "qMRMLSegmentationShow3DButton": "QPushButton",
}
SLICER_ONLY_PROPERTIES = {"nodeTypes", "showChildNodeTypes", "addEnabled", "removeEnabled", "noneEnabled",
                          "noneDisplay", "renameEnabled", "collapsed", "filters", "SlicerParameterName"}


def plain_ui(path: Path) -> bytes:
    """The .ui with Slicer/CTK classes swapped for Qt ones that QUiLoader knows."""
    tree = ET.parse(path)
    root = tree.getroot()
    for widget in root.iter("widget"):
        cls = widget.get("class")
        for prop in list(widget.findall("property")):
            if prop.get("name") in SLICER_ONLY_PROPERTIES:
                widget.remove(prop)
            elif cls == "ctkCollapsibleButton" and prop.get("name") == "text":
                prop.set("name", "title")
        widget.set("class", PLAIN_CLASSES.get(cls, cls))
    for section in ("customwidgets", "connections"):
        node = root.find(section)
        if node is not None:
            root.remove(node)
    return ET.tostring(root)


def fill(panel) -> None:
    """Show the panel as during a run of 'total' with a ROI subset."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import (
        QComboBox,
        QLabel,
        QLineEdit,
        QListWidget,
        QListWidgetItem,
        QPlainTextEdit,
        QProgressBar,
        QPushButton,
        QWidget,
    )
    from totalseg_engine.tasks import all_tasks

    def find(cls, name):
        return panel.findChild(cls, name)

    find(QComboBox, "inputVolumeSelector").addItem("CTACardio")
    find(QComboBox, "outputSegmentationSelector").addItem("CTACardio total")
    find(QComboBox, "outputStatisticsTableSelector").addItem("Create new table on Apply")
    task_combo = find(QComboBox, "taskComboBox")
    for task in all_tasks().values():
        task_combo.addItem(f"{task.name}  ({task.modality}{', licence' if task.licensed else ''})")
    task_combo.setCurrentIndex(0)
    roi = find(QListWidget, "roiSubsetListWidget")
    for name in list(all_tasks()["total"].class_names)[:12]:
        item = QListWidgetItem(name)
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        item.setCheckState(Qt.Checked if name in ("liver", "spleen") else Qt.Unchecked)
        roi.addItem(item)
    find(QLabel, "roiSubsetSummaryLabel").setText("2 selected")
    find(QComboBox, "deviceComboBox").addItem("auto (GPU if available)")
    find(QWidget, "remoteServerGroupBox").setVisible(False)
    find(QLineEdit, "weightsFolderPathLineEdit").setText("~/.totalsegmentator/nnunet/results")
    find(QLabel, "weightsStatusLabel").setText("installed")
    find(QLabel, "dependenciesStatusLabel").setText("all installed")
    apply_button = find(QPushButton, "applyButton")
    apply_button.setText("Cancel")
    apply_button.setEnabled(True)
    find(QProgressBar, "progressBar").setValue(64)
    find(QLabel, "elapsedTimeLabel").setText("41 s")
    find(QLabel, "statusLabel").setText("Predicting total (model 1 of 1)")
    find(QPlainTextEdit, "logTextEdit").setPlainText(
        "Rough segmentation with 'total' to find the region\nResampling to (1.5, 1.5, 1.5) mm\nLoading model 291")


def fill_remote(panel) -> None:
    """Show the panel as during a run on a remote server, waiting in its queue."""
    from PySide6.QtWidgets import QComboBox, QLabel, QLineEdit, QPlainTextEdit, QProgressBar, QWidget
    from totalseg_slicer.remote import token_storage_note

    def find(cls, name):
        return panel.findChild(cls, name)

    device = find(QComboBox, "deviceComboBox")
    device.clear()
    device.addItem("Remote server")
    find(QWidget, "remoteServerGroupBox").setVisible(True)
    find(QLineEdit, "remoteUrlLineEdit").setText("https://segment.radiology.example.org")
    find(QLineEdit, "remoteTokenLineEdit").setText("a-token-from-the-administrator")
    find(QLabel, "remoteTokenNoteLabel").setText(token_storage_note("~/.config/slicer.org/Slicer.ini"))
    find(QLabel, "remoteStatusLabel").setText(
        "Connected: TotalSegmentator server 0.1.0 on cuda:0, cuda:1; 14 task(s) installed (total, total_mr, ...); "
        "1 job(s) waiting, 2 running.")
    find(QProgressBar, "progressBar").setValue(0)
    find(QLabel, "elapsedTimeLabel").setText("3 s")
    find(QLabel, "statusLabel").setText("Waiting on the server: 1 job ahead")
    find(QPlainTextEdit, "logTextEdit").setPlainText(
        "Job 8c1f… accepted by https://segment.radiology.example.org/\nWaiting on the server: 1 job ahead")


def main() -> None:
    import tempfile

    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QWidget

    arguments = [arg for arg in sys.argv[1:] if arg != "--remote"]
    out = Path(arguments[0] if arguments else ROOT / "Resources" / "Screenshots" / "panel.png")
    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as folder:
        ui_path = Path(folder) / "panel.ui"
        ui_path.write_bytes(plain_ui(ROOT / "TotalSegmentator" / "Resources" / "UI" / "TotalSegmentator.ui"))
        ui_file = QFile(str(ui_path))
        ui_file.open(QIODevice.ReadOnly)
        loader = QUiLoader()
        panel = loader.load(ui_file, None)
        ui_file.close()
    fill(panel)
    if "--remote" in sys.argv:
        panel.findChild(QWidget, "advancedCollapsibleButton").setVisible(True)
        fill_remote(panel)
    panel.resize(440, 1180 if "--remote" in sys.argv else 860)
    panel.show()
    app.processEvents()
    out.parent.mkdir(parents=True, exist_ok=True)
    panel.grab().save(str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
