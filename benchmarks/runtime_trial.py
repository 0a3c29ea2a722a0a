"""Which runtime runs nnU-Net's default CT network fastest on this CPU, and how far do its logits move?

One 128^3 forward pass of the ``total`` task's 3 mm network per runtime, on the real ``example_ct`` as the
pipeline prepares it (one window covers it), timed after a first pass that allocates and compiles. With
``--home`` the network is the trained fixture (``train_fixture.py``); without, random weights. For each
candidate: seconds per pass, the argmax agreement with torch, the largest logit difference, and how many
voxels have a gap between their two largest logits smaller than that runtime's difference there (the voxels
it could flip).

Candidates: torch (as our CPU runtime runs it), torch with ``channels_last_3d``, ``torch.compile`` (inductor),
a frozen TorchScript graph with oneDNN Graph fusion, bfloat16 autocast (only where the CPU has bf16
instructions), ONNX Runtime, and OpenVINO when ``pip install openvino`` has been run.

    python benchmarks/runtime_trial.py --home ~/.cache/totalseg-benchmarks/trained --repeats 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "TotalSegmentator"), str(ROOT / "Testing"), str(ROOT / "benchmarks")]


def random_model(folder: Path) -> Path:
    from model_factory import NNUNET_DEFAULT_CT, write_model_folder

    labels = {i: f"class_{i}" for i in range(1, 118)}
    return write_model_folder(folder, "Dataset297_trial", "nnUNetTrainer", "nnUNetPlans", "3d_fullres", labels,
                              (3.0, 3.0, 3.0), NNUNET_DEFAULT_CT, seed=1)


def example_window(plans) -> np.ndarray:
    """example_ct as the pipeline hands it to the network, padded to one window."""
    import nibabel as nib
    from official import DATA
    from totalseg_engine import geometry
    from totalseg_engine.inference import sliding_window

    ct = nib.as_closest_canonical(nib.load(DATA / "example_ct.nii.gz"))
    prepared = sliding_window.preprocess(geometry.to_nnunet([np.asarray(ct.dataobj)], (3.0, 3.0, 3.0)).data,
                                         plans.spacing, plans)
    padded, _ = sliding_window.pad_to_patch(prepared.data, plans.patch_size)
    return np.ascontiguousarray(padded[None].astype(np.float32))


def time_it(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Seconds of the first call and mean seconds of ``repeats`` later calls."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return first, (time.perf_counter() - start) / repeats


def torch_candidates(network, x) -> dict[str, Optional[Callable[[], np.ndarray]]]:
    import torch

    def plain(net=network, inp=x):
        with torch.inference_mode():
            return net(inp).numpy()

    def channels_last():
        net = network.to(memory_format=torch.channels_last_3d)
        inp = x.to(memory_format=torch.channels_last_3d)
        return lambda: plain(net, inp)

    def compiled():
        net = torch.compile(network, dynamic=False)
        return lambda: plain(net, x)

    def onednn_graph():
        torch.jit.enable_onednn_fusion(True)
        with torch.no_grad():
            frozen = torch.jit.freeze(torch.jit.trace(network, x))
        return lambda: plain(frozen, x)

    def bf16():
        if "bf16" not in Path("/proc/cpuinfo").read_text():
            return None  # emulated bfloat16 is slower than float32, and rounds more

        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return network(x).float().numpy()
        return run

    out = {"torch": plain}
    for name, make in (("torch channels_last_3d", channels_last), ("torch.compile", compiled),
                       ("torch oneDNN graph", onednn_graph), ("torch bf16 autocast", bf16)):
        try:
            out[name] = make()
        except Exception as err:  # report and go on: a candidate that cannot run is an answer too
            print(f"{name}: could not run ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
    return out


def exported_candidates(network, x, folder: Path) -> dict[str, Optional[Callable[[], np.ndarray]]]:
    import torch

    onnx_path = folder / "net.onnx"
    with torch.inference_mode():
        torch.onnx.export(network, (x,), str(onnx_path), input_names=["x"], output_names=["logits"],
                          opset_version=17, dynamo=False)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    array = x.numpy()
    out = {"onnxruntime": lambda: session.run(None, {"x": array})[0]}
    try:
        import openvino as ov

        compiled = ov.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": os.cpu_count() or 1,
                                                                   "INFERENCE_PRECISION_HINT": "f32",
                                                                   "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        out["openvino"] = lambda: request.infer({0: array})[compiled.output(0)]
    except ImportError:
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="weights home of the trained fixture (default: random weights)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    args = parser.parse_args()
    import torch
    from totalseg_engine.inference import runtimes
    from totalseg_engine.inference.allocator import reuse_freed_memory
    from totalseg_engine.inference.nnunet_plans import read_model_plans
    from train_fixture import fast_model_dir

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp, reuse_freed_memory():
        model_dir = fast_model_dir(args.home) if args.home else random_model(Path(tmp))
        plans = read_model_plans(model_dir)
        network = runtimes.load_network(model_dir, 0, plans)
        x = torch.from_numpy(example_window(plans))
        with torch.inference_mode():
            reference = network(x).numpy()[0]
        top = np.sort(reference, axis=0)[-2:]
        gap = top[1] - top[0]
        candidates = {**torch_candidates(network, x), **exported_candidates(network, x, Path(tmp))}
        print(f"{'weights: trained fixture' if args.home else 'weights: random'}; patch {tuple(plans.patch_size)}, "
              f"{os.cpu_count()} threads, {args.repeats} repeats; gap between the two largest logits: median "
              f"{np.median(gap):.3f}, 1st percentile {np.percentile(gap, 1):.4f}")
        torch_s = None
        for name, run in candidates.items():
            if run is None or (args.only and name not in args.only):
                continue
            first, mean = time_it(run, args.repeats)
            result = np.asarray(run())[0]
            torch_s = torch_s or mean
            difference = np.abs(result - reference).max(axis=0)
            agreement = float((result.argmax(0) == reference.argmax(0)).mean())
            print(f"{name:24} {mean:6.2f} s per pass (first {first:6.2f} s) {torch_s / mean:5.2f}x torch   "
                  f"argmax agreement {100 * agreement:8.4f} %   max |logit difference| {difference.max():.1e}   "
                  f"voxels with gap < 2x difference {int((gap < 2 * difference).sum())}", flush=True)


if __name__ == "__main__":
    main()
