"""Trial: are ONNX Runtime and OpenVINO faster than torch for the same nnU-Net network on this CPU, at the same answer?

Builds nnU-Net's default CT network (6 stages, 32->320 features, patch 128^3) from a plans file written by the
test model factory, exports it to ONNX, and times forward passes of each runtime on the same random patch (the
first pass, which allocates, separately). The answer must be the same: per-voxel argmax agreement and the largest
logit difference against torch are printed. Needs ``pip install onnxruntime``; OpenVINO is timed when
``pip install openvino`` has been run (it is not a dependency of the engine).

    python benchmarks/onnx_trial.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "TotalSegmentator"), str(ROOT / "Testing")]


def build_network(folder: Path):
    import torch
    from model_factory import NNUNET_DEFAULT_CT, write_model_folder
    from totalseg_engine.prediction import ModelRunner

    labels = {i: f"class_{i}" for i in range(1, 118)}
    model_dir = write_model_folder(folder, "Dataset297_trial", "nnUNetTrainer", "nnUNetPlans", "3d_fullres", labels,
                                   (3.0, 3.0, 3.0), NNUNET_DEFAULT_CT, seed=1)
    runner = ModelRunner(model_dir, [0], torch.device("cpu"), 0.5)
    return runner._predictor.network.eval(), runner._predictor.configuration_manager.patch_size


def time_it(fn, repeats: int) -> tuple[float, float]:
    """Seconds of the first call and mean seconds of ``repeats`` later calls."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return first, (time.perf_counter() - start) / repeats


def openvino_runner(onnx_path: Path):
    try:
        import openvino as ov
    except ImportError:
        return None
    compiled = ov.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": os.cpu_count() or 1,
                                                               "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[compiled.output(0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import onnxruntime as ort
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        network, patch = build_network(Path(tmp))
        x = torch.randn(1, 1, *patch)
        with torch.inference_mode():
            reference = network(x).numpy()
            timings = {"torch": time_it(lambda: network(x), args.repeats)}
        onnx_path = Path(tmp) / "net.onnx"
        torch.onnx.export(network, (x,), str(onnx_path), input_names=["x"], output_names=["logits"],
                          opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        runners = {"onnxruntime": lambda a: session.run(None, {"x": a})[0], "openvino": openvino_runner(onnx_path)}
        results = {}
        for name, run in runners.items():
            if run is not None:
                results[name] = run(x.numpy())
                timings[name] = time_it(lambda run=run: run(x.numpy()), args.repeats)
    print(f"patch {tuple(patch)}, {os.cpu_count()} threads, {args.repeats} repeats")
    torch_s = timings["torch"][1]
    for name, (first, mean) in timings.items():
        line = f"{name:12} {mean:6.2f} s per forward pass (first {first:5.2f} s)  {torch_s / mean:.2f}x torch"
        if name in results:
            agreement = float((results[name].argmax(1) == reference.argmax(1)).mean())
            line += (f"  argmax agreement {100 * agreement:.4f} %, "
                     f"max |logit difference| {np.abs(results[name] - reference).max():.1e}")
        print(line)


if __name__ == "__main__":
    main()
