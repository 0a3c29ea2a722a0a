"""Build nnU-Net v2 model folders as TotalSegmentator's releases hold them, with random weights.

The networks are real nnU-Net architectures, so the engine loads them exactly like released weights; random
weights give busy, image-dependent label maps that expose any difference in the steps before and after the
network. Everything around the weights is as untidy as the release, because every fixture that was cleaner
than the release once hid a failure on real weights. What the release holds, and where that comes from:

- **Layout** (TotalSegmentator's ``resources/prepare_weights_for_release.sh`` and ``anonymise_nnunet_pkl_v2.py``,
  which delete ``validation/``, ``checkpoint_best.pth`` and the training logs, nothing else)::

      DatasetXXX_name/Trainer__Plans__configuration/
          plans.json, dataset.json, dataset_fingerprint.json
          fold_N/checkpoint_final.pth, fold_N/debug.json, fold_N/progress.png

- **plans.json** in nnunetv2's format before 2.3.1 (the keys of nnunetv2 2.2's ``default_experiment_planner.py``:
  ``UNet_class_name``, ``UNet_base_num_features``, ...) for every dataset released while TotalSegmentator pinned
  nnunetv2 2.2 (its issue #288 shows nnunetv2 2.3.1's "old plans format" warning on them); the current format
  (an ``architecture`` entry) only for dataset 113, planned with nnunetv2 2.6.2. Beside the configuration a
  task runs, the planner's ``2d``, ``3d_lowres`` and ``3d_cascade_fullres``; a configuration other than
  ``3d_fullres`` inherits from it (``inherits_from``), overriding the spacing.
- **dataset.json** as TotalSegmentator's ``resources/convert_dataset_to_nnunet.py`` writes it (name, description,
  reference, licence, release, ``overwrite_image_reader_writer: NibabelIOWithReorient``).
- **checkpoint_final.pth** as ``nnUNetTrainer.save_checkpoint`` (nnunetv2 2.2) writes it: ``network_weights``,
  ``optimizer_state`` (SGD with Nesterov momentum: a buffer as large as the weights), ``grad_scaler_state``,
  ``logging`` and ``_best_ema`` (numpy scalars), ``current_epoch``, ``init_args`` (with a ``torch.device``),
  ``trainer_name``, ``inference_allowed_mirroring_axes`` (None for the NoMirroring trainers). The tensors were
  on the GPU when saved (storage location ``cuda:0``), and old-format checkpoints were pickled under numpy 1.x,
  whose scalars live in ``numpy.core`` (numpy 2 writes ``numpy._core``).
- **Release zips**: one top-level ``DatasetXXX_name/`` folder with directory entries, as ``zip -r`` makes them;
  a zip re-made on a Mac also holds ``__MACOSX/…/._*`` AppleDouble entries and ``.DS_Store`` files.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import types
import zipfile
import zlib
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

CT_INTENSITIES = {"max": 3071.0, "mean": 100.0, "median": 80.0, "min": -1024.0,
                  "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "std": 300.0}
NEW_FORMAT_DATASETS = frozenset({113})
"""Datasets whose released plans.json has the current format (everything else was planned before 2.3.1)."""
NETWORKS = {"PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"}
"""Class paths as nnunetv2's planners write them into the current format (``UNet_class.__module__``)."""


@dataclass(frozen=True)
class NetworkSize:
    """Encoder stages, features per stage and patch size (z, y, x) of an nnU-Net U-Net.

    The features double from stage to stage up to a maximum, as nnU-Net plans them (the old plans format can
    only describe such networks).
    """

    features: tuple[int, ...]
    patch_size: tuple[int, int, int]

    @property
    def n_stages(self) -> int:
        return len(self.features)


TINY = NetworkSize(features=(4, 8, 16), patch_size=(32, 32, 32))
SMALL_3MM = NetworkSize(features=(2, 4, 8), patch_size=(64, 64, 64))  # the fast total model at test size
SMALL = NetworkSize(features=(8, 16, 32, 64), patch_size=(64, 64, 64))
NNUNET_DEFAULT_CT = NetworkSize(features=(32, 64, 128, 256, 320, 320), patch_size=(128, 128, 128))


def release_plans_format(dataset_id: Optional[int]) -> str:
    """"old" or "new": the plans format TotalSegmentator released this dataset with."""
    return "new" if dataset_id in NEW_FORMAT_DATASETS else "old"


def _dataset_id(folder: str) -> Optional[int]:
    digits = folder[len("Dataset"):].split("_", 1)[0]
    return int(digits) if folder.startswith("Dataset") and digits.isdigit() else None


# ------------------------------------------------------------------------------------------------- plans.json


def _network_keys(size: NetworkSize, network: str, dimension: int = 3) -> dict:
    """The network as nnunetv2 2.2's planner describes it (the old format), in the order it writes the keys."""
    n, features = size.n_stages, list(size.features)
    base, most = features[0], max(features)
    if [min(base * 2 ** i, most) for i in range(n)] != features:
        raise ValueError(f"features {features} do not double up to a maximum: the old plans format can't hold them")
    strides = [[1] * dimension] + [[2] * dimension] * (n - 1)
    return {
        "UNet_class_name": network,
        "UNet_base_num_features": base,
        "n_conv_per_stage_encoder": [2] * n if network == "PlainConvUNet" else [1, 3, 4, 6, 6, 6, 6][:n],
        "n_conv_per_stage_decoder": [2 if network == "PlainConvUNet" else 1] * (n - 1),
        "num_pool_per_axis": [n - 1] * dimension,
        "pool_op_kernel_sizes": strides,
        "conv_kernel_sizes": [[3] * dimension] * n,
        "unet_max_num_features": most,
    }


def _architecture(network_keys: dict, patch: Sequence[int]) -> dict:
    """The ``architecture`` entry that nnunetv2's current planners write for the same network.

    Its values are those of nnunetv2's own conversion of the old keys (the installed nnunetv2), with the class
    where the current planners name it (the conversion still names a module that moved).
    """
    import warnings

    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Detected old nnU-Net plans format"
        architecture = ConfigurationManager({**deepcopy(network_keys), "patch_size": list(patch)}).configuration[
            "architecture"]
    architecture["network_class_name"] = NETWORKS[network_keys["UNet_class_name"]]
    return architecture


def _resampling(is_seg: bool, order: int) -> dict:
    return {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}


def _configuration(identifier: str, patch: Sequence[int], spacing: Sequence[float], normalization: str,
                   network_keys: dict, plans_format: str) -> dict:
    config = {
        "data_identifier": identifier,
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch),
        "median_image_size_in_voxels": [128.0] * len(patch),
        "spacing": [float(s) for s in spacing],
        "normalization_schemes": [normalization],
        "use_mask_for_norm": [False],
    }
    if plans_format == "old":
        config.update(deepcopy(network_keys))
    config.update({
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": _resampling(False, 3),
        "resampling_fn_seg_kwargs": _resampling(True, 1),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": _resampling(False, 1),
    })
    if plans_format == "new":
        config["architecture"] = _architecture(network_keys, patch)
    config["batch_dice"] = False
    return config


def plans_dict(dataset_name: str, plans_name: str, configuration: str, spacing_zyx: Sequence[float],
               size: NetworkSize, modality: str, plans_format: str = "old", network: str = "PlainConvUNet") -> dict:
    """A plans.json as nnU-Net's planner writes it, with ``configuration`` at ``spacing_zyx``.

    ``3d_fullres`` is planned at another spacing when ``configuration`` is a custom one inheriting from it, so a
    reader that ignores ``inherits_from`` gets the wrong spacing.
    """
    normalization = "CTNormalization" if modality.upper() == "CT" else "ZScoreNormalization"
    keys = _network_keys(size, network)
    base_spacing = spacing_zyx if configuration == "3d_fullres" else [s / 2 for s in spacing_zyx]
    flat = NetworkSize(features=tuple(min(32 * 2 ** i, 512) for i in range(size.n_stages)),
                       patch_size=size.patch_size)
    configurations = {
        "2d": _configuration(f"{plans_name}_2d", [p * 2 for p in size.patch_size[1:]], base_spacing[1:],
                             normalization, _network_keys(flat, "PlainConvUNet", 2), plans_format),
        "3d_lowres": _configuration(f"{plans_name}_3d_lowres", size.patch_size, [s * 2 for s in base_spacing],
                                    normalization, keys, plans_format),
        "3d_fullres": _configuration(f"{plans_name}_3d_fullres", size.patch_size, base_spacing, normalization,
                                     keys, plans_format),
        "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
    }
    configurations["3d_lowres"]["next_stage"] = "3d_cascade_fullres"
    if configuration not in configurations:
        configurations[configuration] = {"inherits_from": "3d_fullres",
                                         "data_identifier": f"{plans_name}_{configuration}",
                                         "spacing": [float(s) for s in spacing_zyx]}
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [float(s) for s in spacing_zyx],
        "original_median_shape_after_transp": [128, 128, 128],
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": configurations,
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": dict(CT_INTENSITIES)},
    }


def dataset_dict(labels: dict[int, str], modality: str, channels: int = 1) -> dict:
    """A dataset.json as TotalSegmentator's conversion script writes it."""
    names = {"0": modality.upper()}
    for c in range(1, channels):
        names[str(c)] = "noNorm"  # a cascade's previous-stage mask
    return {
        "name": "TotalSegmentator",
        "description": "Segmentation of TotalSegmentator classes",
        "reference": "https://zenodo.org/record/6802614",
        "licence": "Apache 2.0",
        "release": "2.0",
        "channel_names": names,
        "labels": {"background": 0, **{name: int(label) for label, name in sorted(labels.items())}},
        "numTraining": 1139,
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "NibabelIOWithReorient",
    }


def fingerprint_dict(spacing_zyx: Sequence[float]) -> dict:
    """dataset_fingerprint.json, which the release copies beside plans.json."""
    return {
        "foreground_intensity_properties_per_channel": {"0": dict(CT_INTENSITIES)},
        "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": [[128, 128, 128], [140, 120, 130]],
        "spacings": [[float(s) for s in spacing_zyx]] * 2,
    }


# ------------------------------------------------------------------------------------------------- checkpoints


class _Numpy1Pickler(pickle._Pickler):
    """Writes numpy's functions under numpy 1.x's module names (``numpy.core.…``), as pre-2024 checkpoints hold them.

    numpy 2 moved ``numpy.core`` to ``numpy._core``; a pickle protocol 2 global is the plain text
    ``module\\nname``, which this rewrites on the way out. numpy 2 still unpickles the old names.
    """

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if self.proto < 4 and module.startswith("numpy._core"):
            legacy = "numpy.core" + module[len("numpy._core"):]
            self.write(pickle.GLOBAL + f"{legacy}\n{name or obj.__qualname__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


NUMPY1_PICKLE = types.SimpleNamespace(Pickler=_Numpy1Pickler, __name__="numpy1_pickle")


def _optimizer_state(net, torch) -> dict:
    """nnUNetTrainer's SGD (lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5) after one step."""
    copy = deepcopy(net)
    optimizer = torch.optim.SGD(copy.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    for parameter in copy.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    return optimizer.state_dict()


def _training_log(numpy, epochs: int = 3) -> dict:
    """nnUNetLogger's lists: its Dice values and losses are numpy scalars, learning rates and times floats."""
    rng = numpy.random.default_rng(0)
    dice = [numpy.float64(v) for v in rng.uniform(0.5, 0.9, epochs)]
    return {
        "mean_fg_dice": dice,
        "ema_fg_dice": [numpy.float64(v * 0.9) for v in dice],
        "dice_per_class_or_region": [[numpy.float64(v) for v in rng.uniform(0, 1, 3)] for _ in range(epochs)],
        "train_losses": [numpy.float32(v) for v in rng.uniform(-1, 0, epochs)],
        "val_losses": [numpy.float32(v) for v in rng.uniform(-1, 0, epochs)],
        "lrs": [0.01 * (1 - e / epochs) ** 0.9 for e in range(epochs)],
        "epoch_start_timestamps": [1.69e9 + 100 * e for e in range(epochs)],
        "epoch_end_timestamps": [1.69e9 + 100 * e + 90 for e in range(epochs)],
    }


def _save_from_gpu(checkpoint: dict, path: Path, torch, pickle_module) -> None:
    """torch.save as on the training machine: every storage recorded at ``cuda:0``."""
    serialization = torch.serialization
    location_tag = serialization.location_tag
    serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(checkpoint, path, pickle_module=pickle_module)
    finally:
        serialization.location_tag = location_tag


def write_checkpoint(path: Path, net, trainer: str, plans: dict, configuration: str, fold: int, dataset: dict,
                     mirroring: bool = False, numpy_1: bool = True) -> None:
    """checkpoint_final.pth with every entry nnU-Net's trainer writes (``trainer``: the class name it records)."""
    import numpy
    import torch

    log = _training_log(numpy)
    checkpoint = {
        "network_weights": net.state_dict(),
        "optimizer_state": _optimizer_state(net, torch),
        "grad_scaler_state": {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                              "_growth_tracker": 1534},
        "logging": log,
        "_best_ema": max(log["ema_fg_dice"]),
        "current_epoch": 4000,
        "init_args": {"plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset,
                      "unpack_dataset": True, "device": torch.device("cuda")},
        "trainer_name": trainer,
        "inference_allowed_mirroring_axes": (0, 1, 2) if mirroring else None,
    }
    _save_from_gpu(checkpoint, path, torch, NUMPY1_PICKLE if numpy_1 else pickle)


def _png(width: int = 4, height: int = 4) -> bytes:
    """A small valid grey PNG standing in for the trainer's progress.png plot."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([128] * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _debug_json(trainer: str, configuration: str, fold: int) -> dict:
    """A few of the entries ``nnUNetTrainer._save_debug_information`` writes (every value a string)."""
    return {"trainer_name": trainer, "configuration_name": configuration, "fold": str(fold), "device": "cuda:0",
            "batch_size": "2", "num_epochs": "4000", "initial_lr": "0.01", "weight_decay": "3e-05",
            "torch_version": "2.0.1+cu118", "hostname": "gpu-node", "cudnn_version": "8700"}


# ------------------------------------------------------------------------------------------------- folders


def write_model_folder(results_dir: Path, folder: str, trainer: str, plans_name: str, configuration: str,
                       labels: dict[int, str], spacing_xyz: Sequence[float], size: NetworkSize = TINY,
                       modality: str = "CT", folds: Sequence[int] = (0,), seed: Optional[int] = None,
                       checkpoint_trainer: Optional[str] = None, plans_format: Optional[str] = None,
                       network: str = "PlainConvUNet") -> Path:
    """Write one model folder with random weights; returns the ``Trainer__Plans__config`` folder.

    ``plans_format`` is "old" or "new" (default: as this dataset was released, :func:`release_plans_format`).
    ``checkpoint_trainer`` is the trainer class recorded in the checkpoint (default: ``trainer``); tools that
    look the class up by that name (the official package) need one nnU-Net ships, such as ``nnUNetTrainer``.
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans_format = plans_format or release_plans_format(_dataset_id(folder))
    model_dir = Path(results_dir) / folder / f"{trainer}__{plans_name}__{configuration}"
    model_dir.mkdir(parents=True, exist_ok=True)
    spacing_zyx = list(spacing_xyz)[::-1]
    plans = plans_dict(folder, plans_name, configuration, spacing_zyx, size, modality, plans_format, network)
    dataset = dataset_dict(labels, modality)
    (model_dir / "plans.json").write_text(json.dumps(plans, indent=4))
    (model_dir / "dataset.json").write_text(json.dumps(dataset, indent=4))
    (model_dir / "dataset_fingerprint.json").write_text(json.dumps(fingerprint_dict(spacing_zyx), indent=4))
    arch = _architecture(_network_keys(size, network), size.patch_size)  # nnunetv2's network, not ours
    for fold in folds:
        torch.manual_seed(seed if seed is not None else hash((folder, fold)) % 2**31)
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, len(labels) + 1, allow_init=True, deep_supervision=False)
        _spread_output(net, torch)
        fold_dir = model_dir / f"fold_{fold}"
        fold_dir.mkdir(exist_ok=True)
        write_checkpoint(fold_dir / "checkpoint_final.pth", net, checkpoint_trainer or trainer, plans, configuration,
                         fold, dataset, mirroring="NoMirroring" not in trainer, numpy_1=plans_format == "old")
        (fold_dir / "debug.json").write_text(json.dumps(_debug_json(trainer, configuration, fold), indent=4))
        (fold_dir / "progress.png").write_bytes(_png())
    return model_dir


def _spread_output(net, torch) -> None:
    """Scale the final 1x1 convolution so that every label wins somewhere (busier label maps)."""
    final = net.decoder.seg_layers[-1]
    with torch.no_grad():
        final.weight.mul_(8.0)
        final.bias.zero_()


def write_task_models(results_dir: Path, task_name: str, speed: str = "normal", size: NetworkSize = TINY,
                      seed: int = 0, checkpoint_trainer: Optional[str] = None,
                      plans_format: Optional[str] = None, network: str = "PlainConvUNet",
                      model_size: str = "big") -> list[Path]:
    """Write every model of a task's mode, with the registry's folders, trainers and spacings.

    ``model_size`` "small": total_v3's smaller models under their own plans (``nnUNetResEncUNetLPlans_8``): a
    residual-encoder U-Net, planned by an nnunetv2 that writes the ``architecture`` entry (the ResEnc presets came
    with 2.4), so the plans are in the current format unless ``plans_format`` says otherwise.
    """
    from totalseg_engine.tasks import get_task

    task = get_task(task_name)
    mode = task.sized_mode(speed, model_size)
    if model_size == "small":
        network, plans_format = "ResidualEncoderUNet", plans_format or "new"
    written = []
    for i, model in enumerate(mode.models):
        labels = model.classes or task.classes
        folder = model.folder or f"Dataset{model.dataset_id:03d}_test"
        spacing = mode.spacing or (1.5, 1.5, 1.5)
        written.append(write_model_folder(results_dir, folder, model.trainer, model.plans, model.configuration,
                                          labels, spacing, size, task.modality,
                                          folds=model.folds or (0,), seed=seed + i,
                                          checkpoint_trainer=checkpoint_trainer, plans_format=plans_format,
                                          network=network))
    return written


# ------------------------------------------------------------------------------------------------- zips


def release_zip(parent: Path, mac: bool = False, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of the ``DatasetXXX_*`` folders in ``parent`` as ``zip -r`` makes it (directory entries included).

    ``mac``: as a Mac's "Compress" re-makes it, with ``__MACOSX/…/._name`` AppleDouble entries and ``.DS_Store``
    files beside the real ones.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for path in sorted(Path(parent).rglob("*")):
            name = path.relative_to(parent).as_posix()
            if path.is_dir():
                archive.writestr(name + "/", b"")
                if mac:
                    archive.writestr(f"{name}/.DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(64))
                continue
            archive.write(path, name)
            if mac:
                head, _, tail = name.rpartition("/")
                archive.writestr(f"__MACOSX/{head}/._{tail}", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    return buffer.getvalue()
