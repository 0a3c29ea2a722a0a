"""What the module panel shows, decided without Qt: the task list, the modality filter, speeds, ROI and Apply.

The widget copies these values onto its Qt widgets and nothing else, so every rule a user can see (which tasks
a filter lists, which task a filter change selects, which speeds are offered, what Apply says) is tested here
directly and again through the real widget.
"""

from __future__ import annotations

from dataclasses import dataclass

from totalseg_engine import SPEEDS, Task, all_tasks, get_task

ALL = "All"
FILTERS = (ALL, "CT", "MR")
ROI_TASKS = ("total", "total_mr")  # the official tool crops to a ROI subset for these two only
TOOLTIP_CLASSES = 25


@dataclass(frozen=True)
class TaskChoice:
    name: str
    label: str
    tooltip: str


@dataclass(frozen=True)
class ApplyButton:
    text: str
    enabled: bool
    tooltip: str


def tasks_for(modality_filter: str) -> list[Task]:
    """The tasks a filter lists, in registry order ("All" lists every task)."""
    return [task for task in all_tasks().values() if modality_filter not in ("CT", "MR")
            or task.modality == modality_filter]


def task_choices(modality_filter: str) -> list[TaskChoice]:
    """Task list entries: name, modality, licence mark, and a tooltip naming what the task segments."""
    return [TaskChoice(task.name, f"{task.name}  ({task.modality}{', licence' if task.licensed else ''})",
                       task_tooltip(task)) for task in tasks_for(modality_filter)]


def task_tooltip(task: Task) -> str:
    names = task.class_names
    listed = ", ".join(names[:TOOLTIP_CLASSES]) + (", ..." if len(names) > TOOLTIP_CLASSES else "")
    lines = [f"{task.name} ({task.modality}): {len(task.classes)} structures", listed]
    if task.licensed:
        lines.append("Needs a licence key (free for non-commercial use).")
    if task.info:
        lines.append(task.info)
    return "\n".join(lines)


def task_after_filter_change(modality_filter: str, current: str) -> str:
    """The task to show after the user picks a filter: the current one when listed, else its counterpart.

    ``total`` under "MR" becomes ``total_mr`` (and back under "CT"); a task with no counterpart gives the first
    task the filter lists.
    """
    listed = [task.name for task in tasks_for(modality_filter)]
    if current in listed:
        return current
    base = current[:-3] if current.endswith("_mr") else current
    for candidate in (f"{base}_mr", base):
        if candidate in listed:
            return candidate
    return listed[0]


def filter_showing(modality_filter: str, task: str) -> str:
    """The filter to show a task chosen elsewhere (a loaded scene, the console): kept when it lists the task."""
    return modality_filter if task in {t.name for t in tasks_for(modality_filter)} else ALL


def offered_speeds(task: str) -> dict[str, bool]:
    """Each speed button and whether the task has a model for it."""
    modes = get_task(task).modes
    return {speed: speed in modes for speed in SPEEDS}


def speed_for(task: str, speed: str) -> str:
    """The speed to keep when switching task: the chosen one if the task offers it, else normal."""
    return speed if offered_speeds(task).get(speed) else "normal"


def roi_supported(task: str) -> bool:
    return task in ROI_TASKS


def roi_summary(chosen: list[str]) -> str:
    return f"{len(chosen)} selected" if chosen else "All structures"


def roi_matches(needle: str, display_name: str, class_name: str) -> bool:
    """Whether a ROI list entry stays visible for the filter text (display or class name, any case)."""
    needle = needle.strip().lower()
    return not needle or needle in display_name.lower() or needle in class_name.lower()


def apply_button(running: bool, has_input: bool) -> ApplyButton:
    if running:
        return ApplyButton("Cancel", True, "Stop the segmentation; the output segmentation stays as it was.")
    if not has_input:
        return ApplyButton("Apply", False, "Select an input volume.")
    return ApplyButton("Apply", True, "Run the segmentation in the background.")
