"""Time the engine end to end and its network forward passes alone, on this machine.

Builds a model folder of nnU-Net's default CT size (6 stages, 32->320 features, patch 128^3) in the
release layout for the task/mode asked, runs ``python -m totalseg_engine`` as a child process (process
start to output written), and reports wall time, peak memory (max RSS of the child) and the share of
the time spent outside the network's forward passes.

    python benchmarks/bench_engine.py --input ../shared/data/totalsegmentator-tests/example_ct.nii.gz --fast
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "TotalSegmentator"), str(ROOT / "Testing")]

from timed_engine import ForwardClock, parse_forward  # noqa: E402


def build_models(home: Path, task: str, speed: str) -> None:
    from model_factory import NNUNET_DEFAULT_CT, write_task_models

    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    from totalseg_engine.weights import paths

    write_task_models(paths.weights_dir(), task, speed, NNUNET_DEFAULT_CT, seed=0)


def run_engine(args: argparse.Namespace, out: Path) -> tuple[float, float, float, int]:
    """Wall seconds, peak RSS (MiB), forward seconds and forward calls of one engine run in a child process."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "timed_engine.py"), "-i", str(args.input), "-o", str(out), "--ml",
           "-ta", args.task, "-d", args.device, "--runtime", args.runtime, "--offline", "--progress-json"]
    cmd += {"fast": ["--fast"], "fastest": ["--fastest"], "normal": []}[args.speed]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "TotalSegmentator")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"engine failed:\n{proc.stderr}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, peak_mib, *parse_forward(proc.stderr)


def forward_seconds(image: Path, task: str, speed: str, device: str, runtime: str,
                    flags: tuple[str, ...] = ()) -> tuple[float, int]:
    """Seconds spent in network forward passes during one in-process run of the same case, and their count.

    For a runtime that the timed process does not report itself (nnU-Net's predictor standing in for the
    official tool's network): same models and tiles, each forward call timed.
    """
    from totalseg_engine import SegmentationRequest, default_runner_factory, segment

    clock = ForwardClock()
    roi = list(flags[flags.index("--roi_subset") + 1:]) if "--roi_subset" in flags else None
    request = SegmentationRequest(task=task, speed=speed, roi_subset=roi, device=device, runtime=runtime,
                                  download=False)
    segment(image, request, runner_factory=clock.factory(default_runner_factory(device, runtime)))
    return clock.seconds, clock.calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--task", default="total")
    parser.add_argument("--speed", default="fast", choices=["normal", "fast", "fastest"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "torch", "nnunet"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        build_models(home, args.task, args.speed)
        run_engine(args, Path(tmp) / "warm-up.nii.gz")  # makes the ONNX export, once per model
        wall, peak, forward, tiles = run_engine(args, Path(tmp) / "seg.nii.gz")
    overhead = max(0.0, wall - forward)
    print(f"input            {args.input.name}")
    print(f"task / speed     {args.task} / {args.speed} on {args.device} ({args.runtime}), {os.cpu_count()} cores")
    print(f"wall time        {wall:8.1f} s   (process start to output written)")
    print(f"peak memory      {peak:8.0f} MiB (max RSS of the engine process)")
    print(f"forward passes   {forward:8.1f} s   ({tiles} tiles, timed inside the same run)")
    print(f"overhead         {overhead:8.1f} s   ({100 * overhead / wall:.0f} % of wall time)")


if __name__ == "__main__":
    main()
