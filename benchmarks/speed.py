"""Wall time and peak memory of the official TotalSegmentator and of our engine, on the same CPU, models and inputs.

Each run is a fresh process (process start to output written). Peak memory is the largest sum of the resident
memory of the whole process tree (the official tool runs worker processes), sampled every 50 ms. The network's
forward passes are also timed alone (same networks, same number of sliding-window tiles), so the rest — the
overhead — is visible.

    python benchmarks/speed.py                         # all cases
    python benchmarks/speed.py --cases fast_small      # some
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

from bench_engine import count_tiles, forward_seconds
from official import DATA, ROOT, build_weights, child_env, official_venv

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
]


@dataclass
class Measurement:
    seconds: float
    peak_mib: float
    stdout: str


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
    return Measurement(seconds, peak[0] / 2**20, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=[c.name for c in CASES])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "speed")
    parser.add_argument("--official-venv", type=Path, default=ROOT / ".venv-official")
    parser.add_argument("--ours-only", action="store_true", help="skip the official runs")
    args = parser.parse_args()
    official_bin = None if args.ours_only else official_venv(args.official_venv)
    args.work.mkdir(parents=True, exist_ok=True)
    home = args.work / "home"
    if not home.exists():
        build_weights(home)
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    env = child_env(home)
    print(f"{'case':11} {'official s':>10} {'ours s':>7} {'speed-up':>8} {'official MiB':>12} {'ours MiB':>9} "
          f"{'mem ratio':>9} {'forward s':>9} {'overhead':>8}")
    for case in (c for c in CASES if c.name in args.cases):
        common = ["-i", str(DATA / case.input), "--ml", "-d", "cpu", *case.flags]
        out = args.work / f"{case.name}_ours.nii.gz"
        ours = measure([sys.executable, "-m", "totalseg_engine", *common, "-o", str(out), "--overwrite", "--offline",
                        "--progress-json"], env)
        tiles = count_tiles(ours.stdout.splitlines())
        forward = forward_seconds("total", "fast", tiles, "cpu") if "--fast" in case.flags else float("nan")
        official = None
        if official_bin is not None:
            official = measure([str(official_bin / "TotalSegmentator"), *common, "-o",
                                str(args.work / f"{case.name}_official.nii.gz")], env)
        o_s = official.seconds if official else float("nan")
        o_m = official.peak_mib if official else float("nan")
        overhead = (ours.seconds - forward) / ours.seconds if forward == forward else float("nan")
        print(f"{case.name:11} {o_s:10.1f} {ours.seconds:7.1f} {o_s / ours.seconds:8.2f} {o_m:12.0f} "
              f"{ours.peak_mib:9.0f} {ours.peak_mib / o_m:9.2f} {forward:9.1f} {100 * overhead:7.0f}%")


if __name__ == "__main__":
    main()
