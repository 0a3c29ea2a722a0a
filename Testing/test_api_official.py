"""``totalsegmentator()`` called as the official 2.18 function is: every keyword, in its order, with its meaning.

The official signature is written out below as data. Each keyword is either accepted with the same meaning
(checked on the :class:`SegmentationRequest` the API hands to ``pipeline.segment``, or on what is written),
ignored (a no-op here), or refused before any work with an error naming it; never a ``TypeError``. The
pipeline itself is replaced by a stand-in that records its options, so no model runs.
"""

from __future__ import annotations

import ast
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import nibabel as nib
import numpy as np
import pytest
from totalseg_engine import api, imageio
from totalseg_engine.core import pipeline
from totalseg_engine.errors import InvalidOptionError
from totalseg_engine.request import SegmentationRequest
from totalseg_engine.weights import licensing

REQUIRED = object()
OFFICIAL_SIGNATURE: list[tuple[str, Any]] = [
    ("input", REQUIRED), ("output", None), ("ml", False), ("nr_thr_resamp", 1), ("nr_thr_saving", 6),
    ("fast", False), ("nora_tag", "None"), ("preview", False), ("task", "total"), ("roi_subset", None),
    ("statistics", False), ("radiomics", False), ("crop_path", None), ("body_seg", False), ("force_split", False),
    ("output_type", "nifti"), ("quiet", False), ("verbose", False), ("test", 0), ("skip_saving", False),
    ("device", "gpu"), ("license_number", None), ("statistics_exclude_masks_at_border", True),
    ("no_derived_masks", False), ("v1_order", False), ("fastest", False), ("roi_subset_robust", None),
    ("stats_aggregation", "mean"), ("remove_small_blobs", False), ("statistics_normalized_intensities", False),
    ("robust_crop", False), ("higher_order_resampling_LEGACY", False), ("higher_order_resampling", False),
    ("save_probabilities", None), ("debug", False), ("report", None), ("statistics_extra", False),
    ("save_lowres", False), ("resampling_order", 1), ("plans", "nnUNetPlans"), ("model_size", "big"),
]
"""(name, default) of every parameter of the official 2.18 ``totalsegmentator()``, in its positional order."""

CLASSES = {1: "spleen", 2: "kidney_right", 5: "liver"}
API_DEFAULTS = SegmentationRequest(overwrite="never")  # the official API keeps existing outputs by default
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


class Row(NamedTuple):
    """One official keyword: its kind and a non-default value to call with."""

    kind: str  # "same" (Options as expected), "ignored" (Options as by default), "refused", "output"
    value: Any
    expected: Optional[dict] = None  # Options fields the value must produce ("same")


TABLE: dict[str, Row] = {
    "input": Row("output", None),
    "output": Row("output", None),
    "ml": Row("output", True),
    "nr_thr_resamp": Row("ignored", 4),
    "nr_thr_saving": Row("ignored", 1),
    "fast": Row("same", True, {"speed": "fast"}),
    "nora_tag": Row("ignored", "1234"),
    "preview": Row("output", True),
    "task": Row("same", "lung_vessels", {"task": "lung_vessels"}),
    "roi_subset": Row("same", ["liver"], {"roi_subset": ("liver",)}),
    "statistics": Row("same", True, {"statistics": True}),
    "radiomics": Row("output", True),
    "crop_path": Row("ignored", "/tmp/crop"),
    "body_seg": Row("same", True, {"body_seg": True}),
    "force_split": Row("same", True, {"force_split": True}),
    "output_type": Row("output", ["nifti", "seg_nrrd"]),
    "quiet": Row("ignored", True),
    "verbose": Row("ignored", True),
    "test": Row("ignored", 1),
    "skip_saving": Row("output", True),
    "device": Row("same", "cpu", {"device": "cpu"}),
    "license_number": Row("output", "aca_ABCDEFGHIJKLMN"),
    "statistics_exclude_masks_at_border": Row("same", False, {"stats_include_incomplete": True}),
    "no_derived_masks": Row("same", True, {"derived_masks": False}),
    "v1_order": Row("same", True, {"v1_order": True}),
    "fastest": Row("same", True, {"speed": "fastest"}),
    "roi_subset_robust": Row("same", ["liver"], {"roi_subset": ("liver",), "robust_crop": True}),
    "stats_aggregation": Row("same", "median", {"stats_aggregation": "median"}),
    "remove_small_blobs": Row("same", True, {"remove_small_blobs": 200.0}),
    "statistics_normalized_intensities": Row("same", True, {"statistics_normalized_intensities": True}),
    "robust_crop": Row("same", True, {"robust_crop": True}),
    "higher_order_resampling_LEGACY": Row("same", True, {"higher_order_resampling_legacy": True}),
    "higher_order_resampling": Row("same", True, {"higher_order_resampling": True}),
    "save_probabilities": Row("output", "/tmp/probabilities.npz"),  # checked with the official's files
    "debug": Row("ignored", True),
    "report": Row("output", "/tmp/report.json"),
    "statistics_extra": Row("same", True, {"statistics_extra": True}),
    "save_lowres": Row("output", True),  # with fast or fastest only: checked with them below
    "resampling_order": Row("same", 3, {"resampling_order": 3}),
    "plans": Row("ignored", "nnUNetResEncUNetLPlans"),
    "model_size": Row("refused", "small"),  # as the official, for every task but total_v3 (checked below)
}


def test_the_table_covers_every_official_keyword_in_order():
    assert list(TABLE) == [name for name, _ in OFFICIAL_SIGNATURE]
    assert len(OFFICIAL_SIGNATURE) == 41


def test_the_written_out_signature_is_the_official_one():
    """Checked against the official source where it is installed beside the project (never imported)."""
    found = sorted(Path(__file__).resolve().parents[1].glob(
        ".venv-official/lib/python3*/site-packages/totalsegmentator/python_api.py"))
    if not found:
        pytest.skip("the official TotalSegmentator is not installed beside the project")
    tree = ast.parse(found[0].read_text(encoding="utf-8"))
    [func] = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "totalsegmentator"]
    names = [arg.arg for arg in func.args.args]
    defaults = [REQUIRED] * (len(names) - len(func.args.defaults)) + [ast.literal_eval(d) for d in func.args.defaults]
    assert list(zip(names, defaults)) == OFFICIAL_SIGNATURE


def test_our_signature_has_the_official_parameters_first_in_order():
    import inspect

    params = list(inspect.signature(api.totalsegmentator).parameters.values())
    official = params[:len(OFFICIAL_SIGNATURE)]
    assert [(p.name, p.default if p.default is not p.empty else REQUIRED) for p in official] == OFFICIAL_SIGNATURE
    assert all(p.kind is p.KEYWORD_ONLY for p in params[len(OFFICIAL_SIGNATURE):])  # our own keywords


# ----------------------------------------------------------------------------------------------
# The pipeline stand-in


def ct() -> nib.Nifti1Image:
    data = np.full((12, 10, 8), -100.0)
    data[2:6, 2:6, 2:6] = 50.0
    return nib.Nifti1Image(data, AFFINE)


class Recorder:
    """Replaces ``pipeline.segment``: records the options, returns labels 1, 2 and 5 in three blocks."""

    def __init__(self) -> None:
        self.options: list[SegmentationRequest] = []

    def __call__(self, image, options: SegmentationRequest, *_args, **_kwargs) -> pipeline.Result:
        self.options.append(options)
        source = image if isinstance(image, nib.Nifti1Image) else nib.load(image)
        labels = np.zeros(source.shape, dtype=np.uint8)
        labels[2:6, 2:6, 2:6], labels[7:9, 2:4, 2:4], labels[2:4, 7:9, 2:4] = 5, 1, 2
        stats = {name: {"volume": 1.0, "intensity": 2.0} for name in CLASSES.values()} if options.statistics else None
        return pipeline.Result(pipeline.labels_image(labels, source), dict(CLASSES), stats)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(api.pipeline, "segment", rec)
    return rec


def options_of(recorder: Recorder, call: Callable[[], Any]) -> SegmentationRequest:
    call()
    [options] = recorder.options
    return options


# ----------------------------------------------------------------------------------------------
# Every keyword, by kind


def _rows(kind: str) -> list[tuple[str, Row]]:
    return [(name, row) for name, row in TABLE.items() if row.kind == kind]


@pytest.mark.parametrize(("name", "row"), _rows("same"), ids=[n for n, _ in _rows("same")])
def test_keyword_with_the_same_meaning(recorder: Recorder, name: str, row: Row) -> None:
    options = options_of(recorder, lambda: api.totalsegmentator(ct(), **{name: row.value}))
    for field, value in row.expected.items():
        assert getattr(options, field) == value, field


@pytest.mark.parametrize(("name", "row"), _rows("ignored"), ids=[n for n, _ in _rows("ignored")])
def test_keyword_without_effect_is_accepted(recorder: Recorder, name: str, row: Row) -> None:
    options = options_of(recorder, lambda: api.totalsegmentator(ct(), **{name: row.value}))
    assert options == API_DEFAULTS


@pytest.mark.parametrize(("name", "row"), _rows("refused"), ids=[n for n, _ in _rows("refused")])
def test_unsupported_keyword_is_refused_by_name_before_any_work(recorder: Recorder, name: str, row: Row) -> None:
    with pytest.raises(InvalidOptionError, match=name):
        api.totalsegmentator(ct(), **{name: row.value})
    assert recorder.options == []
    default = dict(OFFICIAL_SIGNATURE)[name]
    options_of(recorder, lambda: api.totalsegmentator(ct(), **{name: default}))  # the default passes


def test_official_defaults_give_our_defaults(recorder: Recorder) -> None:
    defaults = {name: default for name, default in OFFICIAL_SIGNATURE[1:]}
    assert options_of(recorder, lambda: api.totalsegmentator(ct(), **defaults)) == API_DEFAULTS


def test_positional_call_in_the_official_order(recorder: Recorder) -> None:
    values = [default for _, default in OFFICIAL_SIGNATURE[1:]]
    position = [name for name, _ in OFFICIAL_SIGNATURE[1:]]
    for name, value in (("fast", True), ("task", "total_mr"), ("roi_subset", ["liver"]), ("device", "cpu"),
                        ("body_seg", True), ("robust_crop", True)):
        values[position.index(name)] = value
    options = options_of(recorder, lambda: api.totalsegmentator(ct(), *values))
    assert (options.speed, options.task, options.roi_subset, options.device) == ("fast", "total_mr", ("liver",), "cpu")
    assert options.body_seg and options.robust_crop


def test_our_own_keywords_keep_working(recorder: Recorder) -> None:
    options = options_of(recorder, lambda: api.totalsegmentator(
        ct(), stats_include_incomplete=True, runtime="onnxruntime", download=False, overwrite=True))
    assert (options.stats_include_incomplete, options.runtime, options.download) == (True, "onnxruntime", False)


def test_roi_subset_as_a_string_is_refused(recorder: Recorder) -> None:
    with pytest.raises(InvalidOptionError, match="roi_subset"):
        api.totalsegmentator(ct(), roi_subset="liver")


# ----------------------------------------------------------------------------------------------
# Return value


def official_label_map(image: nib.Nifti1Image) -> dict[int, str]:
    """The label table read as the official ``load_multilabel_nifti`` reads it: the first header extension."""
    root = ET.fromstring(image.header.extensions[0].get_content())
    return {int(label.get("Key")): label.text for label in root.iter("Label")}


def test_returns_the_label_image_with_its_label_table(recorder: Recorder) -> None:
    image = api.totalsegmentator(ct())
    assert isinstance(image, nib.Nifti1Image)
    assert official_label_map(image) == CLASSES == imageio.read_label_map(image)
    assert np.array_equal(image.affine, AFFINE) and image.get_data_dtype() == np.uint8
    reread = nib.Nifti1Image.from_bytes(image.to_bytes())  # the table survives saving
    assert official_label_map(reread) == CLASSES


def test_statistics_return_the_image_and_the_statistics(recorder: Recorder, tmp_path: Path) -> None:
    image, stats = api.totalsegmentator(ct(), statistics=True)
    assert official_label_map(image) == CLASSES and set(stats) == set(CLASSES.values())
    assert not any(tmp_path.iterdir())  # no output: nothing written
    _, fast_stats = api.totalsegmentator(ct(), fast=True, statistics=True)
    assert fast_stats == stats


def test_statistics_as_a_path_write_there(recorder: Recorder, tmp_path: Path) -> None:
    target = tmp_path / "deep" / "stats.json"
    image, stats = api.totalsegmentator(ct(), statistics=str(target))
    assert json.loads(target.read_text()) == stats
    assert recorder.options[-1].statistics is True


@pytest.mark.parametrize(("ml", "output", "where"), [(False, "segs", "segs"), (True, "seg.nii.gz", ".")])
def test_statistics_true_go_beside_the_output(recorder: Recorder, tmp_path: Path, ml: bool, output: str,
                                              where: str) -> None:
    _, stats = api.totalsegmentator(ct(), tmp_path / output, ml=ml, statistics=True)
    assert json.loads((tmp_path / where / "statistics.json").read_text()) == stats


# ----------------------------------------------------------------------------------------------
# Keywords about what is written


def test_output_and_ml(recorder: Recorder, tmp_path: Path) -> None:
    api.totalsegmentator(ct(), tmp_path / "seg.nii.gz", True)
    assert imageio.read_label_map(nib.load(tmp_path / "seg.nii.gz")) == CLASSES
    api.totalsegmentator(ct(), tmp_path / "segs")
    assert {p.name for p in (tmp_path / "segs").iterdir()} == {f"{n}.nii.gz" for n in CLASSES.values()}


def test_input_as_a_path(recorder: Recorder, tmp_path: Path) -> None:
    nib.save(ct(), tmp_path / "ct.nii.gz")
    assert official_label_map(api.totalsegmentator(tmp_path / "ct.nii.gz")) == CLASSES


def test_skip_saving_writes_only_the_statistics(recorder: Recorder, tmp_path: Path) -> None:
    image, stats = api.totalsegmentator(ct(), tmp_path / "segs", statistics=True, skip_saving=True)
    assert [p.name for p in (tmp_path / "segs").iterdir()] == ["statistics.json"]
    assert official_label_map(image) == CLASSES


def test_output_type_list_writes_each_side_by_side(recorder: Recorder, tmp_path: Path) -> None:
    api.totalsegmentator(ct(), tmp_path / "result.nii.gz", output_type=["nifti", "seg_nrrd"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.nii.gz", "result.seg.nrrd"]
    assert imageio.read_label_map(nib.load(tmp_path / "result.nii.gz")) == CLASSES
    (tmp_path / "folder").mkdir()
    api.totalsegmentator(ct(), tmp_path / "folder", task="total", output_type=["nifti"])  # one type: as a string
    assert len(list((tmp_path / "folder").iterdir())) == len(CLASSES)
    with pytest.raises(InvalidOptionError, match="output_type"):
        api.totalsegmentator(ct(), tmp_path / "x", output_type=[])


def test_preview_is_written_beside_the_segmentation(recorder: Recorder, tmp_path: Path) -> None:
    api.totalsegmentator(ct(), tmp_path / "segs", preview=True)
    assert (tmp_path / "segs" / "preview_total.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    api.totalsegmentator(ct(), preview=True)  # no output: no preview, as the official


def test_license_number_is_stored(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    stored: list[str] = []
    monkeypatch.setattr(licensing, "set_license_key", lambda key, validate=True: stored.append(key))
    api.totalsegmentator(ct(), license_number="aca_ABCDEFGHIJKLMN")
    assert stored == ["aca_ABCDEFGHIJKLMN"]
