"""Model folders in both plans formats and with trainers' checkpoints, as TotalSegmentator released them.

Most released weights were planned with nnunetv2 2.2, before configurations held an ``architecture`` entry;
nnunetv2 rebuilds the network from the old keys when it loads them. Our reader must rebuild exactly the same
network (a wrong normalisation epsilon or activation slope would change every logit without an error), so the
conversion is compared with nnunetv2's own, and whole runs on old-format folders with runs on their
new-format twins and with nnU-Net's own predictor.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from model_factory import TINY, NetworkSize, write_checkpoint, write_model_folder, write_task_models
from totalseg_engine import api
from totalseg_engine.cli import main as cli
from totalseg_engine.errors import ModelPlansError
from totalseg_engine.inference import runtimes
from totalseg_engine.inference.nnunet_plans import read_model_plans
from totalseg_engine.inference.prediction import OLD_PLANS_WARNING, ModelRunner

LABELS = {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right", 5: "aorta"}
NETWORKS = ("PlainConvUNet", "ResidualEncoderUNet")
PART = NetworkSize(features=(2, 4, 8), patch_size=(64, 64, 64))
RUNTIMES = ["torch", "nnunet"] + (["onnxruntime"] if runtimes.onnxruntime_available() else [])


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_ONNX_CACHE", str(tmp_path / "onnx"))


def model(root: Path, plans_format: str, network: str = "PlainConvUNet", configuration: str = "3d_fullres") -> Path:
    return write_model_folder(root / plans_format / network, "Dataset297_twin", "nnUNetTrainer_4000epochs_NoMirroring",
                              "nnUNetPlans", configuration, LABELS, (3.0, 3.0, 3.0), TINY, seed=4,
                              plans_format=plans_format, network=network)


def nnunet_configuration(model_dir: Path, configuration: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=OLD_PLANS_WARNING)
        return PlansManager(json.loads((model_dir / "plans.json").read_text())).get_configuration(configuration)


def edited(model_dir: Path, tmp_path: Path, edit) -> Path:
    """A copy of a model folder's JSON files (checkpoints linked) after ``edit(plans, dataset)``."""
    plans = json.loads((model_dir / "plans.json").read_text())
    dataset = json.loads((model_dir / "dataset.json").read_text())
    edit(plans, dataset)
    copy = tmp_path / "edited" / model_dir.parent.name / model_dir.name
    copy.mkdir(parents=True)
    (copy / "plans.json").write_text(json.dumps(plans))
    (copy / "dataset.json").write_text(json.dumps(dataset))
    (copy / "fold_0").symlink_to(model_dir / "fold_0")
    return copy


# ------------------------------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("configuration", ["3d_fullres", "3d_fullres_high", "2d"])
def test_old_format_is_converted_as_nnunet_converts_it(tmp_path, network, configuration):
    folder = model(tmp_path, "old", network, configuration if configuration != "2d" else "3d_fullres")
    plans = json.loads((folder / "plans.json").read_text())
    assert "architecture" not in plans["configurations"]["3d_fullres"]
    ours = read_model_plans(folder, configuration)
    theirs = nnunet_configuration(folder, configuration)
    assert ours.network_class_name == theirs.network_arch_class_name
    assert ours.network_kwargs == theirs.network_arch_init_kwargs
    assert list(ours.network_kwargs_to_import) == list(theirs.network_arch_init_kwargs_req_import)
    assert list(ours.patch_size) == theirs.patch_size and list(ours.spacing) == theirs.spacing


@pytest.mark.parametrize("network", NETWORKS)
def test_old_format_gives_the_plans_of_its_new_format_twin(tmp_path, network):
    old = read_model_plans(model(tmp_path, "old", network, "3d_fullres_high"))
    new = read_model_plans(model(tmp_path, "new", network, "3d_fullres_high"))
    assert old.spacing == (3.0, 3.0, 3.0)  # the child's, not the 3d_fullres it inherits from
    # nnunetv2's conversion still names ResidualEncoderUNet's old module; both paths import the same class
    assert runtimes.network_class_path(old.network_class_name) == runtimes.network_class_path(new.network_class_name)
    assert replace(old, network_class_name=new.network_class_name) == new


def test_intensity_properties_under_their_pre_2_0_name(tmp_path):
    folder = model(tmp_path, "old")

    def rename(plans, dataset):
        plans["foreground_intensity_properties_by_modality"] = plans.pop("foreground_intensity_properties_per_channel")

    copy = edited(folder, tmp_path, rename)
    assert read_model_plans(copy).intensity_properties == read_model_plans(folder).intensity_properties
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    assert PlansManager(str(copy / "plans.json")).foreground_intensity_properties_per_channel == \
        read_model_plans(copy).intensity_properties


def _drop(key):
    return lambda plans, dataset: plans["configurations"]["3d_fullres"].pop(key)


@pytest.mark.parametrize("edit, file, words", [
    (lambda p, d: p["configurations"]["3d_fullres"].update(UNet_class_name="MyUNet"), "plans.json",
     ["'MyUNet'", "'UNet_class_name'", "PlainConvUNet or ResidualEncoderUNet"]),
    (_drop("unet_max_num_features"), "plans.json", ["'unet_max_num_features'", "configuration '3d_fullres'"]),
    (_drop("num_pool_per_axis"), "plans.json", ["'num_pool_per_axis'"]),
    (lambda p, d: p["configurations"]["3d_fullres"].update(patch_size="big"), "plans.json", ["'patch_size'"]),
    (lambda p, d: p.pop("foreground_intensity_properties_per_channel"), "plans.json",
     ["foreground_intensity_properties_per_channel", "CTNormalization"]),
    (lambda p, d: p["foreground_intensity_properties_per_channel"]["0"].pop("percentile_99_5"), "plans.json",
     ["'percentile_99_5'"]),
    (lambda p, d: p.pop("transpose_forward"), "plans.json", ["'transpose_forward'"]),
    (lambda p, d: d.pop("labels"), "dataset.json", ["'labels'"]),
])
def test_a_plans_file_it_cannot_use_is_named_with_the_key(tmp_path, edit, file, words):
    copy = edited(model(tmp_path, "old"), tmp_path, edit)
    with pytest.raises(ModelPlansError) as caught:
        read_model_plans(copy)
    message = str(caught.value)
    assert str(copy / file) in message and all(word in message for word in words), message
    assert "Re-download" in message


def test_unreadable_or_missing_model_files_are_named(tmp_path):
    folder = model(tmp_path, "old")
    (folder / "plans.json").write_text('{"configurations": ')
    with pytest.raises(ModelPlansError, match=f"Could not read the model file {folder / 'plans.json'}"):
        read_model_plans(folder)
    (folder / "plans.json").unlink()
    with pytest.raises(ModelPlansError, match="is missing"):
        read_model_plans(folder)


def test_broken_plans_stop_the_command_with_one_message(tmp_path, monkeypatch, capsys, data_dir):
    home = tmp_path / "home"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    [folder] = write_task_models(home / "nnunet" / "results", "total", "fast", PART, seed=1)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["UNet_class_name"] = "SwinUNETR"
    (folder / "plans.json").write_text(json.dumps(plans))
    for runtime in ("torch", "nnunet"):  # nnU-Net's own predictor (the GPU path) is checked the same way
        argv = ["-i", str(data_dir / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "seg.nii.gz"), "--ml", "--fast",
                "-d", "cpu", "--offline", "--runtime", runtime]
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        [error] = [line for line in err.splitlines() if line.startswith("ERROR")]
        assert error.startswith("ERROR: The model file") and "'SwinUNETR'" in error and "Traceback" not in err
    assert not (tmp_path / "seg.nii.gz").exists()


# ------------------------------------------------------------------------------------------------- checkpoints


def test_checkpoints_hold_what_nnunets_trainer_saves(tmp_path):
    """The factory's checkpoint keys are those of ``nnUNetTrainer.save_checkpoint`` in the installed nnunetv2."""
    import inspect
    import textwrap

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    source = ast.parse(textwrap.dedent(inspect.getsource(nnUNetTrainer.save_checkpoint)))
    [saved] = [node for node in ast.walk(source) if isinstance(node, ast.Dict)]
    expected = {key.value for key in saved.keys}
    write_checkpoint(tmp_path / "checkpoint_final.pth", torch.nn.Conv3d(1, 2, 3), "nnUNetTrainerNoMirroring", {},
                     "3d_fullres", 0, {})
    checkpoint = torch.load(tmp_path / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert set(checkpoint) == expected
    assert checkpoint["inference_allowed_mirroring_axes"] is None
    assert isinstance(checkpoint["init_args"]["device"], torch.device) and type(checkpoint["_best_ema"]) is np.float64


def test_a_checkpoint_saved_on_a_gpu_under_numpy_1_loads_on_the_cpu(tmp_path):
    folder = model(tmp_path, "old")
    path = folder / "fold_0" / "checkpoint_final.pth"
    import zipfile

    import torch

    with zipfile.ZipFile(path) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"cuda:0" in pickled and b"numpy.core.multiarray" in pickled and b"numpy._core" not in pickled
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=False)  # what a loader without map_location meets on a CPU
    checkpoint = runtimes.load_checkpoint(folder, 0)
    assert checkpoint["optimizer_state"]["param_groups"][0]["nesterov"] is True
    assert all(tensor.device.type == "cpu" for tensor in checkpoint["network_weights"].values())
    loaded = runtimes.load_network(folder, 0, read_model_plans(folder)).state_dict()
    assert loaded.keys() == checkpoint["network_weights"].keys()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in checkpoint["network_weights"].items())


def test_residual_encoder_unet_is_built_without_importing_every_architecture(tmp_path):
    """nnunetv2 looks the class of old ResEnc plans up in a module that moved, by importing every architecture
    module (timm, torchvision: broken with CPU-only torch). We find the class where it now lives."""
    folder = model(tmp_path, "old", "ResidualEncoderUNet")
    assert "residual_unet" in read_model_plans(folder).network_class_name
    code = ("import sys; from totalseg_engine.inference import runtimes; "
            "from totalseg_engine.inference.nnunet_plans import "
            f"read_model_plans as r; m = {str(folder)!r}; n = runtimes.load_network(m, 0, r(m)); "
            "print(type(n).__name__, sorted(x for x in ('timm', 'torchvision') if x in sys.modules))")
    root = Path(__file__).resolve().parents[1] / "TotalSegmentator"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "ResidualEncoderUNet []"


def test_nnunets_predictor_path_hides_the_old_plans_warning(tmp_path):
    import torch

    folder = model(tmp_path, "old")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ModelRunner(folder, [0], torch.device("cpu"), 0.5)


# ------------------------------------------------------------------------------------------------- whole runs


def run(home: Path, data_dir: Path, runtime: str, monkeypatch) -> np.ndarray:
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    image = api.totalsegmentator(data_dir / "example_ct_sm.nii.gz", ml=True, fast=True, device="cpu",
                                 runtime=runtime, download=False)
    return np.asanyarray(image.dataobj)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The fast total model as released (old format) and its new-format twin, the same weights."""
    root = tmp_path_factory.mktemp("twins")
    for plans_format in ("old", "new"):
        write_task_models(root / plans_format / "nnunet" / "results", "total", "fast", PART, seed=8,
                          plans_format=plans_format)
    return root


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_old_format_folder_segments_exactly_as_its_new_format_twin(twins, data_dir, monkeypatch, runtime):
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    old = run(twins / "old", data_dir, runtime, monkeypatch)
    new = run(twins / "new", data_dir, runtime, monkeypatch)
    assert len(np.unique(old)) > 10
    np.testing.assert_array_equal(old, new)


def test_old_format_residual_unet_segments_as_nnunets_predictor(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    write_task_models(tmp_path / "nnunet" / "results", "total", "fast", PART, seed=9, network="ResidualEncoderUNet")
    ours = run(tmp_path, data_dir, "torch", monkeypatch)
    nnunet = run(tmp_path, data_dir, "nnunet", monkeypatch)
    assert len(np.unique(ours)) > 5  # random residual networks give fewer winning labels
    np.testing.assert_array_equal(ours, nnunet)
    assert nib.load(data_dir / "example_ct_sm.nii.gz").shape == ours.shape
