"""Same weights, same inputs: does our engine give the official TotalSegmentator's segmentation?

The official ``totalsegmentator==2.18.0`` runs in its own virtual environment (it pins packages that conflict
with slicer-core, and needs a torch whose torchvision loads); this script creates it on first use. Both tools
get one weights folder in the release layout: models of nnU-Net's default CT size for the 3 mm and 6 mm
models, small ones for the 1.5 mm part models and MR (random weights give busy, image-dependent label maps, so
every step before and after the network is exercised). Each case runs both command lines on the same input and
prints per-case mean Dice, the worst class larger than 1 cm³, and statistics differences.

    python benchmarks/parity.py                       # all cases
    python benchmarks/parity.py --cases fast dicom    # some of them
    python benchmarks/parity.py --runtime torch       # our torch runtime instead of ONNX Runtime
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from official import DATA, ROOT, build_weights, child_env, official_venv


@dataclass(frozen=True)
class Case:
    name: str
    input: str
    flags: tuple[str, ...]
    statistics: bool = False


@dataclass
class Outcome:
    case: Case
    dice: dict[str, float] = field(default_factory=dict)
    large: dict[str, bool] = field(default_factory=dict)
    stats_diff: float | None = None
    seconds: tuple[float, float] = (0.0, 0.0)


CASES = [
    Case("fast", "example_ct.nii.gz", ("--fast",), statistics=True),
    Case("normal", "example_ct_sm.nii.gz", ()),
    Case("fastest", "example_ct.nii.gz", ("--fastest",)),
    Case("roi_subset", "example_ct_sm.nii.gz", ("--roi_subset", "liver", "spleen", "aorta")),
    Case("body_seg", "example_ct_sm.nii.gz", ("--fast", "--body_seg")),
    Case("force_split", "example_ct.nii.gz", ("--fast", "--force_split")),
    Case("total_mr", "example_mr_sm.nii.gz", ("--task", "total_mr")),
    Case("dicom", "example_ct_dicom", ("--fast",)),
    Case("lps", "example_ct_lps.nii.gz", ("--fast",)),
    Case("anisotropic", "example_ct_aniso.nii.gz", ("--fast",)),
]


# ------------------------------------------------------------------ inputs


def derived_inputs(folder: Path) -> None:
    """The CT stored in LPS order, and resampled to an anisotropic 0.8 x 0.8 x 2.5 mm grid."""
    from scipy import ndimage

    ct = nib.load(DATA / "example_ct.nii.gz")
    lps = ct.as_reoriented(np.array([[0, -1], [1, -1], [2, 1]]))
    nib.save(lps, folder / "example_ct_lps.nii.gz")
    zoom = np.asarray(ct.header.get_zooms()[:3]) / np.array([0.8, 0.8, 2.5])
    data = ndimage.zoom(ct.get_fdata(), zoom, order=1).astype(np.int16)
    affine = ct.affine.copy()
    affine[:3, :3] = affine[:3, :3] / zoom
    nib.save(nib.Nifti1Image(data, affine), folder / "example_ct_aniso.nii.gz")


# ------------------------------------------------------------------ running and comparing


def run(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def input_path(case: Case, work: Path) -> Path:
    return work / case.input if (work / case.input).exists() else DATA / case.input


def run_case(case: Case, work: Path, official_bin: Path, env: dict, device: str, runtime: str,
             reuse_official: bool = False) -> Outcome:
    folder = work / case.name
    for side in ("official", "ours"):
        (folder / side).mkdir(parents=True, exist_ok=True)
    source = input_path(case, work)
    common = ["-i", str(source), "--ml", "-d", device, *case.flags] + (["--statistics"] if case.statistics else [])
    official = 0.0
    if not (reuse_official and (folder / "official" / "seg.nii.gz").exists()):
        official = run([str(official_bin / "TotalSegmentator"), *common, "-o",
                        str(folder / "official" / "seg.nii.gz")], env)
    ours = run([sys.executable, "-m", "totalseg_engine", *common, "-o", str(folder / "ours" / "seg.nii.gz"),
                "--overwrite", "--offline", "--runtime", runtime], env)
    outcome = compare(case, folder)
    outcome.seconds = (official, ours)
    return outcome


def compare(case: Case, folder: Path) -> Outcome:
    from totalseg_engine import imageio

    official_img = nib.load(folder / "official" / "seg.nii.gz")
    ours_img = imageio.reorient_to_grid(nib.load(folder / "ours" / "seg.nii.gz"), official_img)
    a, b = np.asanyarray(official_img.dataobj), np.asanyarray(ours_img.dataobj)
    label_map = imageio.read_label_map(official_img)
    voxel_ml = float(np.prod(official_img.header.get_zooms()[:3])) / 1000
    outcome = Outcome(case)
    for label, name in label_map.items():
        x, y = a == label, b == label
        total = x.sum() + y.sum()
        if total == 0:
            continue
        outcome.dice[name] = 2 * float((x & y).sum()) / float(total)
        outcome.large[name] = x.sum() * voxel_ml > 1.0
    if case.statistics:
        outcome.stats_diff = statistics_difference(folder)
    return outcome


def statistics_difference(folder: Path) -> float:
    """Largest relative volume difference (%) between the two statistics.json files, over non-empty classes."""
    official = json.loads((folder / "official" / "statistics.json").read_text())
    ours = json.loads((folder / "ours" / "statistics.json").read_text())
    worst = 0.0
    for name, values in official.items():
        reference = values["volume"]
        if reference > 0:
            worst = max(worst, 100 * abs(ours[name]["volume"] - reference) / reference)
    return worst


def report(outcomes: list[Outcome]) -> None:
    print(f"{'case':12} {'classes':>7} {'mean Dice':>10} {'min Dice >1cm3':>15} {'official s':>11} {'ours s':>7}")
    for o in outcomes:
        dice = list(o.dice.values())
        large = [d for name, d in o.dice.items() if o.large[name]]
        print(f"{o.case.name:12} {len(dice):7d} {np.mean(dice) if dice else float('nan'):10.5f} "
              f"{min(large) if large else float('nan'):15.5f} {o.seconds[0]:11.1f} {o.seconds[1]:7.1f}")
        worst = sorted(o.dice.items(), key=lambda kv: kv[1])[:3]
        print("             worst: " + ", ".join(f"{name} {d:.4f}" for name, d in worst))
        if o.stats_diff is not None:
            print(f"             statistics: largest volume difference {o.stats_diff:.3f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=[c.name for c in CASES])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "parity")
    parser.add_argument("--official-venv", type=Path, default=ROOT / ".venv-official")
    parser.add_argument("--official-bin", type=Path, help="folder with an installed official TotalSegmentator")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", default="auto", help="our CPU runtime: auto, onnxruntime, torch or nnunet")
    parser.add_argument("--reuse-official", action="store_true",
                        help="keep official outputs of an earlier run in --work (to compare another runtime)")
    args = parser.parse_args()
    official_bin = args.official_bin or official_venv(args.official_venv)
    args.work.mkdir(parents=True, exist_ok=True)
    home = args.work / "home"
    if not home.exists():
        build_weights(home)
    derived_inputs(args.work)
    env = child_env(home)
    outcomes = [run_case(c, args.work, official_bin, env, args.device, args.runtime, args.reuse_official)
                for c in CASES if c.name in args.cases]
    report(outcomes)


if __name__ == "__main__":
    main()
