"""Convert the facts extracted from TotalSegmentator 2.18.0 into the engine's task registry.

The reference file mirrors TotalSegmentator's Python dictionaries (defaults, sub-modes,
part-model maps). The engine wants every task/mode fully resolved so that the pipeline
never needs to merge defaults or branch on task names. Run:

    python tools/build_task_registry.py ../shared/reference/totalsegmentator-2.18.0-registry.json

and commit the regenerated ``TotalSegmentator/totalseg_engine/data/tasks.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parents[1] / "TotalSegmentator" / "totalseg_engine" / "data" / "tasks.json"

# Keys of a task config that describe the model run (the rest are task-level facts).
MODE_KEYS = ("task_id", "resample", "trainer", "model", "folds", "plans")

# Multi-model tasks: which reference tables map a dataset id to its part class map.
PART_TABLES = {
    "total": ("class_map_5_parts", "map_taskid_to_partname_ct"),
    "total_v3": ("class_map_5_parts_total_v3", "map_taskid_to_partname_ct_v3"),
    "total_mr": ("class_map_parts_mr", "map_taskid_to_partname_mr"),
    "headneck_muscles": ("class_map_parts_headneck_muscles", "map_taskid_to_partname_headneck_muscles"),
}

# Facts the official keeps in code rather than in its task table: vertebrae_pp_refined trims the
# vertebrae_pp prediction with the vertebral-body model's mask (python_api.py / nnunet.py).
REFINEMENTS = {"vertebrae_pp_refined": {"refine_with": "vertebrae_body", "refine_dilation_mm": 2.0}}

# The version 1 class order (-v1o) exists for task total only: nnunet.py picks class_map["total_v1"] there.
V1_ORDERS = {"total": "total_v1"}
# The smaller models (-ms small) exist for task total_v3 only, under other plans (python_api.py get_task_config).
SMALL_PLANS = {"total_v3": "nnUNetResEncUNetLPlans_8"}

MODE_NAMES = {"default": "normal", "fast": "fast", "fastest": "fastest"}


def _spacing(value: Any) -> list[float] | None:
    """Task spacing as x, y, z in mm (TotalSegmentator allows a scalar for isotropic)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return [float(value)] * 3
    return [float(v) for v in value]


def _models(ref: dict, task: str, task_ids: Any) -> list[dict]:
    """One entry per nnU-Net dataset, with its own label map for multi-model tasks."""
    ids = task_ids if isinstance(task_ids, list) else [task_ids]
    models = []
    for dataset_id in ids:
        model: dict[str, Any] = {"dataset_id": int(dataset_id)}
        if len(ids) > 1 and task in PART_TABLES:
            parts_table, id_table = PART_TABLES[task]
            part_name = ref[id_table][str(dataset_id)]
            model["part"] = part_name
            model["classes"] = {str(k): v for k, v in ref[parts_table][part_name].items()}
        models.append(model)
    return models


def _mode(ref: dict, task: str, raw: dict, defaults: dict) -> dict:
    merged = {**defaults, **{k: v for k, v in raw.items() if k in MODE_KEYS}}
    return {
        "models": _models(ref, task, merged["task_id"]),
        "trainer": merged["trainer"],
        "plans": merged["plans"] or "nnUNetPlans",
        "configuration": merged["model"],
        "folds": merged["folds"],
        "spacing": _spacing(merged.get("resample")),
    }


def convert(ref: dict) -> dict:
    defaults = ref["default_config"]
    tasks = {}
    for name, raw in ref["task_configs"].items():
        facts = ref["tasks"][name]
        sub_modes = raw.get("sub_modes") or {"default": raw}
        crop = raw.get("crop")
        task = {
            "modality": facts["modality"],
            "licensed": bool(facts["requires_license"]),
            "classes": {str(k): v for k, v in ref["class_map"][name].items()},
            "modes": {MODE_NAMES[m]: _mode(ref, name, cfg, defaults) for m, cfg in sub_modes.items()},
            "crop": [crop] if isinstance(crop, str) else crop,
            "crop_margin_mm": [float(v) for v in raw.get("crop_addon", defaults["crop_addon"])],
            "crop_model": raw.get("crop_model"),
            "robust_crop": bool(raw.get("robust_crop", False)),
            "fast_allowed": not raw.get("disallow_fast", False),
            "remove_outside": raw.get("remove_outside"),
            "remove_outside_dilation_mm": raw.get("remove_outside_dilation"),
            "info": (raw.get("info_msg") or "").strip() or None,
            "refine_with": None,
            "refine_dilation_mm": None,
            "v1_classes": ({str(k): v for k, v in ref["class_map"][V1_ORDERS[name]].items()}
                           if name in V1_ORDERS else None),
            "small_plans": SMALL_PLANS.get(name),
            **REFINEMENTS.get(name, {}),
        }
        tasks[name] = task
    datasets = {}
    for key, info in ref["weights"].items():
        if not key.isdigit():
            continue  # body-statistics regressors, not nnU-Net datasets
        version = info.get("version")
        datasets[key] = {
            "folder": info["foldername"],
            "release": None if version in (None, "TODO") else version,
            "licensed": int(key) in set(ref["commercial_models"].values()),
        }
    for task in tasks.values():  # datasets a task names but the release table lacks (e.g. "test")
        for mode in task["modes"].values():
            for model in mode["models"]:
                datasets.setdefault(str(model["dataset_id"]), {"folder": None, "release": None, "licensed": False})
    # The name the official client sends for a licensed dataset: it inverts commercial_models, so where two
    # tasks share a dataset (857: thigh_shoulder_muscles and thigh_shoulder_muscles_mr) the last one wins.
    licensed_names = {str(dataset_id): task_name for task_name, dataset_id in ref["commercial_models"].items()}
    return {
        "source": ref["source"],
        "release_url": ref["weights_base_url"].replace("{foldername}", "{folder}"),
        "license_url": "https://backend.totalsegmentator.com:443/download_weights",
        "license_check_url": "https://backend.totalsegmentator.com:443/is_valid_license_number",
        "licensed_download_names": licensed_names,
        "auxiliary_classes": {k: v for k, v in ref["class_map"].items() if k.endswith("_auxiliary")},
        "datasets": datasets,
        "tasks": tasks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    registry = convert(json.loads(args.reference.read_text()))
    args.output.write_text(json.dumps(registry, indent=1) + "\n")
    print(f"wrote {len(registry['tasks'])} tasks to {args.output}")


if __name__ == "__main__":
    main()
