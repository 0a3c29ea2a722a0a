"""The engine's per-class statistics (``{class: {"volume": mm3, "intensity": mean}}``) as a table node.

Columns are typed (a string column for names, double columns for numbers) so Slicer sorts them
numerically, plots them and saves them with their types; units sit in the column properties as well as
in the titles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import slicer
import vtk

SEGMENT_COLUMN = "Segment"
VOLUME_MM3_COLUMN = "Volume [mm3]"
VOLUME_ML_COLUMN = "Volume [mL]"
INTENSITY_COLUMN = "Mean intensity"

_UNITS = {VOLUME_MM3_COLUMN: "mm3", VOLUME_ML_COLUMN: "mL"}
_DESCRIPTIONS = {
    SEGMENT_COLUMN: "Segment name",
    VOLUME_MM3_COLUMN: "Segment volume (voxel count times voxel volume)",
    VOLUME_ML_COLUMN: "Segment volume",
    INTENSITY_COLUMN: "Mean image intensity inside the segment (0 when the class is empty or cut by the image border)",
}


def _string_column(name: str, values: Sequence[str]) -> vtk.vtkStringArray:
    column = vtk.vtkStringArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue(value)
    return column


def _double_column(name: str, values: Sequence[float]) -> vtk.vtkDoubleArray:
    column = vtk.vtkDoubleArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue(float(value))
    return column


def _columns(stats: Mapping[str, Mapping[str, float]], display_names: Mapping[str, str]) -> list[vtk.vtkAbstractArray]:
    classes = list(stats)
    volumes = [float(stats[name]["volume"]) for name in classes]
    return [
        _string_column(SEGMENT_COLUMN, [display_names.get(name, name) for name in classes]),
        _double_column(VOLUME_MM3_COLUMN, volumes),
        _double_column(VOLUME_ML_COLUMN, [volume / 1000.0 for volume in volumes]),
        _double_column(INTENSITY_COLUMN, [float(stats[name]["intensity"]) for name in classes]),
    ]


def statistics_to_table(scene: slicer.vtkMRMLScene, stats: Mapping[str, Mapping[str, float]],
                        table_node: Optional[slicer.vtkMRMLTableNode] = None,
                        display_names: Optional[Mapping[str, str]] = None) -> slicer.vtkMRMLTableNode:
    """Fill ``table_node`` (a new one in ``scene`` if None) with one row per class, in ``stats`` order.

    Any previous content of the table is replaced. ``display_names`` maps class names to the segment
    names shown (classes missing from it keep their class name).
    """
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", "TotalSegmentator statistics")
    was_modifying = table_node.StartModify()
    try:
        table_node.RemoveAllColumns()
        for column in _columns(stats, display_names or {}):
            table_node.AddColumn(column)
            name = column.GetName()
            table_node.SetColumnDescription(name, _DESCRIPTIONS[name])
            if name in _UNITS:
                table_node.SetColumnUnitLabel(name, _UNITS[name])
    finally:
        table_node.EndModify(was_modifying)
    return table_node
