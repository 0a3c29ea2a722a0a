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
    from totalseg_engine.weights import paths

    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    small = NetworkSize(features=(8, 16, 32, 64), patch_size=(64, 64, 64))
    plan = [("total", "fast", NNUNET_DEFAULT_CT), ("total", "fastest", NNUNET_DEFAULT_CT), ("total", "normal", small),
            ("body", "fast", small), ("total_mr", "fast", small), ("total_mr", "normal", small)]
    for task, speed, size in plan:
        write_task_models(paths.weights_dir(), task, speed, size, seed=7, checkpoint_trainer="nnUNetTrainer",
                          plans_format=plans_format)


def input_path(name: str, work: Path) -> Path:
    """An input the scripts derive into their work folder (LPS, anisotropic, chest_large), else a shared one."""
    return work / name if (work / name).exists() else DATA / name


def child_env(home: Path) -> dict:
    """Environment of both tools' processes: one weights folder, our engine importable, no proxies."""
    path = os.pathsep.join(p for p in (str(ROOT / "TotalSegmentator"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "TOTALSEG_HOME_DIR": str(home), "no_proxy": "*", "PYTHONPATH": path}


def large_chest(folder: Path) -> Path:
    """chest_cta as a scanner's 512x512 slices hold it: 0.78 mm in-plane (400 mm field), air around, 1.5 mm apart."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    target = folder / "chest_large.nii.gz"
    if target.exists():
        return target
    ct = nib.load(DATA / "chest_cta_1.5mm.nii.gz")
    spacing = np.array([400 / 512, 400 / 512, 1.5])
    zoom = np.asarray(ct.header.get_zooms()[:3]) / spacing
    data = ndimage.zoom(np.asanyarray(ct.dataobj).astype(np.float32), zoom, order=1)
    out = np.full((512, 512, data.shape[2]), -1024, dtype=np.int16)
    offset = [(512 - s) // 2 for s in data.shape[:2]]
    out[offset[0]:offset[0] + data.shape[0], offset[1]:offset[1] + data.shape[1]] = np.round(data)
    affine = ct.affine.copy()
    affine[:3, :3] = ct.affine[:3, :3] / zoom
    affine[:3, 3] -= affine[:3, :2] @ np.array(offset, dtype=float)
    nib.save(nib.Nifti1Image(out, affine), target)
    return target
