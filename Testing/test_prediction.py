"""The in-memory model run equals nnU-Net's own file-based prediction on the same model folder."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from model_factory import TINY, write_model_folder
from totalseg_engine import geometry
from totalseg_engine.errors import CancelledError, TotalSegmentatorError
from totalseg_engine.inference.devices import select_device
from totalseg_engine.inference.prediction import ModelRunner, tile_reporter
from totalseg_engine.progress import ProgressEvent

LABELS = {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    return write_model_folder(root, "Dataset297_tiny", "nnUNetTrainer_4000epochs_NoMirroring", "nnUNetPlans",
                              "3d_fullres", LABELS, (3.0, 3.0, 3.0), TINY, seed=3)


def nnunet_file_prediction(model_dir, image_path, out_dir, step):
    """nnUNetv2_predict's own path: SimpleITK reads the file, worker-free sequential prediction."""
    import nnunetv2.inference.predict_from_raw_data as raw
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    original = raw.recursive_find_trainer_class_by_name
    raw.recursive_find_trainer_class_by_name = lambda name: nnUNetTrainer  # random weights, plain trainer
    try:
        predictor = raw.nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=False,
                                        perform_everything_on_device=False, device=torch.device("cpu"),
                                        allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=[0])
        predictor.predict_from_files_sequential([[str(image_path)]], [str(out_dir / "case")])
    finally:
        raw.recursive_find_trainer_class_by_name = original
    return np.asanyarray(nib.load(out_dir / "case.nii.gz").dataobj)


@pytest.mark.parametrize("spacing", [(3.0, 3.0, 3.0), (2.2, 2.6, 3.4)], ids=["task-spacing", "other-spacing"])
def test_in_memory_prediction_equals_nnunet_file_prediction(model_dir, data_dir, tmp_path, spacing):
    ct = nib.load(data_dir / "example_ct_sm.nii.gz")
    data = ct.get_fdata()[:60, :50, :].astype(np.int32)  # int32 as the pipeline hands resampled data over
    img = nib.Nifti1Image(data, np.diag([*spacing, 1.0]))
    path = tmp_path / "case_0000.nii.gz"
    nib.save(img, path)
    expected = nnunet_file_prediction(model_dir, path, tmp_path, 0.8)
    runner = ModelRunner(model_dir, [0], torch.device("cpu"), 0.8)
    ours = runner.predict([np.asanyarray(img.dataobj)], geometry.header_spacing(img))
    assert ours.dtype == np.uint8
    assert len(np.unique(ours)) > 2  # the random network gives a busy map, not a constant
    np.testing.assert_array_equal(ours, expected)


def test_tiles_are_reported_until_complete(model_dir, data_dir):
    img = nib.load(data_dir / "example_ct_sm.nii.gz")
    runner = ModelRunner(model_dir, None, torch.device("cpu"), 0.5)
    ticks: list[tuple[int, int]] = []
    runner.predict([img.get_fdata()[:40, :40, :]], (3.0, 3.0, 3.0), lambda done, total: ticks.append((done, total)))
    assert ticks[-1][0] == ticks[-1][1] > 1
    assert [d for d, _ in ticks] == list(range(1, len(ticks) + 1))


def test_cancel_stops_inside_the_sliding_window(model_dir, data_dir):
    img = nib.load(data_dir / "example_ct_sm.nii.gz")
    runner = ModelRunner(model_dir, [0], torch.device("cpu"), 0.5)
    events: list[ProgressEvent] = []
    calls = iter([False, True])
    report = tile_reporter(events.append, 1, 1, "test", lambda: next(calls, True))
    with pytest.raises(CancelledError):
        runner.predict([img.get_fdata()[:40, :40, :]], (3.0, 3.0, 3.0), report)
    assert len(events) == 1


def test_missing_checkpoint_names_the_file(tmp_path):
    model = write_model_folder(tmp_path, "Dataset999_x", "nnUNetTrainer", "nnUNetPlans", "3d_fullres",
                               LABELS, (3.0, 3.0, 3.0), TINY, seed=1)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TotalSegmentatorError, match="checkpoint_final.pth"):
        ModelRunner(model, [0], torch.device("cpu"), 0.5)
    with pytest.raises(TotalSegmentatorError, match="fold_3"):
        ModelRunner(model, [3], torch.device("cpu"), 0.5)


def test_device_strings():
    assert select_device("cpu").type == "cpu"
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        fallback = select_device("gpu")
    assert fallback.type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu:x"):
        with pytest.raises(TotalSegmentatorError, match="Unknown device"):
            select_device(bad)


def _reference_network(model_dir):
    """The fold-0 network nnU-Net's way: plans read by nnunetv2, built on the CPU, the checkpoint copied into it."""
    import json

    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # released plans are in the old format, which nnunetv2 converts
        config = PlansManager(json.loads((model_dir / "plans.json").read_text())).get_configuration("3d_fullres")
    network = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                     config.network_arch_init_kwargs_req_import, 1, len(LABELS) + 1,
                                     allow_init=True, deep_supervision=False)
    network.load_state_dict(torch.load(model_dir / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                                       weights_only=False)["network_weights"])
    return network.eval()


@pytest.mark.parametrize("legacy", [False, True], ids=["mapped", "legacy-format"])
def test_network_built_without_initialisation_computes_the_same(model_dir, tmp_path, legacy):
    """The meta-device build with the checkpoint's own tensors gives the plain build's logits, bit for bit."""
    import shutil

    from totalseg_engine.inference import runtimes
    from totalseg_engine.inference.nnunet_plans import read_model_plans

    if legacy:  # torch's pre-1.6 format cannot be memory-mapped and is read whole
        copy = tmp_path / model_dir.parent.name / model_dir.name
        shutil.copytree(model_dir, copy)
        checkpoint = copy / "fold_0" / "checkpoint_final.pth"
        torch.save(torch.load(checkpoint, map_location="cpu", weights_only=False), checkpoint,
                   _use_new_zipfile_serialization=False)
        with pytest.raises(RuntimeError):
            torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
        model = copy
    else:
        model = model_dir
    network = runtimes.load_network(model, 0, read_model_plans(model, None))
    assert not any(t.is_meta for t in network.parameters())
    patch = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 32, 32, 32)).astype(np.float32))
    with torch.inference_mode():
        torch.testing.assert_close(network(patch), _reference_network(model_dir)(patch), rtol=0, atol=0)


def test_checkpoint_that_does_not_fit_the_plans_is_named(model_dir, tmp_path):
    import shutil

    from totalseg_engine.inference import runtimes
    from totalseg_engine.inference.nnunet_plans import read_model_plans

    copy = tmp_path / model_dir.parent.name / model_dir.name
    shutil.copytree(model_dir, copy)
    checkpoint = copy / "fold_0" / "checkpoint_final.pth"
    content = torch.load(checkpoint, map_location="cpu", weights_only=False)
    content["network_weights"].pop(next(iter(content["network_weights"])))
    torch.save(content, checkpoint)
    with pytest.raises(TotalSegmentatorError, match="do not fit the network described by plans.json"):
        runtimes.load_network(copy, 0, read_model_plans(copy, None))
