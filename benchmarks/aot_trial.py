"""Compile once, load in a fresh process: AOTInductor against eager torch and ``torch.compile`` (issue #28).

One 128^3 window of nnU-Net's default CT network (the ``total`` 3 mm network, random weights) on example_ct as the
pipeline prepares it. Prints: eager seconds per pass; the export and AOTInductor compile time and the package
size; then, in a fresh Python process (as a later run would), the package's load time, seconds per pass and the
argmax agreement with eager; each with and without our allocator (``reuse_freed_memory``), which decides whether
compiled kernels gain at all. ``--freezing`` compiles with inductor's freezing (constant folding, weight prepacking).

    python benchmarks/aot_trial.py [--freezing] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "TotalSegmentator"), str(ROOT / "Testing"), str(ROOT / "benchmarks")]


def passes(run, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return seconds


def allocation(enabled: bool):
    from totalseg_engine.inference.allocator import reuse_freed_memory

    return reuse_freed_memory() if enabled else contextlib.nullcontext()


def compile_package(folder: Path, freezing: bool, repeats: int) -> Path:
    """Build the network, time eager passes, export and compile it; the package and its test input beside it."""
    import torch
    from runtime_trial import example_window, random_model
    from totalseg_engine.inference import runtimes
    from totalseg_engine.inference.nnunet_plans import read_model_plans

    model_dir = random_model(folder)
    plans = read_model_plans(model_dir)
    network = runtimes.load_network(model_dir, 0, plans).eval()
    x = torch.from_numpy(example_window(plans))
    for allocator in (False, True):
        with allocation(allocator), torch.inference_mode():
            network(x)  # first pass: allocation
            seconds = passes(lambda: network(x), repeats)
        print(f"eager{' + allocator' if allocator else '':12}  {np.median(seconds):6.2f} s per pass", flush=True)
    with torch.inference_mode():
        np.save(folder / "argmax.npy", network(x).numpy().argmax(1))
    np.save(folder / "x.npy", x.numpy())
    started = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(network, (x,))
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    package = Path(torch._inductor.aoti_compile_and_package(exported, package_path=str(folder / "network.pt2"),
                                                             inductor_configs={"freezing": freezing}))
    print(f"export {export_s:.1f} s, AOTInductor compile {time.perf_counter() - started:.1f} s "
          f"(freezing {freezing}), package {package.stat().st_size / 1e6:.0f} MB", flush=True)
    return package


def load_and_run(package: Path, repeats: int) -> None:
    """In a fresh process: load the package and time it, with and without the allocator."""
    import torch

    folder = package.parent
    x = torch.from_numpy(np.load(folder / "x.npy"))
    reference = np.load(folder / "argmax.npy")
    for allocator in (False, True):
        with allocation(allocator):
            started = time.perf_counter()
            model = torch._inductor.aoti_load_package(str(package))
            load_s = time.perf_counter() - started
            with torch.inference_mode():
                first = passes(lambda m=model: m(x), 1)[0]
                seconds = passes(lambda m=model: m(x), repeats)
                output = model(x)
        labels = (output[0] if isinstance(output, (list, tuple)) else output).numpy().argmax(1)
        print(f"AOTInductor{' + allocator' if allocator else '':12} load {load_s:.2f} s, first pass {first:.2f} s, "
              f"{np.median(seconds):6.2f} s per pass, argmax agreement with eager "
              f"{100 * (labels == reference).mean():.5f} %", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freezing", action="store_true", help="compile with inductor's freezing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=Path, help=argparse.SUPPRESS)  # the fresh process's part
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if args.load:
        load_and_run(args.load, args.repeats)
        return
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_package(Path(tmp), args.freezing, args.repeats)
        subprocess.run([sys.executable, __file__, "--load", str(package), "--repeats", str(args.repeats)], check=True)


if __name__ == "__main__":
    main()
