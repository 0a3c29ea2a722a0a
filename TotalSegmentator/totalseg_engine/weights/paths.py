"""Where TotalSegmentator keeps its files, identical to the official package's layout.

An existing ``~/.totalsegmentator`` (weights, config.json with the licence key) is reused as is.
"""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """``TOTALSEG_HOME_DIR`` or ``~/.totalsegmentator`` (``/tmp`` when HOME is ``/``, as in containers)."""
    if "TOTALSEG_HOME_DIR" in os.environ:
        return Path(os.environ["TOTALSEG_HOME_DIR"]).expanduser()
    home = Path.home()
    return (Path("/tmp") if str(home) == "/" else home) / ".totalsegmentator"


def weights_dir() -> Path:
    """Folder holding the nnU-Net result folders (``DatasetXXX_name/...``)."""
    if "TOTALSEG_WEIGHTS_PATH" in os.environ:
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"]).expanduser()
    return home_dir() / "nnunet" / "results"


def config_file() -> Path:
    """The official ``config.json`` (licence key, counters)."""
    return home_dir() / "config.json"


def onnx_cache_dir() -> Path:
    """ONNX exports of the downloaded networks (``TOTALSEG_ONNX_CACHE`` or ``<home>/onnx``); safe to delete."""
    if "TOTALSEG_ONNX_CACHE" in os.environ:
        return Path(os.environ["TOTALSEG_ONNX_CACHE"]).expanduser()
    return home_dir() / "onnx"
