"""What the parity and speed scripts share: the official package's environment and one weights folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "totalsegmentator-tests"
sys.path[:0] = [str(ROOT / "TotalSegmentator"), str(ROOT / "Testing")]

OFFICIAL_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1"]  # the pair that lies on this workplace's disk


def official_venv(folder: Path) -> Path:
    """The official package's own virtual environment (created once; several GB), with our nnU-Net version."""
    from importlib.metadata import version

    python = folder / "bin" / "python"
    if not (folder / "bin" / "TotalSegmentator").exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, *OFFICIAL_PACKAGES], check=True)
        subprocess.run([*pip, "totalsegmentator==2.18.0", f"nnunetv2=={version('nnunetv2')}"], check=True)
    return folder / "bin"


def build_weights(home: Path, plans_format: Optional[str] = None) -> None:
    """Every model the scripts run, in the release layout under ``home``.

    nnU-Net's default CT size (6 stages, 32->320 features, patch 128^3) for the 3 mm and 6 mm models; smaller
    networks for the 1.5 mm part models, the body model and MR, to keep runs to minutes on a CPU. The plans are
    in the format each dataset was released with (nnU-Net's old format for all of these) unless ``plans_format``
    says "old" or "new". The checkpoints hold everything nnU-Net's trainer saves and name ``nnUNetTrainer``, so
    the official trainer lookup finds a class; the folders keep the registry names.
    """
    from model_factory import NNUNET_DEFAULT_CT, NetworkSize, write_task_models
    from totalseg_engine import paths

    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    small = NetworkSize(features=(8, 16, 32, 64), patch_size=(64, 64, 64))
    plan = [("total", "fast", NNUNET_DEFAULT_CT), ("total", "fastest", NNUNET_DEFAULT_CT), ("total", "normal", small),
            ("body", "fast", small), ("total_mr", "fast", small), ("total_mr", "normal", small)]
    for task, speed, size in plan:
        write_task_models(paths.weights_dir(), task, speed, size, seed=7, checkpoint_trainer="nnUNetTrainer",
                          plans_format=plans_format)


def child_env(home: Path) -> dict:
    """Environment of both tools' processes: one weights folder, our engine importable, no proxies."""
    path = os.pathsep.join(p for p in (str(ROOT / "TotalSegmentator"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "TOTALSEG_HOME_DIR": str(home), "no_proxy": "*", "PYTHONPATH": path}
