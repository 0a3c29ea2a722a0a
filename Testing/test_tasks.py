"""The task registry: generated faithfully from the 2.18.0 facts, well-formed, and resolved as the official does."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
from totalseg_engine import tasks
from totalseg_engine.errors import UnknownTaskError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "TotalSegmentator" / "totalseg_engine" / "data"
REFERENCE = ROOT.parent / "shared" / "reference" / "totalsegmentator-2.18.0-registry.json"
MULTI_MODEL_TASKS = ("total", "total_v3", "total_mr", "headneck_muscles")


@pytest.fixture(scope="module")
def reference() -> dict:
    if not REFERENCE.is_file():
        pytest.skip(f"reference facts {REFERENCE} are missing; cannot compare the registry with "
                    "TotalSegmentator 2.18.0")
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads((DATA / "tasks.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((DATA / "tasks.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _builder():
    spec = importlib.util.spec_from_file_location("build_task_registry", ROOT / "tools" / "build_task_registry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- (a) generated, not hand-edited


def test_shipped_registry_is_what_the_builder_produces(reference, shipped):
    built = _builder().convert(reference)
    assert list(built["tasks"]) == list(shipped["tasks"])  # registry order is the official task order
    for name in built["tasks"]:
        assert shipped["tasks"][name] == built["tasks"][name], f"task {name} differs from the builder's output"
    assert shipped == built, "regenerate data/tasks.json with tools/build_task_registry.py"


def test_builder_output_is_valid_json_text(reference, shipped):
    text = json.dumps(_builder().convert(reference), indent=1) + "\n"
    assert json.loads(text) == shipped


# ---------------------------------------------------------------- (b) schema


def test_registry_validates_against_schema(validator, shipped):
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(shipped)]
    assert errors == []


@pytest.mark.parametrize("mutate", [
    lambda d: d["tasks"]["total"]["modes"].pop("normal"),
    lambda d: d["tasks"]["liver_segments"].__setitem__("modality", "PET"),
    lambda d: d["tasks"]["total"]["modes"]["fast"].__setitem__("spacing", [3.0, 3.0]),
    lambda d: d["tasks"]["total"]["modes"]["normal"]["models"][0].pop("classes"),
    lambda d: d["tasks"]["teeth"].__setitem__("crop", None),
    lambda d: d["datasets"].__setitem__("abc", {"folder": None, "release": None, "licensed": False}),
    lambda d: d["tasks"]["liver_segments"].__setitem__("unexpected_key", 1),
], ids=["no-normal-mode", "bad-modality", "2d-spacing", "part-without-classes", "crop-model-without-crop",
        "non-numeric-dataset", "unknown-key"])
def test_schema_rejects_malformed_registries(validator, shipped, mutate):
    broken = copy.deepcopy(shipped)
    mutate(broken)
    assert not validator.is_valid(broken)


# ---------------------------------------------------------------- (c) loading and consistency


def test_all_53_tasks_load(reference):
    loaded = tasks.all_tasks()
    assert len(loaded) == 53
    assert list(loaded) == list(reference["task_configs"])
    for name, task in loaded.items():
        assert task.name == name
        assert "normal" in task.modes and task.classes


def test_every_mode_model_has_a_dataset_entry(shipped):
    for name, task in tasks.all_tasks().items():
        for mode in task.modes.values():
            for model in mode.models:
                assert str(model.dataset_id) in shipped["datasets"], (name, model.dataset_id)
                assert tasks.dataset_spec(model.dataset_id)["licensed"] == model.licensed


@pytest.mark.parametrize("name", MULTI_MODEL_TASKS)
def test_multi_model_parts_cover_exactly_the_task_classes(name):
    task = tasks.get_task(name)
    models = task.modes["normal"].models
    assert task.is_multi_model and len(models) > 1
    names = [n for model in models for n in model.classes.values()]
    assert len(names) == len(set(names)), "a class is predicted by two parts"
    assert set(names) == set(task.class_names)


def test_only_the_four_multi_model_tasks_have_parts():
    multi = {name for name, task in tasks.all_tasks().items()
             if any(len(mode.models) > 1 for mode in task.modes.values())}
    assert multi == set(MULTI_MODEL_TASKS)
    for name, task in tasks.all_tasks().items():
        for speed, mode in task.modes.items():
            if len(mode.models) == 1:
                assert mode.models[0].classes is None, (name, speed)


def test_licensed_flags_match_commercial_models(reference):
    commercial = reference["commercial_models"]
    licensed_tasks = {name for name, task in tasks.all_tasks().items() if task.licensed}
    assert licensed_tasks == set(commercial)
    for name, task in tasks.all_tasks().items():
        ids = {model.dataset_id for mode in task.modes.values() for model in mode.models}
        if task.licensed:
            assert ids == {commercial[name]}
        flags = {model.licensed for mode in task.modes.values() for model in mode.models}
        assert flags == {task.licensed}, name
    licensed_ids = {int(k) for k, v in tasks.registry_data()["datasets"].items() if v["licensed"]}
    assert licensed_ids == set(commercial.values())


def test_crop_rules_refer_to_known_tasks_and_classes():
    all_tasks = tasks.all_tasks()
    total = all_tasks["total"]
    for name, task in all_tasks.items():
        if task.crop_model:
            assert task.crop_model in all_tasks
            all_tasks[task.crop_model].check_classes(task.crop)
        elif task.crop and name != "test":  # the official's own "test" task crops with a class total lacks
            source = all_tasks["body"] if set(task.crop) & {"body_trunc", "body_extremities"} else (
                all_tasks["total_mr"] if task.modality == "MR" else total)
            source.check_classes(task.crop)
        if task.remove_outside:
            assert task.crop and task.remove_outside_dilation_mm
            total.check_classes(task.remove_outside)
        if task.refine_with:
            assert task.refine_with in all_tasks and task.refine_dilation_mm


def test_registry_facts_of_well_known_tasks():
    total = tasks.get_task("total")
    assert [m.dataset_id for m in total.modes["normal"].models] == [291, 292, 293, 294, 295]
    assert total.modes["fast"].models[0].dataset_id == 297 and total.modes["fast"].spacing == (3.0, 3.0, 3.0)
    assert total.modes["fastest"].models[0].dataset_id == 298 and total.modes["fastest"].spacing == (6.0, 6.0, 6.0)
    teeth = tasks.get_task("teeth")
    assert teeth.crop_model == "craniofacial_structures" and teeth.crop_margin_mm == (10.0, 10.0, 10.0)
    assert teeth.crop == ("teeth_lower", "teeth_upper")
    heart = tasks.get_task("heartchambers_highres")
    assert heart.robust_crop and heart.remove_outside == ("heart", "aorta", "inferior_vena_cava")
    assert heart.remove_outside_dilation_mm == 10
    refined = tasks.get_task("vertebrae_pp_refined")
    assert refined.refine_with == "vertebrae_body" and refined.refine_dilation_mm == 2.0
    assert tasks.get_task("appendicular_bones").auxiliary_labels == frozenset({12, 13, 14, 15})


# ---------------------------------------------------------------- speed fallbacks (official get_task_config)


@pytest.mark.parametrize("name", ["total", "total_v3", "total_mr"])
def test_speed_modes_resolve_to_their_own_models(name):
    task = tasks.get_task(name)
    for speed in ("normal", "fast", "fastest"):
        assert task.mode(speed) is task.modes[speed]


@pytest.mark.parametrize("name", ["body", "body_mr"])
def test_fastest_falls_back_to_fast_without_a_fastest_model(name):
    task = tasks.get_task(name)
    assert "fastest" not in task.modes
    assert task.mode("fastest") is task.modes["fast"]
    assert task.mode("fast") is task.modes["fast"]
    assert task.mode("normal") is task.modes["normal"]


def test_fast_is_refused_for_tasks_that_disallow_it():
    disallowing = [t for t in tasks.all_tasks().values() if not t.fast_allowed]
    assert len(disallowing) > 30
    for task in disallowing:
        assert task.speeds == ("normal",)
        with pytest.raises(UnknownTaskError, match=task.name):
            task.mode("fast")


def test_fast_is_ignored_for_single_mode_tasks_that_allow_it():
    allowing = [t for t in tasks.all_tasks().values() if t.fast_allowed and t.speeds == ("normal",)]
    assert {t.name for t in allowing} >= {"lung_vessels", "vertebrae_mr"}
    for task in allowing:
        assert task.mode("fast") is task.modes["normal"]
        assert task.mode("fastest") is task.modes["normal"]


def test_fastest_is_ignored_even_for_tasks_that_disallow_fast():
    task = tasks.get_task("liver_segments")
    assert not task.fast_allowed
    assert task.mode("fastest") is task.modes["normal"]


def test_unknown_speed_lists_the_valid_speeds():
    with pytest.raises(UnknownTaskError, match="normal, fast, fastest"):
        tasks.get_task("total").mode("slow")


# ---------------------------------------------------------------- unknown names


def test_unknown_task_suggests_a_close_match_and_lists_valid_names():
    with pytest.raises(UnknownTaskError) as err:
        tasks.get_task("liver_segmnts")
    message = str(err.value)
    assert "'liver_segmnts'" in message
    assert "Did you mean: liver_segments" in message
    assert all(name in message for name in tasks.all_tasks())


def test_unknown_class_suggests_a_close_match_and_lists_valid_names():
    total = tasks.get_task("total")
    with pytest.raises(UnknownTaskError) as err:
        total.check_classes(["liver", "spleeen"])
    message = str(err.value)
    assert "'spleeen'" in message and "task 'total'" in message
    assert "Did you mean: spleen" in message
    assert all(name in message for name in total.class_names)


def test_unknown_name_without_close_match_gives_no_suggestion():
    with pytest.raises(UnknownTaskError) as err:
        tasks.get_task("zzzzzzzz")
    assert "Did you mean" not in str(err.value)
    assert "total" in str(err.value)


def test_unknown_dataset_id_is_reported():
    with pytest.raises(UnknownTaskError, match="12345"):
        tasks.dataset_spec(12345)
