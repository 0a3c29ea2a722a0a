"""The CPU path (NumPy sliding window around torch or ONNX Runtime) against nnU-Net's own functions.

Every step is compared with the nnunetv2 / acvl_utils function it reproduces, on real CT and MR images; the
whole runner is compared with ``nnUNetPredictor``: with torch the labels are identical (the tiles are summed
in half precision as nnU-Net does); with ONNX Runtime (the same sums of slightly different logits) they
differ only where nnU-Net's two best classes nearly tie.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from model_factory import SMALL, TINY, write_model_folder
from totalseg_engine import geometry
from totalseg_engine.errors import ModelPlansError, TotalSegmentatorError
from totalseg_engine.inference import prediction, runtimes, sliding_window
from totalseg_engine.inference.devices import resolve_device
from totalseg_engine.inference.nnunet_plans import read_model_plans
from totalseg_engine.inference.prediction import ModelRunner, SlidingWindowRunner, make_runner

LABELS = {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right", 5: "aorta"}
HAS_ORT = runtimes.onnxruntime_available()
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
needs_openvino = pytest.mark.skipif(not runtimes.openvino_available(), reason="openvino is not installed")


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_ONNX_CACHE", str(tmp_path / "onnx"))
    return tmp_path / "onnx"


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("ct"), "Dataset298_ct", "nnUNetTrainer", "nnUNetPlans",
                              "3d_fullres", LABELS, (3.0, 3.0, 3.0), TINY, seed=5)


@pytest.fixture(scope="module")
def mr_model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("mr"), "Dataset299_mr", "nnUNetTrainer", "nnUNetPlans",
                              "3d_fullres", LABELS, (3.0, 3.0, 3.0), TINY, modality="MR", seed=6)


@pytest.fixture(scope="module")
def ct_crop(data_dir):
    """A real CT at 3 mm with a zero border (so nnU-Net crops to the non-zero box)."""
    data = nib.load(data_dir / "example_ct_sm.nii.gz").get_fdata()[:70, :60, :].astype(np.int32)
    data[:5], data[:, -7:] = 0, 0
    return data


def nnunet_preprocessor(model_dir):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(json.loads((model_dir / "plans.json").read_text()))
    dataset = json.loads((model_dir / "dataset.json").read_text())
    config = manager.get_configuration("3d_fullres")

    def run(image):
        return DefaultPreprocessor(verbose=False).run_case_npy(image.data, None, {"spacing": list(image.spacing_zyx)},
                                                               manager, config, dataset)

    return run


@pytest.mark.parametrize("use_mask", [False, True], ids=["whole-image", "mask"])
def test_preprocessing_equals_nnunet_ct_and_mr(ct_model, mr_model, ct_crop, data_dir, tmp_path, use_mask):
    mr = nib.load(data_dir / "example_mr_sm.nii.gz").get_fdata()
    mr[:, :4] = 0
    for model, data in ((ct_model, ct_crop), (mr_model, mr)):
        plans_file = model / "plans.json"
        plans = json.loads(plans_file.read_text())
        plans["configurations"]["3d_fullres"]["use_mask_for_norm"] = [use_mask]
        copy = tmp_path / model.parent.name / model.name
        copy.mkdir(parents=True)
        (copy / "plans.json").write_text(json.dumps(plans))
        (copy / "dataset.json").write_text((model / "dataset.json").read_text())
        image = geometry.to_nnunet([data], (3.0, 3.0, 3.0))
        expected, _, properties = nnunet_preprocessor(copy)(image)
        ours = sliding_window.preprocess(image.data, image.spacing_zyx, read_model_plans(copy))
        assert ours.bbox == tuple(tuple(b) for b in properties["bbox_used_for_cropping"])
        assert ours.data.shape != image.data.shape  # the zero border was cropped
        np.testing.assert_array_equal(ours.data, expected)


@pytest.mark.parametrize("size,patch,step", [
    ((30, 50, 60), (32, 32, 32), 0.5), ((129, 200, 77), (128, 128, 64), 0.8),
    ((128, 128, 128), (128, 128, 128), 0.5), ((97, 33, 250), (64, 32, 96), 0.8)])
def test_tile_grid_equals_nnunet(size, patch, step):
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    padded = np.maximum(size, patch)
    assert sliding_window.tile_starts(padded, patch, step) == compute_steps_for_sliding_window(padded, patch, step)


@pytest.mark.parametrize("patch", [(32, 32, 32), (128, 128, 128), (48, 160, 112)])
def test_gaussian_equals_nnunet(patch):
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    expected = compute_gaussian(patch, 1 / 8, 10, device=torch.device("cpu")).float().numpy()
    np.testing.assert_array_equal(sliding_window.gaussian_weights(patch), expected)


@pytest.mark.parametrize("shape", [(2, 30, 50, 60), (1, 32, 32, 32), (1, 10, 40, 33)])
def test_padding_equals_acvl(shape):
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected, revert = pad_nd_image(torch.from_numpy(data), (32, 32, 32), "constant", {"value": 0}, True)
    expected = expected.numpy()
    ours, unpad = sliding_window.pad_to_patch(data, (32, 32, 32))
    np.testing.assert_array_equal(ours, expected)
    assert unpad == tuple(revert[1:])
    np.testing.assert_array_equal(ours[(slice(None), *unpad)], data)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_argmax_takes_the_first_of_equal_scores(dtype):
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(300 if dtype == np.uint16 else 7, 9, 5, 4)).astype(np.float32)
    labels = np.full(scores.shape[1:], 255, dtype=dtype)
    sliding_window._first_argmax(scores, labels)
    assert labels.dtype == dtype
    np.testing.assert_array_equal(labels, scores.argmax(0))


def test_half_order_keys_order_and_tie_like_the_half_values():
    """Every non-NaN half (infinities, subnormals, both zeros): keys compare exactly as the values do."""
    halves = np.arange(-2**15, 2**15, dtype=np.int32).astype(np.int16).view(np.float16)
    halves = halves[~np.isnan(halves)]
    keys = sliding_window.half_order_keys(halves).astype(np.int32)
    order = np.argsort(halves.astype(np.float32), kind="stable")
    values, keys = halves[order].astype(np.float32), keys[order]
    np.testing.assert_array_equal(np.sign(np.diff(keys)), np.sign(np.diff(values)))
    zeros = sliding_window.half_order_keys(np.array([0.0, -0.0], np.float16))
    assert zeros[0] == zeros[1]


def nnunet_half_logits(model_dir, data):
    runner = ModelRunner(model_dir, [0], torch.device("cpu"), 0.5)
    predictor = runner._predictor
    image = geometry.to_nnunet([data], (3.0, 3.0, 3.0))
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    pre, _, props = DefaultPreprocessor(verbose=False).run_case_npy(
        image.data, None, {"spacing": list(image.spacing_zyx)}, predictor.plans_manager,
        predictor.configuration_manager, predictor.dataset_json)
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(pre)).float().numpy()
    return runner, logits, props["bbox_used_for_cropping"]


def top_two(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest logit of each voxel and its lead over the second."""
    ordered = np.sort(logits, axis=0)
    return ordered[-1], ordered[-1] - ordered[-2]


@pytest.mark.parametrize("step", [0.5, 0.8])
def test_torch_runtime_labels_equal_nnunet_exactly(ct_model, ct_crop, step):
    expected = ModelRunner(ct_model, [0], torch.device("cpu"), step).predict([ct_crop], (3.0, 3.0, 3.0))
    ours = SlidingWindowRunner(ct_model, [0], step, None, "torch").predict([ct_crop], (3.0, 3.0, 3.0))
    assert ours.dtype == np.uint8 and len(np.unique(expected)) == len(LABELS) + 1
    np.testing.assert_array_equal(ours, expected)


def test_single_tile_labels_equal_nnunet_exactly(ct_model, ct_crop):
    small = ct_crop[10:38, 15:42, 20:50]  # fits in the 32^3 patch: one tile, no sum arrays
    expected = ModelRunner(ct_model, [0], torch.device("cpu"), 0.5).predict([small], (3.0, 3.0, 3.0))
    ticks = []
    ours = SlidingWindowRunner(ct_model, [0], 0.5, None, "torch").predict([small], (3.0, 3.0, 3.0),
                                                                        lambda d, t: ticks.append((d, t)))
    assert ticks == [(1, 1)] and len(np.unique(expected)) == len(LABELS) + 1
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("runtime", [pytest.param("onnxruntime", marks=needs_ort),
                                     pytest.param("openvino", marks=needs_openvino), "torch_compile"])
def test_faster_runtime_labels_differ_from_nnunet_only_at_near_ties(ct_model, ct_crop, runtime, utf8_locale):
    reference_runner, half_logits, bbox = nnunet_half_logits(ct_model, ct_crop)
    expected = reference_runner.predict([ct_crop], (3.0, 3.0, 3.0))
    ticks = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = SlidingWindowRunner(ct_model, [0], 0.5, None, runtime).predict([ct_crop], (3.0, 3.0, 3.0),
                                                                             lambda d, t: ticks.append((d, t)))
    assert not [w for w in caught if "plain torch" in str(w.message)]  # the runtime itself ran
    assert ticks[-1][0] == ticks[-1][1] == len(ticks) > 1
    differ = geometry.to_nnunet([ours != expected], (3.0, 3.0, 3.0)).data[0]
    crop = tuple(slice(lo, hi) for lo, hi in bbox)
    outside = np.ones(differ.shape, bool)
    outside[crop] = False
    assert outside.any() and not differ[outside].any()
    _, gap = top_two(half_logits)
    assert np.all(gap[differ[crop]] < 0.05)  # the exported network's logits differ from torch's by about 1e-3
    assert differ.mean() < 0.005


def test_folds_are_summed_like_nnunet_ensembles(tmp_path, ct_crop):
    model = write_model_folder(tmp_path, "Dataset300_two", "nnUNetTrainer", "nnUNetPlans", "3d_fullres", LABELS,
                               (3.0, 3.0, 3.0), TINY, seed=8)
    other = write_model_folder(tmp_path / "other", "Dataset300_two", "nnUNetTrainer", "nnUNetPlans", "3d_fullres",
                               LABELS, (3.0, 3.0, 3.0), TINY, seed=9)
    (other / "fold_0").rename(model / "fold_1")
    expected = ModelRunner(model, [0, 1], torch.device("cpu"), 0.5).predict([ct_crop], (3.0, 3.0, 3.0))
    single = ModelRunner(model, [1], torch.device("cpu"), 0.5).predict([ct_crop], (3.0, 3.0, 3.0))
    ticks = []
    ours = SlidingWindowRunner(model, None, 0.5, None, "torch").predict([ct_crop], (3.0, 3.0, 3.0),
                                                                       lambda d, t: ticks.append((d, t)))
    np.testing.assert_array_equal(ours, expected)
    assert (single != expected).mean() > 0.05  # the second fold really changes the answer
    assert ticks[-1][0] == ticks[-1][1] == 2 * sliding_window.count_tiles(ct_crop.shape[::-1],
                                                                          read_model_plans(model), 0.5)


@pytest.mark.parametrize("runtime", ["torch", pytest.param("onnxruntime", marks=needs_ort)])
def test_tile_sums_of_each_runtime_equal_numpy_half_arithmetic(runtime):
    """Overlapping tiles summed with the runtime's fast casts give the bits of NumPy's own float16 arithmetic."""
    casts = runtimes.torch_half_casts() if runtime == "torch" else runtimes.onnx_half_casts()
    rng = np.random.default_rng(11)
    weights = sliding_window.gaussian_weights((16, 16, 16))
    ours, reference = np.zeros((5, 24, 24, 24), np.float16), np.zeros((5, 24, 24, 24), np.float16)
    for corner in [(0, 0, 0), (8, 4, 0), (8, 8, 8), (0, 8, 4)]:
        tile = (slice(None), *(slice(c, c + 16) for c in corner))
        logits = (rng.normal(size=(5, 16, 16, 16)) * 30).astype(np.float32)
        expected = (reference[tile].astype(np.float32) + logits * weights).astype(np.float16)
        reference[tile] = expected
        casts.accumulate(ours[tile], logits, weights)
    assert np.unique(reference).size > 1000
    np.testing.assert_array_equal(ours.view(np.uint16), reference.view(np.uint16))


def test_fold_mean_rounds_like_torch_half_tensors():
    """Three folds (a mean that is not a power-of-two division), checked against nnU-Net's torch operations."""
    rng = np.random.default_rng(3)

    def fold():  # classes 0.07 % apart: half precision ties many of them, float32 would not
        logits = (rng.integers(2, 4, size=(6, 9, 8, 7)) + rng.uniform(0, 0.01, size=(6, 9, 8, 7))) * 7
        return logits.astype(np.float16)

    folds = [fold() for _ in range(3)]
    weights = rng.uniform(0.5, 30, (9, 8, 7)).astype(np.float16)  # the folds share the tiles, so the weights
    unpad = (slice(1, 8), slice(0, 8), slice(2, 6))
    mean = None
    for fold in folds:  # predict_sliding_window_return_logits, then the sum over folds and the division
        quotient = torch.from_numpy(fold) / torch.from_numpy(weights)
        mean = quotient if mean is None else mean + quotient
    mean /= len(folds)
    expected = mean[(slice(None), *unpad)].argmax(0).numpy()
    in_float32 = sum(f.astype(np.float32) / weights for f in folds)[(slice(None), *unpad)].argmax(0)
    assert (in_float32 != expected).sum() > 5
    np.testing.assert_array_equal(sliding_window._fold_mean_argmax(folds, weights, unpad, np.dtype(np.uint8)), expected)


def test_other_spacing_goes_through_nnunet_resampling(ct_model, ct_crop):
    expected = ModelRunner(ct_model, [0], torch.device("cpu"), 0.5).predict([ct_crop], (2.2, 2.6, 3.4))
    runner = SlidingWindowRunner(ct_model, [0], 0.5, None, "torch")
    np.testing.assert_array_equal(runner.predict([ct_crop], (2.2, 2.6, 3.4)), expected)


@needs_ort
def test_onnx_export_is_cached_and_redone_for_a_new_checkpoint(tmp_path, onnx_cache):
    model = write_model_folder(tmp_path, "Dataset301_cache", "nnUNetTrainer", "nnUNetPlans", "3d_fullres", LABELS,
                               (3.0, 3.0, 3.0), TINY, seed=9)
    plans = read_model_plans(model)
    first = runtimes.onnx_export(model, 0, plans)
    stamp = first.stat().st_mtime_ns
    assert runtimes.onnx_export(model, 0, plans) == first and first.stat().st_mtime_ns == stamp
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    os.utime(checkpoint, ns=(stamp + 10**9, stamp + 10**9))
    assert runtimes.onnx_export(model, 0, plans).stat().st_mtime_ns != stamp
    assert sorted(p.name for p in first.parent.iterdir()) == ["fold_0.json", "fold_0.onnx"]


@needs_ort
def test_failed_export_leaves_nothing_behind(tmp_path, onnx_cache, monkeypatch):
    model = write_model_folder(tmp_path, "Dataset302_fail", "nnUNetTrainer", "nnUNetPlans", "3d_fullres", LABELS,
                               (3.0, 3.0, 3.0), TINY, seed=9)

    def broken(*args, **kwargs):
        Path(args[2]).write_bytes(b"half")
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(TotalSegmentatorError, match="--runtime torch"):
        runtimes.onnx_export(model, 0, read_model_plans(model))
    assert not any(p.is_file() for p in onnx_cache.rglob("*"))
    with pytest.raises(TotalSegmentatorError, match="exporter broke"):
        make_runner(model, [0], "cpu", 0.5, runtime="onnxruntime")


def test_runtime_choice(ct_model, monkeypatch):
    assert isinstance(make_runner(ct_model, [0], "cpu", 0.5, runtime="torch"), SlidingWindowRunner)
    assert isinstance(make_runner(ct_model, [0], "cpu", 0.5, runtime="nnunet"), ModelRunner)
    auto = make_runner(ct_model, [0], "cpu", 0.5)
    assert isinstance(auto, SlidingWindowRunner) and auto.runtime == "torch"  # bit-identical labels by default
    monkeypatch.setattr(prediction, "AUTO_CPU_RUNTIME", "onnxruntime")
    assert make_runner(ct_model, [0], "cpu", 0.5).runtime == ("onnxruntime" if HAS_ORT else "torch")
    if HAS_ORT:
        assert make_runner(ct_model, [0], "cpu", 0.5, runtime="onnxruntime").runtime == "onnxruntime"
    with pytest.raises(TotalSegmentatorError,
                       match="Unknown runtime 'tensorrt'.*auto, onnxruntime, openvino, torch, torch_compile, nnunet"):
        make_runner(ct_model, [0], "cpu", 0.5, runtime="tensorrt")
    monkeypatch.setattr(runtimes, "onnxruntime_available", lambda: False)
    with pytest.raises(TotalSegmentatorError, match="pip install onnxruntime"):
        make_runner(ct_model, [0], "cpu", 0.5, runtime="onnxruntime")
    assert make_runner(ct_model, [0], "cpu", 0.5).runtime == "torch"  # auto without ONNX Runtime
    monkeypatch.setattr(runtimes, "openvino_available", lambda: False)
    with pytest.raises(TotalSegmentatorError, match="pip install openvino"):
        make_runner(ct_model, [0], "cpu", 0.5, runtime="openvino")


@pytest.fixture
def utf8_locale():
    """Some tests leave the process in the C locale (a library sets it); torch.compile's first use needs UTF-8
    (without it the runtime falls back to plain torch, tested below), and this test is about compiled labels."""
    import locale

    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
    yield
    locale.setlocale(locale.LC_CTYPE, before)


def _fails_on_first_pass(network, **kwargs):
    def compiled(*args):
        raise RuntimeError("Compiler: cl is not found.")  # inductor's message on Windows without MSVC
    return compiled


def _fails_to_compile(network, **kwargs):  # torch 2.13 under LANG=C: inductor's templates do not decode
    raise UnicodeDecodeError("ascii", b"\xe2", 0, 1, "ordinal not in range(128)")


@pytest.mark.parametrize("compile_stand_in, message", [(_fails_on_first_pass, "cl is not found"),
                                                      (_fails_to_compile, "UnicodeDecodeError")])
def test_a_network_that_does_not_compile_runs_in_plain_torch(ct_model, ct_crop, monkeypatch, compile_stand_in,
                                                             message):
    """Where inductor cannot build its kernels (no C++ compiler, as on most Windows machines, or an ASCII locale),
    the run goes on in plain torch, with the same labels, and says so once."""
    monkeypatch.setattr(torch, "compile", compile_stand_in)
    expected = SlidingWindowRunner(ct_model, [0], 0.5, None, "torch").predict([ct_crop], (3.0, 3.0, 3.0))
    with pytest.warns(UserWarning, match=f"torch.compile failed.*{message}.*plain torch") as caught:
        ours = SlidingWindowRunner(ct_model, [0], 0.5, None, "torch_compile").predict([ct_crop], (3.0, 3.0, 3.0))
    np.testing.assert_array_equal(ours, expected)
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1


def _broken_export(monkeypatch) -> None:
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(torch.onnx, "export", broken)


def _broken_onnxruntime(monkeypatch) -> None:
    """What Windows users see when ONNX Runtime's DLLs do not load."""
    import builtins

    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("DLL load failed while importing onnxruntime_pybind11_state")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)


@needs_ort
@pytest.mark.parametrize("breakage,message", [(_broken_export, "exporter broke"),
                                              (_broken_onnxruntime, "DLL load failed")])
def test_auto_runs_torch_when_onnxruntime_cannot(ct_model, ct_crop, onnx_cache, monkeypatch, breakage, message):
    """An old torch whose exporter cannot trace the network, or a broken install, costs speed, not the run."""
    monkeypatch.setattr(prediction, "AUTO_CPU_RUNTIME", "onnxruntime")
    breakage(monkeypatch)
    with pytest.warns(UserWarning, match=f"{message}.*in torch instead"):
        auto = make_runner(ct_model, [0], "cpu", 0.5)
    assert auto.runtime == "torch"
    torch_labels = SlidingWindowRunner(ct_model, [0], 0.5).predict([ct_crop], (3.0, 3.0, 3.0))
    np.testing.assert_array_equal(auto.predict([ct_crop], (3.0, 3.0, 3.0)), torch_labels)


@pytest.mark.parametrize("change,reason", [
    (lambda c, d: c.update(previous_stage="3d_lowres"), "cascade"),
    (lambda c, d: c.update(normalization_schemes=["MyNormalization"]), "MyNormalization"),
    (lambda c, d: d["labels"].update(liver=[1, 2]), "regions"),
])
def test_plans_the_numpy_path_cannot_reproduce_use_nnunet(ct_model, tmp_path, change, reason):
    plans = json.loads((ct_model / "plans.json").read_text())
    dataset = json.loads((ct_model / "dataset.json").read_text())
    change(plans["configurations"]["3d_fullres"], dataset)
    folder = tmp_path / ct_model.parent.name / ct_model.name
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    assert reason in read_model_plans(folder).unsupported_reason()
    if reason == "MyNormalization":  # the others would need checkpoints of another shape to load
        (folder / "fold_0").symlink_to(ct_model / "fold_0")
        with pytest.warns(UserWarning, match="nnU-Net's own predictor"):
            assert isinstance(make_runner(folder, [0], "cpu", 0.5, runtime="torch"), ModelRunner)


def test_inherited_configuration_is_resolved(ct_model, tmp_path):
    plans = json.loads((ct_model / "plans.json").read_text())
    plans["configurations"]["3d_child"] = {"inherits_from": "3d_fullres", "patch_size": [16, 16, 16]}
    folder = tmp_path / "Dataset303_child" / "nnUNetTrainer__nnUNetPlans__3d_child"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text((ct_model / "dataset.json").read_text())
    child = read_model_plans(folder)
    assert child.configuration == "3d_child" and child.patch_size == (16, 16, 16)
    assert child.network_class_name == read_model_plans(ct_model).network_class_name
    with pytest.raises(ModelPlansError, match="Configuration '3d_missing' is not in .*3d_child"):
        read_model_plans(folder, "3d_missing")


def test_cpu_device_is_resolved_without_a_gpu_probe():
    assert resolve_device("cpu") == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert resolve_device("gpu") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TotalSegmentatorError, match="Unknown device"):
        resolve_device("gpu:x")


@needs_ort
def test_onnx_runs_never_import_torch_or_nnunet(tmp_path, data_dir, onnx_cache):
    """With the export cached, a whole CPU segmentation runs on NumPy, SciPy and ONNX Runtime alone."""
    from model_factory import write_task_models

    home = tmp_path / "home"
    write_task_models(home / "nnunet" / "results", "total", "fast", SMALL, seed=2)
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(home), "TOTALSEG_ONNX_CACHE": str(onnx_cache)}
    command = [sys.executable, "-c", (
        "import sys; from totalseg_engine import api; "
        f"api.totalsegmentator({str(data_dir / 'example_ct_sm.nii.gz')!r}, {str(tmp_path / 'seg.nii.gz')!r}, "
        "ml=True, fast=True, device='cpu', runtime='onnxruntime', download=False); "
        "print(sorted(m for m in ('torch', 'nnunetv2') if m in sys.modules))")]
    first = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert "torch" in first.stdout  # the first run exports the network
    (tmp_path / "seg.nii.gz").unlink()
    second = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert second.stdout.strip().splitlines()[-1] == "[]"
    labels = np.asanyarray(nib.load(tmp_path / "seg.nii.gz").dataobj)
    assert len(np.unique(labels)) > 10


def test_single_tile_is_reported_and_cropped_back(ct_model, ct_crop):
    """One tile (image smaller than the patch): labels are the argmax of its logits, placed back into the image."""
    plans = read_model_plans(ct_model)
    plans = type(plans)(**{**plans.__dict__, "patch_size": (64, 64, 80)})
    image = geometry.to_nnunet([ct_crop], (3.0, 3.0, 3.0))
    prepared = sliding_window.preprocess(image.data, image.spacing_zyx, plans)
    rng = np.random.default_rng(4)
    seen = []

    def forward(patch):
        seen.append(patch.shape)
        return rng.normal(size=(1, plans.num_classes, *patch.shape[2:])).astype(np.float32)

    ticks = []
    labels = sliding_window.predict_labels(prepared, [forward], plans, 0.5, lambda d, t: ticks.append((d, t)))
    assert seen == [(1, 1, 64, 64, 80)] and ticks == [(1, 1)]
    rng = np.random.default_rng(4)  # the same logits again, through the sums used for several tiles
    padded, unpad = sliding_window.pad_to_patch(prepared.data, plans.patch_size)
    tile = tuple(slice(0, p) for p in plans.patch_size)
    sums = sliding_window._logit_sums(padded, [tile], forward, plans, lambda: None, sliding_window.NUMPY_CASTS)
    weights = sliding_window.weight_sums(padded.shape[1:], plans.patch_size, 0.5)
    general = sliding_window._fold_mean_argmax([sums], weights, unpad, np.dtype(np.uint8))
    np.testing.assert_array_equal(labels[tuple(slice(lo, hi) for lo, hi in prepared.bbox)], general)
    assert labels.shape == image.data.shape[1:] and labels.dtype == np.uint8
    outside = np.ones(labels.shape, bool)
    outside[tuple(slice(lo, hi) for lo, hi in prepared.bbox)] = False
    assert not labels[outside].any() and len(np.unique(labels)) == plans.num_classes


def test_weight_sums_equal_nnunet_half_tensor_and_are_shared():
    """nnU-Net adds each tile's Gaussian into a half tensor; the cached sums hold the same bits, read-only."""
    patch, shape, step = (32, 32, 32), (70, 45, 33), 0.5
    gaussian = torch.from_numpy(sliding_window.gaussian_weights(patch).astype(np.float16))
    expected = torch.zeros(shape, dtype=torch.half)
    for tile in sliding_window._tiles(shape, patch, step):
        expected[tile] += gaussian
    sums = sliding_window.weight_sums(shape, patch, step)
    np.testing.assert_array_equal(sums, expected.numpy())
    assert sums.max() > sliding_window.gaussian_weights(patch).max()  # tiles overlap: sums, not one tile
    assert sliding_window.weight_sums(list(shape), list(patch), step) is sums
    assert not sums.flags.writeable
