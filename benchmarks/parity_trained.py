"""Is a faster CPU runtime at parity on a trained network? Each runtime against the official tool, and the
official tool against itself.

Runs on the weights home ``train_fixture.py`` writes (the ``total`` task's 3 mm model trained on the shared
CTs; the other models random). Per case: the official ``TotalSegmentator`` as a user runs it (torch using all
cores), the official tool on machines with other core counts (its torch uses as many threads as
``multiprocessing.cpu_count()`` says; a ``sitecustomize`` in the official processes makes that 1 or 4 here), and
our command once per runtime. Every output is compared with the default official run: mean Dice over its
classes, the lowest Dice of a class larger than 1 cm³, and the number of voxels whose label differs. Our torch
runtime reproduces nnU-Net's arithmetic (tests assert identical labels), so its difference from the official
tool here is that of torch 2.13 (ours) against torch 2.14.1 (the official venv's).

    python benchmarks/parity_trained.py                                  # all cases, runtimes, thread counts
    python benchmarks/parity_trained.py --cases fast dicom --runtimes torch onnxruntime --cpu-counts
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from official import ROOT, child_env, input_path, large_chest, official_venv
from parity import derived_inputs, run
from train_fixture import DEFAULT_HOME

CASES = {  # name: (input, flags); all through the trained 3 mm model
    "fast": ("example_ct.nii.gz", ("--fast",)),
    "fast_sm": ("example_ct_sm.nii.gz", ("--fast",)),
    "dicom": ("example_ct_dicom", ("--fast",)),
    "lps": ("example_ct_lps.nii.gz", ("--fast",)),
    "anisotropic": ("example_ct_aniso.nii.gz", ("--fast",)),
    "force_split": ("example_ct.nii.gz", ("--fast", "--force_split")),
    "chest": ("chest_cta_1.5mm.nii.gz", ("--fast",)),
    "chest_large": ("chest_large.nii.gz", ("--fast",)),
}
SITECUSTOMIZE = """import multiprocessing, os
_n = int(os.environ["PARITY_CPU_COUNT"])
multiprocessing.cpu_count = lambda: _n
"""


@dataclass
class Comparison:
    case: str
    side: str
    mean_dice: float
    lowest_large: float
    lowest_class: str
    differing: int
    voxels: int


def compare(case: str, side: str, reference: Path, other: Path) -> Comparison:
    from totalseg_engine import imageio

    ref_img = nib.load(reference)
    a = np.asanyarray(ref_img.dataobj)
    b = np.asanyarray(imageio.reorient_to_grid(nib.load(other), ref_img).dataobj)
    voxel_ml = float(np.prod(ref_img.header.get_zooms()[:3])) / 1000
    scores, large = [], {}
    for label in np.union1d(np.unique(a), np.unique(b)):
        if label == 0:
            continue
        x, y = a == label, b == label
        dice = 2 * float((x & y).sum()) / float(x.sum() + y.sum())
        scores.append(dice)
        if x.sum() * voxel_ml > 1.0:
            large[int(label)] = dice
    names = imageio.read_label_map(ref_img)
    worst = min(large, key=large.get) if large else None
    return Comparison(case, side, float(np.mean(scores)) if scores else 1.0,
                      large[worst] if worst is not None else 1.0, names.get(worst, "-"), int((a != b).sum()), a.size)


def official_run(official_bin: Path, source: Path, flags: tuple[str, ...], out: Path, env: dict,
                 cpu_count: int | None) -> None:
    if out.exists():
        return
    env = dict(env)
    if cpu_count is not None:
        hooks = Path(tempfile.mkdtemp(prefix="parity-cpus-"))
        (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["PYTHONPATH"] = f"{hooks}:{env['PYTHONPATH']}"
        env["PARITY_CPU_COUNT"] = str(cpu_count)
    out.parent.mkdir(parents=True, exist_ok=True)
    run([str(official_bin / "TotalSegmentator"), "-i", str(source), "--ml", "-d", "cpu", *flags, "-o", str(out)], env)


def ours_run(source: Path, flags: tuple[str, ...], runtime: str, out: Path, env: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "totalseg_engine", "-i", str(source), "--ml", "-d", "cpu", *flags, "-o", str(out),
         "--overwrite", "--offline", "--runtime", runtime], env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="weights home from train_fixture.py")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--cpu-counts", nargs="*", type=int, default=[1, 4],
                        help="core counts the official tool is also run as if it had (its default: all cores)")
    parser.add_argument("--variation-cases", nargs="*", default=["fast", "dicom", "chest_large"],
                        help="cases on which the official tool also runs with the other core counts")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "parity-trained")
    parser.add_argument("--official-venv", type=Path, default=ROOT / ".venv-official")
    parser.add_argument("--fresh", action="store_true", help="run the official tool again even where outputs exist")
    args = parser.parse_args()
    if not (args.home / "trained_fixture.json").exists():
        raise SystemExit(f"No trained fixture in {args.home}: run benchmarks/train_fixture.py first.")
    official_bin = official_venv(args.official_venv)
    args.work.mkdir(parents=True, exist_ok=True)
    derived_inputs(args.work)
    large_chest(args.work)
    env = child_env(args.home)
    results = []
    print(f"{'case':12} {'compared with official (all cores)':40} {'mean Dice':>10} {'lowest >1cm3':>13} "
          f"{'differing voxels':>18}  lowest class")
    for case in args.cases:
        name, flags = CASES[case]
        source = input_path(name, args.work)
        folder = args.work / case
        if args.fresh:
            for old in folder.glob("official*.nii.gz"):
                old.unlink()
        reference = folder / "official.nii.gz"
        official_run(official_bin, source, flags, reference, env, None)
        counts = args.cpu_counts if case in args.variation_cases else []
        sides = {f"official as on {n} core(s)": (folder / f"official_{n}cpu.nii.gz", n) for n in counts}
        for out, count in sides.values():
            official_run(official_bin, source, flags, out, env, count)
        sides_out = {side: out for side, (out, _) in sides.items()}
        for runtime in args.runtimes:
            out = folder / f"ours_{runtime}.nii.gz"
            ours_run(source, flags, runtime, out, env)
            sides_out[f"ours {runtime}"] = out
        for side, out in sides_out.items():
            result = compare(case, side, reference, out)
            results.append(result)
            print(f"{case:12} {side:40} {result.mean_dice:10.5f} {result.lowest_large:13.5f} "
                  f"{result.differing:10d} / {result.voxels:<9d} {result.lowest_class}", flush=True)
    (args.work / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
