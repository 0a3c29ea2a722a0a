"""The task registry: every TotalSegmentator task, its models and classes, loaded from data.

``data/tasks.json`` is generated from the facts of TotalSegmentator 2.18.0 by
``tools/build_task_registry.py``; nothing here branches on a task's name.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Optional

from .errors import UnknownTaskError

SPEEDS = ("normal", "fast", "fastest")


@dataclass(frozen=True)
class ModelSpec:
    """One nnU-Net model: a dataset folder in the release layout and the labels it predicts."""

    dataset_id: int
    folder: Optional[str]
    release: Optional[str]
    licensed: bool
    trainer: str
    plans: str
    configuration: str
    folds: Optional[tuple[int, ...]]
    part: Optional[str] = None
    classes: Optional[dict[int, str]] = None

    @property
    def result_subfolder(self) -> str:
        """``Trainer__Plans__configuration``, the nnU-Net results sub-folder."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"


@dataclass(frozen=True)
class Mode:
    """A task's resolved speed mode: which models run at which spacing (x, y, z in mm)."""

    name: str
    models: tuple[ModelSpec, ...]
    spacing: Optional[tuple[float, float, float]]


@dataclass(frozen=True)
class Task:
    name: str
    modality: str
    licensed: bool
    classes: dict[int, str]
    modes: dict[str, Mode]
    crop: Optional[tuple[str, ...]] = None
    crop_margin_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    crop_model: Optional[str] = None
    robust_crop: bool = False
    fast_allowed: bool = True
    remove_outside: Optional[tuple[str, ...]] = None
    remove_outside_dilation_mm: Optional[float] = None
    info: Optional[str] = None
    refine_with: Optional[str] = None
    refine_dilation_mm: Optional[float] = None
    auxiliary_labels: frozenset[int] = field(default_factory=frozenset)
    v1_classes: Optional[dict[int, str]] = None  # the version 1 class order (-v1o), where the task has one
    small_plans: Optional[str] = None  # the plans of the smaller models (-ms small), where the task has them

    @property
    def speeds(self) -> tuple[str, ...]:
        return tuple(s for s in SPEEDS if s in self.modes)

    @property
    def is_multi_model(self) -> bool:
        return len(self.modes["normal"].models) > 1

    @property
    def class_names(self) -> list[str]:
        return list(self.classes.values())

    def label_of(self, class_name: str) -> int:
        """Label id of a class name (raises UnknownTaskError with the valid names)."""
        for label, name in self.classes.items():
            if name == class_name:
                return label
        raise UnknownTaskError(_unknown_message("class", class_name, self.class_names, f"task '{self.name}'"))

    def mode(self, speed: str = "normal") -> Mode:
        """The mode to run for a requested speed, with the official fallbacks.

        ``fastest`` falls back to ``fast`` where a task has no fastest model; tasks without
        speed modes refuse ``fast`` when the registry disallows it and otherwise ignore it.
        """
        if speed not in SPEEDS:
            raise UnknownTaskError(f"Unknown speed '{speed}'. Valid speeds: {', '.join(SPEEDS)}.")
        if speed in self.modes:
            return self.modes[speed]
        if len(self.modes) > 1:
            return self.modes["fast"]
        if speed == "fast" and not self.fast_allowed:  # the official ignores --fastest here
            raise UnknownTaskError(f"Task '{self.name}' has no fast mode; run it without --fast.")
        return self.modes["normal"]

    def sized_mode(self, speed: str = "normal", model_size: str = "big") -> Mode:
        """:meth:`mode`, with the smaller models' plans for ``model_size`` "small" (only where the task has them)."""
        mode = self.mode(speed)
        if model_size == "big":
            return mode
        if self.small_plans is None:
            raise UnknownTaskError(f"Task '{self.name}' has no small models; run it without --model_size small.")
        return replace(mode, models=tuple(replace(model, plans=self.small_plans) for model in mode.models))

    def check_classes(self, names: Iterable[str]) -> list[str]:
        """Validate class names against this task; returns them as a list."""
        names = list(names)
        for name in names:
            self.label_of(name)
        return names


def _unknown_message(kind: str, value: str, valid: list[str], where: str = "") -> str:
    close = difflib.get_close_matches(value, valid, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    place = f" in {where}" if where else ""
    return f"Unknown {kind} '{value}'{place}.{hint} Valid {kind} names: {', '.join(valid)}."


@lru_cache(maxsize=1)
def registry_data() -> dict[str, Any]:
    """The raw registry JSON shipped with the engine."""
    text = resources.files(__package__).joinpath("data", "tasks.json").read_text(encoding="utf-8")
    return json.loads(text)


def _int_keys(mapping: dict[str, str]) -> dict[int, str]:
    return {int(k): v for k, v in mapping.items()}


def _model(data: dict, mode: dict, entry: dict) -> ModelSpec:
    dataset = data["datasets"][str(entry["dataset_id"])]
    folds = mode["folds"]
    return ModelSpec(
        dataset_id=int(entry["dataset_id"]),
        folder=dataset["folder"],
        release=dataset["release"],
        licensed=bool(dataset["licensed"]),
        trainer=mode["trainer"],
        plans=mode["plans"],
        configuration=mode["configuration"],
        folds=None if folds is None else tuple(int(f) for f in folds),
        part=entry.get("part"),
        classes=_int_keys(entry["classes"]) if "classes" in entry else None,
    )


def _task(data: dict, name: str, raw: dict) -> Task:
    modes = {
        speed: Mode(
            name=speed,
            models=tuple(_model(data, mode, m) for m in mode["models"]),
            spacing=None if mode["spacing"] is None else tuple(mode["spacing"]),
        )
        for speed, mode in raw["modes"].items()
    }
    aux = data["auxiliary_classes"].get(f"{name}_auxiliary", {})
    return Task(
        name=name,
        modality=raw["modality"],
        licensed=raw["licensed"],
        classes=_int_keys(raw["classes"]),
        modes=modes,
        crop=tuple(raw["crop"]) if raw["crop"] else None,
        crop_margin_mm=tuple(raw["crop_margin_mm"]),
        crop_model=raw["crop_model"],
        robust_crop=raw["robust_crop"],
        fast_allowed=raw["fast_allowed"],
        remove_outside=tuple(raw["remove_outside"]) if raw["remove_outside"] else None,
        remove_outside_dilation_mm=raw["remove_outside_dilation_mm"],
        info=raw["info"],
        refine_with=raw["refine_with"],
        refine_dilation_mm=raw["refine_dilation_mm"],
        auxiliary_labels=frozenset(int(k) for k in aux),
        v1_classes=_int_keys(raw["v1_classes"]) if raw.get("v1_classes") else None,
        small_plans=raw.get("small_plans"),
    )


@lru_cache(maxsize=1)
def all_tasks() -> dict[str, Task]:
    """Every task of the registry by name, in registry order."""
    data = registry_data()
    return {name: _task(data, name, raw) for name, raw in data["tasks"].items()}


def get_task(name: str) -> Task:
    """Look up a task; an unknown name raises with the list of valid names."""
    tasks = all_tasks()
    if name not in tasks:
        raise UnknownTaskError(_unknown_message("task", name, list(tasks)))
    return tasks[name]


def dataset_spec(dataset_id: int) -> dict[str, Any]:
    """Release folder, version and licence flag of an nnU-Net dataset id."""
    try:
        return registry_data()["datasets"][str(int(dataset_id))]
    except KeyError as err:
        raise UnknownTaskError(f"No TotalSegmentator weights are known for dataset {dataset_id}.") from err


def models_of_task(name: str) -> list[ModelSpec]:
    """Every model a task may run in any mode (for downloading all of a task's weights)."""
    seen: dict[int, ModelSpec] = {}
    for mode in get_task(name).modes.values():
        for model in mode.models:
            seen.setdefault(model.dataset_id, model)
    return list(seen.values())


def users_of_dataset(dataset_id: int) -> list[tuple[str, ModelSpec]]:
    """Every (task name, model) of the registry that runs this nnU-Net dataset, in registry order."""
    return [(task.name, model) for task in all_tasks().values() for mode in task.modes.values()
            for model in mode.models if model.dataset_id == dataset_id]
