"""Build nnU-Net v2 model folders in the exact TotalSegmentator release layout, with random weights.

``DatasetXXX_name/Trainer__Plans__configuration/{plans.json, dataset.json, fold_0/checkpoint_final.pth}``

The networks are real nnU-Net architectures built from the plans, so the engine loads them exactly
like released weights; random weights give busy, image-dependent label maps that expose any
difference in the steps before and after the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

CT_INTENSITIES = {"max": 3071.0, "mean": 100.0, "median": 80.0, "min": -1024.0,
                  "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "std": 300.0}


@dataclass(frozen=True)
class NetworkSize:
    """Encoder stages, features per stage and patch size (z, y, x) of a PlainConvUNet."""

    features: tuple[int, ...]
    patch_size: tuple[int, int, int]

    @property
    def n_stages(self) -> int:
        return len(self.features)


TINY = NetworkSize(features=(4, 8, 16), patch_size=(32, 32, 32))
SMALL = NetworkSize(features=(8, 16, 32, 64), patch_size=(64, 64, 64))
NNUNET_DEFAULT_CT = NetworkSize(features=(32, 64, 128, 256, 320, 320), patch_size=(128, 128, 128))


def _architecture(size: NetworkSize) -> dict:
    n = size.n_stages
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (n - 1)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(size.features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n,
            "strides": strides,
            "n_conv_per_stage": [2] * n,
            "n_conv_per_stage_decoder": [2] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _resampling(is_seg: bool, order: int) -> dict:
    return {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}


def plans_dict(dataset_name: str, plans_name: str, configuration: str, spacing_zyx: Sequence[float],
               size: NetworkSize, modality: str) -> dict:
    """A plans.json with one configuration, in nnU-Net v2's current format."""
    normalization = "CTNormalization" if modality.upper() == "CT" else "ZScoreNormalization"
    config = {
        "data_identifier": f"{plans_name}_{configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(size.patch_size),
        "median_image_size_in_voxels": [128, 128, 128],
        "spacing": [float(s) for s in spacing_zyx],
        "normalization_schemes": [normalization],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": _resampling(False, 3),
        "resampling_fn_seg_kwargs": _resampling(True, 1),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": _resampling(False, 1),
        "architecture": _architecture(size),
        "batch_dice": False,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [float(s) for s in spacing_zyx],
        "original_median_shape_after_transp": [128, 128, 128],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {configuration: config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": dict(CT_INTENSITIES)},
    }


def dataset_dict(labels: dict[int, str], modality: str, channels: int = 1) -> dict:
    names = {"0": modality.upper()}
    for c in range(1, channels):
        names[str(c)] = "noNorm"  # a cascade's previous-stage mask
    return {
        "channel_names": names,
        "labels": {"background": 0, **{name: int(label) for label, name in sorted(labels.items())}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }


def write_model_folder(results_dir: Path, folder: str, trainer: str, plans_name: str, configuration: str,
                       labels: dict[int, str], spacing_xyz: Sequence[float], size: NetworkSize = TINY,
                       modality: str = "CT", folds: Sequence[int] = (0,), seed: Optional[int] = None,
                       checkpoint_trainer: Optional[str] = None) -> Path:
    """Write one model folder with random weights; returns the ``Trainer__Plans__config`` folder.

    ``checkpoint_trainer`` is the trainer class recorded in the checkpoint (default: ``trainer``); tools that
    look the class up by that name (the official package) need one nnU-Net ships, such as ``nnUNetTrainer``.
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    model_dir = Path(results_dir) / folder / f"{trainer}__{plans_name}__{configuration}"
    model_dir.mkdir(parents=True, exist_ok=True)
    spacing_zyx = list(spacing_xyz)[::-1]
    plans = plans_dict(folder, plans_name, configuration, spacing_zyx, size, modality)
    dataset = dataset_dict(labels, modality)
    (model_dir / "plans.json").write_text(json.dumps(plans, indent=1))
    (model_dir / "dataset.json").write_text(json.dumps(dataset, indent=1))
    arch = plans["configurations"][configuration]["architecture"]
    for fold in folds:
        torch.manual_seed(seed if seed is not None else hash((folder, fold)) % 2**31)
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                     arch["_kw_requires_import"], 1, len(labels) + 1,
                                     allow_init=True, deep_supervision=False)
        _spread_output(net, torch)
        fold_dir = model_dir / f"fold_{fold}"
        fold_dir.mkdir(exist_ok=True)
        torch.save({
            "network_weights": net.state_dict(),
            "trainer_name": checkpoint_trainer or trainer,
            "init_args": {"plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset},
            "inference_allowed_mirroring_axes": (0, 1, 2),
        }, fold_dir / "checkpoint_final.pth")
    return model_dir


def _spread_output(net, torch) -> None:
    """Scale the final 1x1 convolution so that every label wins somewhere (busier label maps)."""
    final = net.decoder.seg_layers[-1]
    with torch.no_grad():
        final.weight.mul_(8.0)
        final.bias.zero_()


def write_task_models(results_dir: Path, task_name: str, speed: str = "normal", size: NetworkSize = TINY,
                      seed: int = 0, checkpoint_trainer: Optional[str] = None) -> list[Path]:
    """Write every model of a task's mode, with the registry's folders, trainers and spacings."""
    from totalseg_engine.tasks import get_task

    task = get_task(task_name)
    mode = task.mode(speed)
    written = []
    for i, model in enumerate(mode.models):
        labels = model.classes or task.classes
        folder = model.folder or f"Dataset{model.dataset_id:03d}_test"
        spacing = mode.spacing or (1.5, 1.5, 1.5)
        written.append(write_model_folder(results_dir, folder, model.trainer, model.plans, model.configuration,
                                          labels, spacing, size, task.modality,
                                          folds=model.folds or (0,), seed=seed + i,
                                          checkpoint_trainer=checkpoint_trainer))
    return written
