"""One SegmentationRequest from every front end: every field round-trips through the child's command line (the real
CLI parser) and through JSON (what a remote client sends), and malformed requests are refused with their name."""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from totalseg_batch import cli as batch_cli
from totalseg_engine import InvalidOptionError, SegmentationRequest, all_tasks, engine_command
from totalseg_engine.cli import main as cli
from totalseg_engine.request import (
    MODEL_SIZES,
    OUTPUT_TYPES,
    OVERWRITE_POLICIES,
    RESAMPLING_ORDERS,
    RUNTIMES,
    SMALL_MODEL_TASK,
    SPEEDS,
    STATISTIC_AGGREGATIONS,
    request_fields,
)

WORDS = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=14)
FIELD_VALUES = {
    "task": st.sampled_from(sorted(all_tasks())),
    "speed": st.sampled_from(SPEEDS),
    "roi_subset": st.lists(WORDS, max_size=4).map(tuple),
    "robust_crop": st.booleans(),
    "body_seg": st.booleans(),
    "force_split": st.booleans(),
    "remove_small_blobs": st.none() | st.floats(min_value=1e-3, max_value=1e7, allow_nan=False),
    "higher_order_resampling": st.booleans(),
    "higher_order_resampling_legacy": st.booleans(),
    "resampling_order": st.sampled_from(RESAMPLING_ORDERS),
    "statistics": st.booleans(),
    "stats_include_incomplete": st.booleans(),
    "stats_aggregation": st.sampled_from(STATISTIC_AGGREGATIONS),
    "statistics_extra": st.booleans(),
    "statistics_normalized_intensities": st.booleans(),
    "radiomics": st.booleans(),
    "device": st.sampled_from(["gpu", "cpu", "auto", "mps", "gpu:1", "cuda:0"]),
    "runtime": st.sampled_from(RUNTIMES),
    "download": st.booleans(),
    "license_number": st.none() | WORDS,
    "model_size": st.sampled_from(MODEL_SIZES),
    "output_types": st.lists(st.sampled_from(OUTPUT_TYPES), min_size=1, max_size=4, unique=True).map(tuple),
    "multilabel": st.booleans(),
    "save_lowres": st.booleans(),
    "skip_saving": st.booleans(),
    "v1_order": st.booleans(),
    "preview": st.booleans(),
    "derived_masks": st.booleans(),
    "overwrite": st.sampled_from(OVERWRITE_POLICIES),
}
"""A strategy for every field: a new field without one fails test_every_field_is_drawn."""


@st.composite
def requests(draw) -> SegmentationRequest:
    """Any valid request: the combinations the official refuses (and so do we) are drawn away, not filtered."""
    values = {name: draw(strategy) for name, strategy in FIELD_VALUES.items()}
    if values["model_size"] == "small":
        values["task"] = SMALL_MODEL_TASK
    if values["save_lowres"]:
        values["speed"] = draw(st.sampled_from(("fast", "fastest")))
        values["output_types"] = tuple(kind for kind in values["output_types"] if not kind.startswith("dicom")) \
            or ("nifti",)
    if values["radiomics"]:
        values["multilabel"] = False
    return SegmentationRequest(**values)


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_field_is_drawn():
    assert [item.name for item in request_fields()] == list(FIELD_VALUES)


@PROPERTY
@given(requests())
def test_the_childs_command_line_gives_the_request_back(request: SegmentationRequest):
    argv = engine_command("ct.nii.gz", "out", request, python="python")
    args, parsed = cli.parse(argv[3:])
    assert parsed == request
    assert (args.input, args.output, args.progress_json) == (Path("ct.nii.gz").absolute(), Path("out").absolute(), True)


@PROPERTY
@given(requests())
def test_json_gives_the_request_back(request: SegmentationRequest):
    sent = json.loads(json.dumps(request.to_json(secrets=True)))
    assert SegmentationRequest.from_json(sent) == request
    assert SegmentationRequest.from_json(request.to_json()) == dataclasses.replace(request, license_number=None)


def test_defaults_are_the_official_tools_and_write_nothing_on_the_command_line():
    request = SegmentationRequest()
    assert request.to_argv() == []
    assert cli.parse(["-i", "ct.nii.gz", "-o", "out"])[1] == request
    assert (request.task, request.speed, request.device, request.output_types) == ("total", "normal", "gpu",
                                                                                     ("nifti",))


def test_the_licence_key_stays_out_of_records_and_reprs():
    request = SegmentationRequest(license_number="aca_SECRET123")
    assert "aca_SECRET123" not in repr(request) and "license_number" not in request.to_json()
    assert request.to_json(secrets=True)["license_number"] == "aca_SECRET123"


def test_every_request_flag_is_one_option_of_the_commands():
    """The option list is written once: the parsers of TotalSegmentator and totalseg_batch hold the request's
    flags, each under every name, and nothing else but their own options and the official ones they refuse."""
    flags = {name for item in request_fields() for name in item.metadata["flag"].names}
    single = cli.build_parser()._option_string_actions
    assert flags <= set(single)
    cohort = batch_cli.build_parser()._option_string_actions
    assert flags - {"--overwrite", "--no-overwrite"} <= set(cohort)
    for item in request_fields():
        names = item.metadata["flag"].names
        assert len({id(single[name]) for name in names}) == (1 if item.metadata["flag"].kind != "choice" else
                                                              len(set(item.metadata["flag"].by_flag.values())))


@pytest.mark.parametrize("values, message", [
    ({"speed": "quick"}, "Unknown speed 'quick'"),
    ({"output_types": ["png"]}, "invalid output type"),
    ({"output_types": []}, "invalid output type"),
    ({"runtime": "tensorrt"}, "Unknown runtime"),
    ({"stats_aggregation": "max"}, "Unknown stats_aggregation"),
    ({"overwrite": "sometimes"}, "Unknown overwrite"),
    ({"remove_small_blobs": -5}, "positive size"),
    ({"remove_small_blobs": 0}, "positive size"),
    ({"roi_subset": "liver"}, "list of class names"),
    ({"task": "total", "model_size": "small"}, "model_size 'small' is only available for task 'total_v3'"),
    ({"resampling_order": 7}, "resampling_order must be between 0 and 5"),
    ({"save_lowres": True}, "save_lowres only works together with fast or fastest"),
    ({"save_lowres": True, "speed": "fast", "output_types": ["dicom_seg"]}, "save_lowres writes NIfTI"),
    ({"radiomics": True, "multilabel": True}, "radiomics needs the class-file output"),
])
def test_a_malformed_request_is_refused_with_what_is_wrong(values, message):
    with pytest.raises(InvalidOptionError, match=message):
        SegmentationRequest(**values)


def test_bool_and_size_shorthands_are_normalised():
    assert SegmentationRequest(remove_small_blobs=True).remove_small_blobs == 200.0
    assert SegmentationRequest(remove_small_blobs=False).remove_small_blobs is None
    request = SegmentationRequest(roi_subset=["liver"], output_types="nifti,dicom")
    assert request.roi_subset == ("liver",) and request.output_types == ("nifti", "dicom_rtstruct")


@pytest.mark.parametrize("data, message", [
    ({"bogus": 1}, "Unknown request field\\(s\\) bogus"),
    ({"speed": 3}, "speed: expected a string, got number 3"),
    ({"statistics": "yes"}, "statistics: expected true or false, got string"),
    ({"statistics": 1}, "statistics: expected true or false, got number"),
    ({"roi_subset": "liver"}, "roi_subset: expected a list of strings, got string"),
    ({"roi_subset": [1, 2]}, "roi_subset: expected a list of strings"),
    ({"remove_small_blobs": "200"}, "remove_small_blobs: expected a number, got string"),
    ({"remove_small_blobs": True}, "remove_small_blobs: expected a number, got boolean"),
    ({"task": None}, "task: expected a string, got null"),
    ({"speed": "quick"}, "Unknown speed"),
])
def test_json_that_is_not_a_request_is_refused_by_field(data, message):
    with pytest.raises(InvalidOptionError, match=message):
        SegmentationRequest.from_json(data)


@pytest.mark.parametrize("data", [[], "total", 3, None])
def test_json_that_is_not_an_object_is_refused(data):
    with pytest.raises(InvalidOptionError, match="JSON object"):
        SegmentationRequest.from_json(data)


@pytest.mark.parametrize("argv, named", [
    (["-ot", "png"], "-ot/--output_type"),
    (["-rmb", "-3"], "-rmb/--remove_small_blobs"),
    (["-sa", "max"], "-sa/--stats_aggregation"),
    (["--runtime", "tensorrt"], "--runtime"),
])
def test_a_bad_flag_value_is_a_usage_error_naming_the_flag(argv, named, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse(["-i", "ct.nii.gz", "-o", "out", *argv])
    assert stopped.value.code == 2 and named in capsys.readouterr().err
