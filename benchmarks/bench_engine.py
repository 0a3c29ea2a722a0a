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


def build_models(home: Path, task: str, speed: str) -> None:
    from model_factory import NNUNET_DEFAULT_CT, write_task_models

    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    from totalseg_engine import paths

    write_task_models(paths.weights_dir(), task, speed, NNUNET_DEFAULT_CT, seed=0)


def run_engine(args: argparse.Namespace, out: Path) -> tuple[float, float, list[str]]:
    """Wall seconds and peak RSS (MiB) of one engine run in a child process, plus its progress lines."""
    cmd = [sys.executable, "-m", "totalseg_engine", "-i", str(args.input), "-o", str(out), "--ml",
           "-ta", args.task, "-d", args.device, "--offline", "--progress-json"]
    cmd += {"fast": ["--fast"], "fastest": ["--fastest"], "normal": []}[args.speed]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "TotalSegmentator")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"engine failed:\n{proc.stderr}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, peak_mib, proc.stdout.splitlines()


def forward_seconds(task: str, speed: str, tiles: int, device: str) -> float:
    """Time ``tiles`` forward passes of the same network on random patches (the irreducible part)."""
    import torch
    from totalseg_engine import weights
    from totalseg_engine.prediction import ModelRunner, configure_threads, select_device
    from totalseg_engine.tasks import get_task

    torch_device = select_device(device)
    configure_threads(torch_device)
    total = 0.0
    for spec in get_task(task).mode(speed).models:
        runner = ModelRunner(weights.model_dir(spec), spec.folds, torch_device, 0.5)
        network = runner._predictor.network.to(torch_device).eval()
        patch = runner._predictor.configuration_manager.patch_size
        x = torch.randn(1, runner.num_input_channels, *patch, device=torch_device)
        with torch.inference_mode():
            network(x)  # warm-up
            start = time.perf_counter()
            for _ in range(tiles):
                network(x)
            total += time.perf_counter() - start
    return total


def count_tiles(progress_lines: list[str]) -> int:
    from totalseg_engine.progress import parse_event_line

    events = [parse_event_line(line) for line in progress_lines]
    return sum(1 for e in events if e and e.stage == "predict" and e.fraction is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--task", default="total")
    parser.add_argument("--speed", default="fast", choices=["normal", "fast", "fastest"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        build_models(home, args.task, args.speed)
        wall, peak, lines = run_engine(args, Path(tmp) / "seg.nii.gz")
        tiles = count_tiles(lines)
        forward = forward_seconds(args.task, args.speed, tiles, args.device)
    overhead = max(0.0, wall - forward)
    print(f"input            {args.input.name}")
    print(f"task / speed     {args.task} / {args.speed} on {args.device}, {os.cpu_count()} cores")
    print(f"wall time        {wall:8.1f} s   (process start to output written)")
    print(f"peak memory      {peak:8.0f} MiB (max RSS of the engine process)")
    print(f"forward passes   {forward:8.1f} s   ({tiles} tiles of the same network, timed alone)")
    print(f"overhead         {overhead:8.1f} s   ({100 * overhead / wall:.0f} % of wall time)")


if __name__ == "__main__":
    main()
