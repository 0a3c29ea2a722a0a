"""Same weights, same inputs: does our engine give the official TotalSegmentator's segmentation?

The official ``totalsegmentator==2.18.0`` runs in its own virtual environment (it pins packages that conflict
with slicer-core, and needs a torch whose torchvision loads); this script creates it on first use. Both tools
get the same weights folder in the release layout: models of nnU-Net's default CT size for the 3 mm and 6 mm
models, small ones for the 1.5 mm part models and MR (random weights give busy, image-dependent label maps, so
every step before and after the network is exercised), with checkpoints as nnU-Net's trainer writes them. The
folder is built twice from the same weights: with plans in nnU-Net's old format, as the weights were released,
and in the current format. Each case runs the official command line and ours (once per runtime) on the same
input and folder, and prints per-case mean Dice, the worst class larger than 1 cm³, statistics differences,
and whether each tool's labels are the same on both folders.

    python benchmarks/parity.py                                   # all cases, both formats, both runtimes
    python benchmarks/parity.py --cases fast dicom --formats old  # some of them
    python benchmarks/parity.py --runtimes torch --reuse-official # our torch runtime against earlier official runs
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
from official import DATA, ROOT, build_weights, child_env, input_path, official_venv


@dataclass(frozen=True)
class Case:
    name: str
    input: str
    flags: tuple[str, ...]
    statistics: bool = False


@dataclass
class Outcome:
    case: Case
    plans_format: str
    runtime: str
    dice: dict[str, float] = field(default_factory=dict)
    large: dict[str, bool] = field(default_factory=dict)
    stats_diff: float | None = None
    seconds: tuple[float, float] = (0.0, 0.0)


FORMATS = ("old", "new")  # old: nnU-Net's plans format before 2.3, as the weights were released


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


def run_case(case: Case, folder: Path, work: Path, official_bin: Path, env: dict, device: str,
             runtimes: list[str], plans_format: str, reuse_official: bool = False) -> list[Outcome]:
    """Run the official tool once and ours once per runtime on one weights folder; compare each with it."""
    source = input_path(case.input, work)
    common = ["-i", str(source), "--ml", "-d", device, *case.flags] + (["--statistics"] if case.statistics else [])
    official = 0.0
    (folder / "official").mkdir(parents=True, exist_ok=True)
    if not (reuse_official and (folder / "official" / "seg.nii.gz").exists()):
        official = run([str(official_bin / "TotalSegmentator"), *common, "-o",
                        str(folder / "official" / "seg.nii.gz")], env)
    outcomes = []
    for runtime in runtimes:
        ours_dir = folder / f"ours-{runtime}"
        ours_dir.mkdir(parents=True, exist_ok=True)
        seconds = run([sys.executable, "-m", "totalseg_engine", *common, "-o", str(ours_dir / "seg.nii.gz"),
                       "--overwrite", "--offline", "--runtime", runtime], env)
        outcome = compare(case, folder / "official", ours_dir, plans_format, runtime)
        outcome.seconds = (official, seconds)
        outcomes.append(outcome)
    return outcomes


def differing_voxels(first: Path, second: Path) -> int:
    """Voxels whose label differs between two segmentations of the same input (on the first one's grid)."""
    from totalseg_engine import imageio

    a = nib.load(first)
    b = imageio.reorient_to_grid(nib.load(second), a)
    return int((np.asanyarray(a.dataobj) != np.asanyarray(b.dataobj)).sum())


def compare(case: Case, official_dir: Path, ours_dir: Path, plans_format: str, runtime: str) -> Outcome:
    from totalseg_engine import imageio

    official_img = nib.load(official_dir / "seg.nii.gz")
    ours_img = imageio.reorient_to_grid(nib.load(ours_dir / "seg.nii.gz"), official_img)
    a, b = np.asanyarray(official_img.dataobj), np.asanyarray(ours_img.dataobj)
    label_map = imageio.read_label_map(official_img)
    voxel_ml = float(np.prod(official_img.header.get_zooms()[:3])) / 1000
    outcome = Outcome(case, plans_format, runtime)
    for label, name in label_map.items():
        x, y = a == label, b == label
        total = x.sum() + y.sum()
        if total == 0:
            continue
        outcome.dice[name] = 2 * float((x & y).sum()) / float(total)
        outcome.large[name] = x.sum() * voxel_ml > 1.0
    if case.statistics:
        outcome.stats_diff = statistics_difference(official_dir, ours_dir)
    return outcome


def statistics_difference(official_dir: Path, ours_dir: Path) -> float:
    """Largest relative volume difference (%) between the two statistics.json files, over non-empty classes."""
    official = json.loads((official_dir / "statistics.json").read_text())
    ours = json.loads((ours_dir / "statistics.json").read_text())
    worst = 0.0
    for name, values in official.items():
        reference = values["volume"]
        if reference > 0:
            worst = max(worst, 100 * abs(ours[name]["volume"] - reference) / reference)
    return worst


def _cell(outcome: Outcome) -> str:
    dice = list(outcome.dice.values())
    large = [d for name, d in outcome.dice.items() if outcome.large[name]]
    return f"{np.mean(dice) if dice else float('nan'):.5f} ({min(large) if large else float('nan'):.5f})"


def report(outcomes: list[Outcome], work: Path, formats: list[str], runtimes: list[str]) -> None:
    """One row per case: mean Dice (lowest Dice of a class > 1 cm³) per plans format and runtime."""
    columns = [(f, r) for r in runtimes for f in formats]
    print("mean Dice against the official tool on the same folder (lowest class > 1 cm3 in brackets)")
    print(f"{'case':12} {'classes':>7} " + " ".join(f"{f + ' plans, ' + r:>24}" for f, r in columns))
    for case in dict.fromkeys(o.case for o in outcomes):
        cells = {(o.plans_format, o.runtime): o for o in outcomes if o.case == case}
        classes = max(len(o.dice) for o in cells.values())
        print(f"{case.name:12} {classes:7d} " + " ".join(f"{_cell(cells[c]) if c in cells else '-':>24}"
                                                          for c in columns))
        for (plans_format, runtime), o in cells.items():
            worst = ", ".join(f"{name} {d:.4f}" for name, d in sorted(o.dice.items(), key=lambda kv: kv[1])[:3])
            stats = f"; statistics: largest volume difference {o.stats_diff:.3f} %" if o.stats_diff is not None else ""
            print(f"{'':13}{plans_format}/{runtime}: worst {worst}{stats}; seconds official {o.seconds[0]:.1f}, "
                  f"ours {o.seconds[1]:.1f}")
        if set(FORMATS) <= set(formats):
            sides = ["official", *(f"ours-{r}" for r in runtimes)]
            same = [f"{side} {differing_voxels(*(work / f / case.name / side / 'seg.nii.gz' for f in FORMATS))}"
                    for side in sides]
            print(f"{'':13}voxels that differ between old and new plans: " + ", ".join(same))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=[c.name for c in CASES])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "parity")
    parser.add_argument("--official-venv", type=Path, default=ROOT / ".venv-official")
    parser.add_argument("--official-bin", type=Path, help="folder with an installed official TotalSegmentator")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"],
                        help="our CPU runtimes to compare: torch (auto), onnxruntime, nnunet")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS,
                        help="plans formats of the weights folders (old: as released)")
    parser.add_argument("--reuse-official", action="store_true",
                        help="keep official outputs of an earlier run in --work (to compare another runtime)")
    args = parser.parse_args()
    official_bin = args.official_bin or official_venv(args.official_venv)
    args.work.mkdir(parents=True, exist_ok=True)
    derived_inputs(args.work)
    outcomes = []
    for plans_format in args.formats:
        home = args.work / f"home-{plans_format}"
        if not home.exists():
            build_weights(home, plans_format)
        env = child_env(home)
        for case in CASES:
            if case.name in args.cases:
                outcomes += run_case(case, args.work / plans_format / case.name, args.work, official_bin, env,
                                     args.device, args.runtimes, plans_format, args.reuse_official)
    report(outcomes, args.work, args.formats, args.runtimes)


if __name__ == "__main__":
    main()
