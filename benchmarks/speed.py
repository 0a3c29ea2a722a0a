"""Wall time and peak memory of the official TotalSegmentator and of our engine, on the same CPU, models and inputs.

Each run is a fresh process (process start to output written). Peak memory is the largest sum of the resident
memory of the whole process tree (the official tool runs worker processes), sampled every 50 ms. Our network's
forward passes are timed inside the timed run itself (``timed_engine``), so the rest, the overhead, is that
run's own; the official's forward time is that of the same torch network in nnU-Net's predictor, run in
this process on the same tiles. Ours is timed after one warm-up run, which makes the one-time ONNX export of each model.

    python benchmarks/speed.py                                   # all cases, ONNX Runtime and torch
    python benchmarks/speed.py --cases normal_chest --runtimes torch
    python benchmarks/speed.py --cases fast_small --runtimes onnxruntime
    python benchmarks/speed.py --device gpu --runtimes nnunet    # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench_engine import forward_seconds
from official import DATA, ROOT, build_weights, child_env, official_venv
from timed_engine import parse_forward

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Case:
    name: str
    input: str
    flags: tuple[str, ...]


CASES = [
    Case("fast_small", "example_ct.nii.gz", ("--fast",)),
    Case("fast_chest", "chest_cta_1.5mm.nii.gz", ("--fast",)),
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


def time_ours(case: Case, runtime: str, work: Path, env: dict, device: str) -> Measurement:
    """One timed run of our CLI, after a warm-up run that makes the runtime's one-time ONNX export."""
    common = ["-i", str(DATA / case.input), "--ml", "-d", device, *case.flags, "--overwrite", "--offline",
              "--runtime", runtime]
    command = [sys.executable, str(ROOT / "benchmarks" / "timed_engine.py"), *common, "--progress-json"]
    warm = work / f"{case.name}_{runtime}_warm-up.nii.gz"
    if not warm.exists():
        measure([*command, "-o", str(warm)], env)
    return measure([*command, "-o", str(work / f"{case.name}_{runtime}.nii.gz")], env)


def official_forward(case: Case, device: str) -> float:
    """The official's forward passes: the same torch network in nnU-Net's predictor, on the same tiles."""
    speed = "fast" if "--fast" in case.flags else "normal"
    return forward_seconds(DATA / case.input, "total", speed, device, "nnunet", case.flags)[0]


def row(name: str, seconds: float, mib: float, forward: float, official: Optional[Measurement]) -> str:
    o_s = official.seconds if official else float("nan")
    o_m = official.peak_mib if official else float("nan")
    return (f"{name:24} {seconds:8.1f} {o_s / seconds:8.2f}x {mib:8.0f} {mib / o_m:6.2f} {forward:8.1f} "
            f"{100 * (seconds - forward) / seconds:7.0f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=[c.name for c in CASES])
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime", "torch"],
                        help="our CPU runtimes to time (nnunet: nnU-Net's own predictor inside our pipeline)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "speed")
    parser.add_argument("--official-venv", type=Path, default=ROOT / ".venv-official")
    parser.add_argument("--official-bin", type=Path, help="folder with an installed official TotalSegmentator")
    parser.add_argument("--ours-only", action="store_true", help="skip the official runs")
    args = parser.parse_args()
    official_bin = args.official_bin or (None if args.ours_only else official_venv(args.official_venv))
    args.work.mkdir(parents=True, exist_ok=True)
    home = args.work / "home"
    if not home.exists():
        build_weights(home)
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    env = child_env(home)
    print(f"{os.cpu_count()} cores, device {args.device}; each time is one fresh process, start to output written")
    print(f"{'case / tool':24} {'wall s':>8} {'speed-up':>9} {'peak MiB':>8} {'mem':>6} {'forward':>8} {'overhead':>8}")
    for case in (c for c in CASES if c.name in args.cases):
        official = None
        if official_bin is not None:
            official = measure([str(official_bin / "TotalSegmentator"), "-i", str(DATA / case.input), "--ml", "-d",
                                args.device, *case.flags, "-o", str(args.work / f"{case.name}_official.nii.gz")], env)
            print(row(f"{case.name} official", official.seconds, official.peak_mib,
                      official_forward(case, args.device), official))
        for runtime in args.runtimes:
            ours = time_ours(case, runtime, args.work, env, args.device)
            forward = parse_forward(ours.stderr)[0]
            print(row(f"{case.name} ours {runtime}", ours.seconds, ours.peak_mib, forward, official), flush=True)


if __name__ == "__main__":
    main()
