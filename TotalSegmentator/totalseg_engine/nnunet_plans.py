"""What one nnU-Net v2 model folder says about its inference, read straight from plans.json and dataset.json.

Reading the two JSON files ourselves (instead of through nnunetv2's PlansManager) keeps nnunetv2, pandas and
torch's compiler stack out of the process when the network runs in ONNX Runtime or plain torch, which is most
of the start-up time of a small case. ``unsupported_reason`` names the rare plans this reader does not
reproduce exactly (a cascade, region-based labels, an unknown normalisation); those models run through
nnU-Net's own predictor instead.
"""

from __future__ import annotations

import json
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# The normalisation schemes whose arithmetic ``sliding_window.normalize`` reproduces.
KNOWN_NORMALIZATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization")


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


def read_model_plans(model_dir: Path, configuration: Optional[str] = None) -> ModelPlans:
    """Plans of ``configuration`` (the folder name's last part when not given) in a released model folder."""
    model_dir = Path(model_dir)
    plans = json.loads((model_dir / "plans.json").read_text())
    dataset = json.loads((model_dir / "dataset.json").read_text())
    configuration = configuration or model_dir.name.rsplit("__", 1)[-1]
    config = _resolve_configuration(plans["configurations"], configuration)
    architecture = config["architecture"]
    labels = dataset["labels"]
    channels = dataset.get("modality", dataset.get("channel_names", {}))
    return ModelPlans(
        configuration=configuration,
        patch_size=tuple(int(p) for p in config["patch_size"]),
        spacing=tuple(float(s) for s in config["spacing"]),
        normalization_schemes=tuple(config["normalization_schemes"]),
        use_mask_for_norm=tuple(bool(m) for m in config["use_mask_for_norm"]),
        intensity_properties=plans.get("foreground_intensity_properties_per_channel", {}),
        transpose_forward=tuple(plans["transpose_forward"]),
        transpose_backward=tuple(plans["transpose_backward"]),
        num_input_channels=len(channels),
        num_classes=_num_segmentation_heads(labels, dataset.get("regions_class_order")),
        network_class_name=architecture["network_class_name"],
        network_kwargs=dict(architecture["arch_kwargs"]),
        network_kwargs_to_import=tuple(architecture.get("_kw_requires_import", ())),
        has_regions=any(isinstance(v, (list, tuple)) for v in labels.values()),
        previous_stage=config.get("previous_stage"),
    )


def _resolve_configuration(configurations: dict, name: str, visited: tuple[str, ...] = ()) -> dict:
    """A configuration with everything it inherits (``inherits_from``) filled in, as nnU-Net resolves it."""
    if name not in configurations:
        raise ValueError(f"Configuration '{name}' is not in plans.json (it has {', '.join(configurations)}).")
    if name in visited:
        raise ValueError(f"plans.json configurations inherit from each other in a circle: {' -> '.join(visited)}")
    config = deepcopy(configurations[name])
    parent = config.get("inherits_from")
    if parent is None:
        return config
    resolved = _resolve_configuration(configurations, parent, (*visited, name))
    resolved.update(config)
    return resolved


def _num_segmentation_heads(labels: dict, regions_class_order) -> int:
    """One output per label (background included), or one per region for region-based models."""
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        return len(regions_class_order or []) or sum(1 for k in labels if k != "background")
    return len([k for k in labels if k != "ignore"])
