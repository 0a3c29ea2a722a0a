"""Wall time and peak memory of the official TotalSegmentator and of our engine, on the same CPU, models and inputs.

Each run is a fresh process (process start to output written), ours repeated (``--repeats``, default 3; the
official ``--official-repeats``, default 1): the wall time shown is the median, the memory the lowest and
highest peak. Peak memory is the largest sum of the
resident memory of the whole process tree (the official tool runs worker processes), sampled every 50 ms; the
ratio divides our highest peak by the official's lowest. Our network's forward passes are timed inside the
timed run itself (``timed_engine``), so the rest, the overhead, is that run's own; the official's forward time
is that of the same torch network in nnU-Net's predictor, run in this process on the same tiles. Ours is timed
after one warm-up run, which makes the one-time ONNX export of each model.

The weights are the trained fixture of ``train_fixture.py`` when it exists (``--home``), else a folder of
random weights of the same sizes. ``fast_large`` is chest_cta as a scanner's 512x512 slices hold it (0.78 mm
in-plane, 512x512x191 voxels).

    python benchmarks/speed.py                                   # all cases, default runtime and torch
    python benchmarks/speed.py --cases normal_chest --runtimes torch --repeats 1
    python benchmarks/speed.py --device gpu --runtimes nnunet    # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench_engine import forward_seconds
from official import ROOT, build_weights, child_env, input_path, large_chest, official_venv
from timed_engine import parse_forward
from train_fixture import DEFAULT_HOME

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Case:
    name: str
    input: str
    flags: tuple[str, ...]


CASES = [
    Case("fast_small", "example_ct.nii.gz", ("--fast",)),
    Case("fast_chest", "chest_cta_1.5mm.nii.gz", ("--fast",)),
    Case("fast_large", "chest_large.nii.gz", ("--fast",)),  # 512x512x191 at 0.78 x 0.78 x 1.5 mm
    Case("roi_chest", "chest_cta_1.5mm.nii.gz", ("--roi_subset", "liver", "spleen")),
    Case("normal_sm", "example_ct_sm.nii.gz", ()),
    Case("normal_chest", "chest_cta_1.5mm.nii.gz", ()),  # a larger CT: five part models, many tiles each
]


@dataclass
class Measurement:
    seconds: float
    peak_mib: float
    stdout: str
    stderr: str


def tree_rss(pgid: int) -> int:
    """Resident bytes of every process in a process group."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            with open(f"/proc/{entry}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return total


def measure(command: list[str], env: dict) -> Measurement:
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return Measurement(seconds, peak[0] / 2**20, out, err)


@dataclass
class Repeated:
    """Several runs of one command: median wall time, lowest and highest peak, mean forward seconds."""

    runs: list[Measurement]
    forward: float = float("nan")

    @property
    def seconds(self) -> float:
        return statistics.median(m.seconds for m in self.runs)

    @property
    def peaks(self) -> tuple[float, float]:
        return min(m.peak_mib for m in self.runs), max(m.peak_mib for m in self.runs)


def time_ours(case: Case, runtime: str, work: Path, env: dict, device: str, repeats: int) -> Repeated:
    """Timed runs of our CLI, after a warm-up run that makes the runtime's one-time ONNX export."""
    common = ["-i", str(input_path(case.input, work)), "--ml", "-d", device, *case.flags, "--overwrite", "--offline",
              "--runtime", runtime]
    command = [sys.executable, str(ROOT / "benchmarks" / "timed_engine.py"), *common, "--progress-json"]
    warm = work / f"{case.name}_{runtime}_warm-up.nii.gz"
    if runtime not in ("torch", "nnunet") and not warm.exists():  # the others run a one-time ONNX export first
        measure([*command, "-o", str(warm)], env)
    runs = [measure([*command, "-o", str(work / f"{case.name}_{runtime}.nii.gz")], env) for _ in range(repeats)]
    return Repeated(runs, statistics.mean(parse_forward(m.stderr)[0] for m in runs))


def time_official(case: Case, official_bin: Path, work: Path, env: dict, device: str, repeats: int) -> Repeated:
    out = work / f"{case.name}_official.nii.gz"
    command = [str(official_bin / "TotalSegmentator"), "-i", str(input_path(case.input, work)), "--ml", "-d", device,
               *case.flags, "-o", str(out)]
    return Repeated([measure(command, env) for _ in range(repeats)])


def official_forward(case: Case, device: str, work: Path) -> float:
    """The official's forward passes: the same torch network in nnU-Net's predictor, on the same tiles."""
    speed = "fast" if "--fast" in case.flags else "normal"
    return forward_seconds(input_path(case.input, work), "total", speed, device, "nnunet", case.flags)[0]


def row(name: str, ours: Repeated, official: Optional[Repeated]) -> str:
    o_s = official.seconds if official else float("nan")
    o_m = official.peaks[0] if official else float("nan")
    low, high = ours.peaks
    return (f"{name:26} {ours.seconds:8.1f} {o_s / ours.seconds:8.2f}x {low:6.0f}-{high:<6.0f} {high / o_m:6.2f} "
            f"{ours.forward:8.1f} {100 * (ours.seconds - ours.forward) / ours.seconds:7.0f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=[c.name for c in CASES])
    parser.add_argument("--runtimes", nargs="+", default=["auto", "torch"],
                        help="our CPU runtimes to time (nnunet: nnU-Net's own predictor inside our pipeline)")
    parser.add_argument("--repeats", type=int, nargs="+", default=[3],
                        help="runs of ours per case: one number for every runtime, or one per runtime")
    parser.add_argument("--official-repeats", type=int, default=1, help="runs of the official tool per case")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME,
                        help="weights home (default: the trained fixture; random weights when it is missing)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "speed")
    parser.add_argument("--official-venv", type=Path, default=ROOT / ".venv-official")
    parser.add_argument("--official-bin", type=Path, help="folder with an installed official TotalSegmentator")
    parser.add_argument("--ours-only", action="store_true", help="skip the official runs")
    parser.add_argument("--official-forward", action="store_true",
                        help="also time the official's forward passes (nnU-Net's predictor in this process)")
    args = parser.parse_args()
    official_bin = args.official_bin or (None if args.ours_only else official_venv(args.official_venv))
    repeats_per_runtime = args.repeats * len(args.runtimes) if len(args.repeats) == 1 else args.repeats
    if len(repeats_per_runtime) != len(args.runtimes):
        parser.error("--repeats takes one number, or one per runtime")
    args.work.mkdir(parents=True, exist_ok=True)
    large_chest(args.work)
    home = args.home
    if not home.exists():
        home = args.work / "home"
        if not home.exists():
            build_weights(home)
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    env = child_env(home)
    print(f"{os.cpu_count()} cores, device {args.device}, weights {home}; each time is one fresh process, start to "
          f"output written; median of {'/'.join(map(str, repeats_per_runtime))} runs of ours "
          f"({args.official_repeats} of the official), "
          f"peak memory lowest-highest")
    print(f"{'case / tool':26} {'wall s':>8} {'speed-up':>9} {'peak MiB':>13} {'mem':>6} {'forward':>8} "
          f"{'overhead':>8}")
    for case in (c for c in CASES if c.name in args.cases):
        official = None
        if official_bin is not None:
            official = time_official(case, official_bin, args.work, env, args.device, args.official_repeats)
            if args.official_forward:
                official.forward = official_forward(case, args.device, args.work)
            print(row(f"{case.name} official", official, official), flush=True)
        for runtime, repeats in zip(args.runtimes, repeats_per_runtime):
            ours = time_ours(case, runtime, args.work, env, args.device, repeats)
            print(row(f"{case.name} ours {runtime}", ours, official), flush=True)


if __name__ == "__main__":
    main()
