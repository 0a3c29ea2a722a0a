"""What one nnU-Net v2 model folder says about its inference, read straight from plans.json and dataset.json.

Reading the two JSON files ourselves (instead of through nnunetv2's PlansManager) keeps nnunetv2, pandas and
torch's compiler stack out of the process when the network runs in ONNX Runtime or plain torch, which is most
of the start-up time of a small case. ``unsupported_reason`` names the rare plans this reader does not
reproduce exactly (a cascade, region-based labels, an unknown normalisation); those models run through
nnU-Net's own predictor instead.

Both plans formats are read. nnunetv2 2.3.1 (February 2024) moved the network's description into an
``architecture`` entry of each configuration; plans written before that (most of TotalSegmentator's released
weights) describe the U-Net with ``UNet_class_name``, ``UNet_base_num_features`` and friends, and nnunetv2
rebuilds the architecture from them when it loads them (``ConfigurationManager.__init__`` in
``nnunetv2/utilities/plans_handling/plans_handler.py``). ``_old_format_architecture`` performs the same
reconstruction, after ``inherits_from`` is resolved as nnunetv2 does, so both formats give the same
``ModelPlans``. A file this reader cannot understand raises :class:`ModelPlansError` naming the file and the key.
"""

from __future__ import annotations

import json
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelPlansError

# The normalisation schemes whose arithmetic ``sliding_window.normalize`` reproduces.
KNOWN_NORMALIZATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization")
# The statistics CTNormalization clips and scales with (nnunetv2's CTNormalization.run).
CT_INTENSITY_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")

PLAIN_CONV_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESIDUAL_ENCODER_UNET = "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"
# Old-format network names nnunetv2 can rebuild, with the keyword its per-stage encoder counts become.
OLD_FORMAT_NETWORKS = {"PlainConvUNet": (PLAIN_CONV_UNET, "n_conv_per_stage"),
                       "ResidualEncoderUNet": (RESIDUAL_ENCODER_UNET, "n_blocks_per_stage")}
# Every key the old-format reconstruction reads or removes; nnunetv2 fails on a plans file lacking one.
OLD_FORMAT_KEYS = ("UNet_class_name", "UNet_base_num_features", "unet_max_num_features", "n_conv_per_stage_encoder",
                   "n_conv_per_stage_decoder", "num_pool_per_axis", "pool_op_kernel_sizes", "conv_kernel_sizes")
_CONV_OPS = {1: "torch.nn.modules.conv.Conv1d", 2: "torch.nn.modules.conv.Conv2d", 3: "torch.nn.modules.conv.Conv3d"}
_INSTANCE_NORMS = {d: f"torch.nn.modules.instancenorm.InstanceNorm{d}d" for d in (1, 2, 3)}
_FIX_IT = "Re-download this model (or import it again from the release zip)."


@dataclass(frozen=True)
class ModelPlans:
    """The inference-relevant part of one configuration of a model folder."""

    configuration: str
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity_properties: dict
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    num_input_channels: int
    num_classes: int
    network_class_name: str
    network_kwargs: dict
    network_kwargs_to_import: tuple[str, ...]
    has_regions: bool = False
    previous_stage: Optional[str] = None

    @property
    def label_dtype(self) -> str:
        """nnU-Net's output type: uint8 below 255 foreground labels, else uint16."""
        return "uint8" if self.num_classes - 1 < 255 else "uint16"

    def unsupported_reason(self) -> Optional[str]:
        """Why the NumPy sliding window can't reproduce this model exactly (None when it can)."""
        if self.previous_stage:
            return f"it is a cascade stage (previous stage '{self.previous_stage}')"
        if self.has_regions:
            return "it predicts overlapping regions"
        if len(self.patch_size) != 3:
            return "it is not a 3-D configuration"
        unknown = sorted(set(self.normalization_schemes) - set(KNOWN_NORMALIZATIONS))
        if unknown:
            return f"its normalisation {', '.join(unknown)} is not one of {', '.join(KNOWN_NORMALIZATIONS)}"
        return None


class _Entries:
    """A JSON object of a model file; a missing or malformed entry raises an error naming the file and key."""

    def __init__(self, data: Any, file: Path, where: str = "") -> None:
        if not isinstance(data, dict):
            raise ModelPlansError(f"The model file {file} does not hold a JSON object{where}. {_FIX_IT}")
        self.data, self.file, self.where = data, file, where

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, convert=lambda value: value, note: str = ""):
        if key not in self.data:
            raise ModelPlansError(f"The model file {self.file} has no '{key}'{self.where}{note}. {_FIX_IT}")
        try:
            return convert(self.data[key])
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise ModelPlansError(f"The model file {self.file} has an unusable value for '{key}'{self.where}: "
                                  f"{self.data[key]!r}. {_FIX_IT}") from err

    def section(self, key: str) -> _Entries:
        return _Entries(self.get(key), self.file, f" in '{key}'{self.where}")


def read_model_plans(model_dir: Path, configuration: Optional[str] = None) -> ModelPlans:
    """Plans of ``configuration`` (the folder name's last part when not given) in a released model folder."""
    model_dir = Path(model_dir)
    plans = _Entries(_read_json(model_dir / "plans.json"), model_dir / "plans.json")
    dataset = _Entries(_read_json(model_dir / "dataset.json"), model_dir / "dataset.json")
    configuration = configuration or model_dir.name.rsplit("__", 1)[-1]
    config = _Entries(_resolve_configuration(plans.section("configurations"), configuration), plans.file,
                      f" of configuration '{configuration}'")
    class_name, kwargs, to_import = _network(config)
    labels = dataset.get("labels", dict)
    channels = dataset.get("channel_names" if "channel_names" in dataset else "modality", dict)
    normalization = config.get("normalization_schemes", lambda v: tuple(str(s) for s in v))
    return ModelPlans(
        configuration=configuration,
        patch_size=config.get("patch_size", lambda v: tuple(int(p) for p in v)),
        spacing=config.get("spacing", lambda v: tuple(float(s) for s in v)),
        normalization_schemes=normalization,
        use_mask_for_norm=config.get("use_mask_for_norm", lambda v: tuple(bool(m) for m in v)),
        intensity_properties=_intensity_properties(plans, normalization),
        transpose_forward=plans.get("transpose_forward", lambda v: tuple(int(a) for a in v)),
        transpose_backward=plans.get("transpose_backward", lambda v: tuple(int(a) for a in v)),
        num_input_channels=len(channels),
        num_classes=_num_segmentation_heads(labels, dataset.data.get("regions_class_order")),
        network_class_name=class_name,
        network_kwargs=kwargs,
        network_kwargs_to_import=to_import,
        has_regions=any(isinstance(v, (list, tuple)) for v in labels.values()),
        previous_stage=config.data.get("previous_stage"),
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ModelPlansError(f"The model file {path} is missing. {_FIX_IT}") from err
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelPlansError(f"Could not read the model file {path} ({err}). {_FIX_IT}") from err


def _resolve_configuration(configurations: _Entries, name: str, visited: tuple[str, ...] = ()) -> dict:
    """A configuration with everything it inherits (``inherits_from``) filled in, as nnU-Net resolves it."""
    if name not in configurations:
        raise ModelPlansError(f"Configuration '{name}' is not in {configurations.file} (it has "
                              f"{', '.join(configurations.data)}).")
    if name in visited:
        raise ModelPlansError(f"The configurations of {configurations.file} inherit from each other in a circle: "
                              f"{' -> '.join((*visited, name))}. {_FIX_IT}")
    config = _Entries(configurations.get(name), configurations.file, f" in configuration '{name}'").data
    parent = config.get("inherits_from")
    if parent is None:
        return deepcopy(config)
    resolved = _resolve_configuration(configurations, parent, (*visited, name))
    resolved.update(deepcopy(config))
    return resolved


def _network(config: _Entries) -> tuple[str, dict, tuple[str, ...]]:
    """Network class, its keyword arguments and those naming classes to import, from either plans format."""
    if "architecture" in config:
        architecture = config.section("architecture")
    else:
        architecture = _Entries(_old_format_architecture(config), config.file, config.where)
    to_import = architecture.data.get("_kw_requires_import", ())
    return (architecture.get("network_class_name", str), architecture.get("arch_kwargs", dict),
            tuple(str(k) for k in to_import))


def _old_format_architecture(config: _Entries) -> dict:
    """The ``architecture`` entry nnunetv2 (>= 2.3.1) builds from an old-format configuration.

    Every value is nnunetv2's: a wrong normalisation epsilon or activation slope would change the logits
    without any error, so the conversion is tested against nnunetv2's own.
    """
    note = " (nnU-Net's plans format before 2.3)"
    name = config.get("UNet_class_name", str, note)
    if name not in OLD_FORMAT_NETWORKS:
        raise ModelPlansError(f"The model file {config.file} names the network '{name}' in 'UNet_class_name'"
                              f"{config.where}; plans in nnU-Net's format before 2.3 can only describe "
                              f"{' or '.join(OLD_FORMAT_NETWORKS)}. {_FIX_IT}")
    values = {key: config.get(key, note=note) for key in OLD_FORMAT_KEYS}
    class_name, per_stage_key = OLD_FORMAT_NETWORKS[name]
    dimension = config.get("patch_size", len)
    if dimension not in _CONV_OPS:
        raise ModelPlansError(f"The model file {config.file} has a {dimension}-D 'patch_size'{config.where}. "
                              f"{_FIX_IT}")
    stages = config.get("n_conv_per_stage_encoder", len)
    base, most = (config.get(key, int) for key in ("UNet_base_num_features", "unet_max_num_features"))
    return {
        "network_class_name": class_name,
        "arch_kwargs": {
            "n_stages": stages,
            "features_per_stage": [min(base * 2 ** i, most) for i in range(stages)],
            "conv_op": _CONV_OPS[dimension],
            "kernel_sizes": deepcopy(values["conv_kernel_sizes"]),
            "strides": deepcopy(values["pool_op_kernel_sizes"]),
            per_stage_key: deepcopy(values["n_conv_per_stage_encoder"]),
            "n_conv_per_stage_decoder": deepcopy(values["n_conv_per_stage_decoder"]),
            "conv_bias": True,
            "norm_op": _INSTANCE_NORMS[dimension],
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _intensity_properties(plans: _Entries, normalization: tuple[str, ...]) -> dict:
    """Per-channel intensity statistics, under their name since nnU-Net 2.0 or the earlier ``_by_modality``."""
    for key in ("foreground_intensity_properties_per_channel", "foreground_intensity_properties_by_modality"):
        if key in plans:
            properties = plans.get(key, dict)
            break
    else:
        properties = {}
    for channel, scheme in enumerate(normalization):
        if scheme == "CTNormalization":
            where = f" for channel {channel}, which CTNormalization needs"
            if str(channel) not in properties:
                raise ModelPlansError(f"The model file {plans.file} has no "
                                      f"'foreground_intensity_properties_per_channel'{where}. {_FIX_IT}")
            stats = _Entries(properties[str(channel)], plans.file, where)
            for key in CT_INTENSITY_KEYS:
                stats.get(key, float)
    return properties


def _num_segmentation_heads(labels: dict, regions_class_order) -> int:
    """One output per label (background included), or one per region for region-based models."""
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        return len(regions_class_order or []) or sum(1 for k in labels if k != "background")
    return len([k for k in labels if k != "ignore"])
