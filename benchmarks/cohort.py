"""Cases per hour and peak memory of a cohort, four ways, on the same machine, models and images, in one run:

(a) a shell loop of the official ``TotalSegmentator``, (b) a shell loop of our ``TotalSegmentator``,
(c) ``totalseg_batch`` on a local Dask cluster of 1 and of 2 workers (``--workers``), with the default runtime
(torch: labels identical to the single-case command's), and with 1 worker and ``--runtime torch_compile``
(``--compiled-workers``; each worker compiles the network once, from inductor's on-disk cache after the first
time on a machine).

The cohort is ``--cases`` distinct CTs made from the shared example_ct (each a few slices shorter than the
last), ``total --fast``, one multilabel file per case (``--ml``) or the class files (``--class-files``). Peak
memory is the largest sum of the resident memory of the whole process tree (Dask's scheduler, nannies and
workers included), sampled every 50 ms. For (c) the manifest's per-stage seconds say where the time goes.

    python benchmarks/cohort.py                      # 8 cases, official loop, our loop, batch with 1 and 2 workers
    python benchmarks/cohort.py --skip-official --workers 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from official import DATA, ROOT, build_weights, child_env, official_venv
from speed import Measurement, measure
from train_fixture import DEFAULT_HOME

TRAINED = DEFAULT_HOME.parent / "trained-head2"  # the fixture the parity and speed tables used


def make_cohort(folder: Path, count: int) -> list[Path]:
    """``count`` distinct CTs: example_ct with 0, 2, 4... slices taken off the top."""
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    ct = nib.load(DATA / "example_ct.nii.gz")
    data = np.asanyarray(ct.dataobj)
    paths = []
    for index in range(count):
        path = folder / f"case{index:02d}.nii.gz"
        if not path.exists():
            nib.save(nib.Nifti1Image(data[..., : data.shape[2] - 2 * index], ct.affine, ct.header), path)
        paths.append(path)
    return paths


def loop(program: str, cases: list[Path], out: Path, flags: list[str], env: dict) -> Measurement:
    """One shell running the single-case command once per case, as cohort scripts do."""
    suffix = ".nii.gz" if "--ml" in flags else ""
    commands = [shlex.join([program, "-i", str(case), "-o", str(out / (case.name.split(".")[0] + suffix)), *flags])
                for case in cases]
    return measure(["bash", "-c", " && ".join(commands)], env)


def where_time_goes(outdir: Path) -> str:
    """Sum of each engine stage over the cases, from the manifest."""
    totals: dict[str, float] = defaultdict(float)
    count = 0
    for line in (outdir / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        count += 1
        totals["case"] += record.get("seconds", 0.0)
        for stage, seconds in (record.get("stages") or {}).items():
            totals[stage] += seconds
    return ", ".join(f"{stage} {seconds / count:.1f}" for stage, seconds in sorted(totals.items(), key=lambda kv:
                                                                                   -kv[1]))


def report(name: str, result: Measurement, cases: int, reference: Measurement | None) -> str:
    per_hour = cases * 3600 / result.seconds
    ratio = f"{reference.seconds / result.seconds:5.2f}x" if reference else "     "
    return f"{name:34} {result.seconds:8.1f} s {per_hour:8.0f} cases/h {ratio} {result.peak_mib:8.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--compiled-workers", type=int, nargs="*", default=[1])
    parser.add_argument("--home", type=Path, help="weights home (default: the trained fixture, else random)")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "cohort")
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--class-files", action="store_true", help="one file per class instead of --ml")
    args = parser.parse_args()
    home = args.home or (TRAINED if TRAINED.is_dir() else args.work / "home")
    if not home.is_dir():
        build_weights(home)
    env = child_env(home)
    cases = make_cohort(args.work / "cases", args.cases)
    flags = ["--fast", "-d", "cpu"] + ([] if args.class_files else ["--ml"])
    ours_bin = Path(sys.executable).parent
    results: list[tuple[str, Measurement]] = []
    print(f"{len(cases)} cases, weights {home}, outputs {'class files' if args.class_files else '--ml'}", flush=True)
    if not args.skip_official:
        out = args.work / "official"
        shutil.rmtree(out, ignore_errors=True)
        official = str(official_venv(ROOT / ".venv-official") / "TotalSegmentator")
        results.append(("(a) loop of the official command", loop(official, cases, out, flags, env)))
        print(report(*results[-1], len(cases), None), flush=True)
    out = args.work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    ours = loop(str(ours_bin / "TotalSegmentator"), cases, out, [*flags, "--offline", "-q"], env)
    results.append(("(b) loop of our command", ours))
    print(report(*results[-1], len(cases), None), flush=True)
    plan = [(workers, "torch") for workers in args.workers] + [(w, "torch_compile") for w in args.compiled_workers]
    for workers, runtime in plan:
        out = args.work / f"batch{workers}_{runtime}"
        shutil.rmtree(out, ignore_errors=True)
        batch = measure([str(ours_bin / "totalseg_batch"), "-i", str(args.work / "cases"), "-o", str(out), *flags,
                         "--offline", "-q", "--workers", str(workers), "--runtime", runtime], env)
        results.append((f"(c) batch, {workers} worker{'s' * (workers > 1)}, {runtime}", batch))
        print(report(*results[-1], len(cases), ours), f"vs (b);  per case: {where_time_goes(out)}", flush=True)
    official_result = results[0][1] if not args.skip_official else None
    print("\nagainst the official loop:")
    for name, result in results:
        print(report(name, result, len(cases), official_result))


if __name__ == "__main__":
    main()
