"""Forward passes of a released nnU-Net network on the CPU: plain torch, or ONNX Runtime or OpenVINO on a cached export.

ONNX Runtime runs nnU-Net's default CT network about 1.25 times faster than torch on a 2-core AVX2 CPU and
needs neither torch nor nnunetv2 in the process once the export exists (their imports take seconds). OpenVINO
runs the same export. The export is made once per checkpoint with torch, written atomically into
``paths.onnx_cache_dir()`` with a note of the checkpoint it came from, and made again when that checkpoint
changes.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import TotalSegmentatorError
from ..imageio import atomic_output
from ..weights import paths
from ..weights.archive import CHECKPOINT
from .cpu import cpu_threads
from .nnunet_plans import ModelPlans
from .sliding_window import HalfCasts

ONNX_OPSET = 17
Forward = Callable[[np.ndarray], np.ndarray]
# Where dynamic_network_architectures (0.4 and later) keeps nnU-Net's U-Nets. nnunetv2's conversion of old-format
# plans still names ResidualEncoderUNet in ``architectures.residual_unet``, a module that no longer exists.
NETWORK_MODULE = "dynamic_network_architectures.architectures.unet"


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in modules)


def onnxruntime_available() -> bool:
    """ONNX Runtime and the onnx package (torch's exporter writes through it) are both installed."""
    return _installed("onnxruntime", "onnx")


def openvino_available() -> bool:
    """OpenVINO and the onnx package (for the export it reads) are both installed."""
    return _installed("openvino", "onnx")


def runtime_installed(runtime: str) -> bool:
    """Whether a CPU runtime's packages are there (torch's always are: it makes the exports)."""
    exported = {"onnxruntime": onnxruntime_available, "openvino": openvino_available}
    return exported[runtime]() if runtime in exported else True


def checkpoint_path(model_dir: Path, fold: int) -> Path:
    path = Path(model_dir) / f"fold_{fold}" / CHECKPOINT
    if not path.is_file():
        raise TotalSegmentatorError(f"Model file {path} is missing; re-import or re-download these weights.")
    return path


def load_checkpoint(model_dir: Path, fold: int) -> dict:
    """One fold's checkpoint, with a message naming the file when it is missing or unreadable.

    The file is memory-mapped: its tensors are read from the page cache as the network first uses them, instead
    of being copied in full before the run starts. Checkpoints in torch's legacy format cannot be mapped and are
    read whole.
    """
    import torch

    path = checkpoint_path(model_dir, fold)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # legacy format (or damaged: the plain read below says which)
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file: say which one
        raise TotalSegmentatorError(f"Could not read model file {path}: {err}. Re-download it.") from err


def network_class_path(name: str) -> str:
    """The importable path of the network class a plans file names.

    nnunetv2 looks a class it cannot import up by importing every module of
    ``dynamic_network_architectures.architectures``; some of those import timm and torchvision, which takes
    seconds and fails outright with CPU-only torch builds. A class that moved is found here by its name instead.
    """
    import pydoc

    for path in (name, f"{NETWORK_MODULE}.{name.rsplit('.', 1)[-1]}"):
        if pydoc.locate(path) is not None:
            return path
    raise TotalSegmentatorError(f"The network class {name} named in plans.json is not in the installed "
                                f"dynamic_network_architectures; update it with `pip install -U nnunetv2`.")


def empty_network(class_name: str, kwargs: dict, kwargs_to_import: Sequence[str], channels: int, classes: int):
    """The network's modules with no storage behind their weights (torch's meta device), built in milliseconds.

    Built on the CPU, every convolution would first fill its weights with a random initialisation that the
    checkpoint then overwrites: about 0.3 s for nnU-Net's default CT network.
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    class_path = network_class_path(class_name)
    with torch.device("meta"):
        return get_network_from_plans(class_path, kwargs, kwargs_to_import, channels, classes, allow_init=False,
                                      deep_supervision=False)


def load_network(model_dir: Path, fold: int, plans: ModelPlans):
    """The torch network of one fold, built from plans.json (no trainer lookup), weights loaded, in eval mode."""
    checkpoint = load_checkpoint(model_dir, fold)
    network = empty_network(plans.network_class_name, plans.network_kwargs, plans.network_kwargs_to_import,
                            plans.num_input_channels, plans.num_classes)
    try:  # the checkpoint's own tensors become the weights: no copy
        network.load_state_dict(checkpoint["network_weights"], assign=True)
    except (KeyError, RuntimeError) as err:
        raise TotalSegmentatorError(f"The weights in {checkpoint_path(model_dir, fold)} do not fit the network "
                                    f"described by plans.json ({err}). Re-download this model.") from err
    unset = [name for name, tensor in (*network.named_parameters(), *network.named_buffers()) if tensor.is_meta]
    if unset:
        raise TotalSegmentatorError(f"The checkpoint in {model_dir} has no values for {', '.join(unset[:3])}.")
    return network.float().eval()  # float(): a half-precision checkpoint computes like its float32 copy would


def torch_forward(model_dir: Path, fold: int, plans: ModelPlans) -> Forward:
    """Forward pass in torch on the CPU with all cores."""
    import torch

    torch.set_num_threads(cpu_threads())
    network = load_network(model_dir, fold, plans)

    def forward(patch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return network(torch.from_numpy(patch)).numpy()

    return forward


def compiled_forward(model_dir: Path, fold: int, plans: ModelPlans) -> Forward:
    """Forward pass of the network compiled by ``torch.compile`` (inductor's fused C++ kernels) on the CPU.

    A pass of nnU-Net's default CT network takes 1.5-1.8 times less than plain torch without the allocator's
    memory reuse, about 1.15 times less than the pipeline's plain torch with it, with logits as close to plain
    torch's as two plain runs are to each other (benchmarks/runtime_trial.py). The first pass compiles, which
    needs a C++ compiler and takes 15-45 s (inductor caches the result on disk), so it can pay off only in
    processes that segment many images: ``totalseg_batch``'s workers. Where compiling fails, the network runs
    in plain torch, with a warning.
    """
    import torch

    torch.set_num_threads(cpu_threads())
    network = load_network(model_dir, fold, plans)
    name = Path(model_dir).parent.name
    try:  # inductor's own import can fail: torch 2.13 reads its kernel templates in the locale's encoding
        run = [torch.compile(network, dynamic=False)]
    except Exception as err:
        _plain_torch_instead(err, name)
        run = [network]

    def forward(patch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            try:
                return run[0](torch.from_numpy(patch)).numpy()
            except Exception as err:  # no C++ compiler, or an inductor failure: never worse than plain torch
                if run[0] is network:
                    raise
                _plain_torch_instead(err, name)
                run[0] = network
                return network(torch.from_numpy(patch)).numpy()

    return forward


def _plain_torch_instead(err: Exception, name: str) -> None:
    warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err).strip()[:300]}); running {name} in plain "
                  f"torch instead.", stacklevel=3)


def onnx_forward(model_dir: Path, fold: int, plans: ModelPlans) -> Forward:
    """Forward pass in ONNX Runtime (CPU, all cores) on the cached export of this fold's checkpoint."""
    import onnxruntime as ort

    model = onnx_export(model_dir, fold, plans)
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads()
    options.log_severity_level = 3  # warnings about unused initialisers are noise to a user
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def forward(patch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: patch})[0]

    return forward


def openvino_forward(model_dir: Path, fold: int, plans: ModelPlans) -> Forward:
    """Forward pass in OpenVINO (CPU, all cores, float32 throughout) on the cached ONNX export of this fold."""
    import openvino

    model = onnx_export(model_dir, fold, plans)
    compiled = openvino.Core().compile_model(str(model), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": cpu_threads(),
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def forward(patch: np.ndarray) -> np.ndarray:
        return request.infer({0: patch})[output]  # a copy: the request's own buffer is reused by the next call

    return forward


FORWARDS = {"torch": torch_forward, "torch_compile": compiled_forward, "onnxruntime": onnx_forward,
            "openvino": openvino_forward}
EXPORTED = ("onnxruntime", "openvino")  # runtimes that run a cached ONNX export, without torch in the process


class TorchHalfCasts(HalfCasts):
    """Half-precision casts through torch's vectorised conversions, and the tile sum as nnU-Net writes it.

    The tile is added one class at a time: a class's product (1 MiB for a 64³ patch) is still in the cache
    when it is added, so the tile crosses memory once instead of once per operation (about 1.5 times faster).
    Each step is nnU-Net's own: a float32 product, added to the half sums in float32 and rounded.
    """

    def accumulate(self, region: np.ndarray, logits: np.ndarray, weights: np.ndarray) -> None:
        import torch

        prediction, target = torch.from_numpy(logits), torch.from_numpy(region)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the shared weights are read-only, and only read here
            weight = torch.from_numpy(weights)
        for product, total in zip(prediction, target):
            product *= weight
            total += product


def torch_half_casts() -> HalfCasts:
    """Half-precision casts through torch's vectorised conversions."""
    import torch

    return TorchHalfCasts(lambda a: torch.from_numpy(a).half().numpy(), lambda a: torch.from_numpy(a).float().numpy())


def half_casts(runtime: str) -> HalfCasts:
    """The fastest float16 conversions the runtime's process has: ONNX Runtime's where torch is not needed."""
    if runtime in EXPORTED and onnxruntime_available():
        return onnx_half_casts()
    return torch_half_casts()


def onnx_half_casts() -> HalfCasts:
    """Half-precision casts through ONNX Runtime's Cast operator (one thread each: callers run them in parallel)."""
    from onnx import TensorProto

    to_half = _cast_session(TensorProto.FLOAT, TensorProto.FLOAT16)
    to_float = _cast_session(TensorProto.FLOAT16, TensorProto.FLOAT)
    return HalfCasts(lambda a: to_half.run(None, {"x": np.ascontiguousarray(a)})[0],
                     lambda a: to_float.run(None, {"x": np.ascontiguousarray(a)})[0])


def _cast_session(source: int, target: int):
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=target)], "cast",
                              [helper.make_tensor_value_info("x", source, None)],
                              [helper.make_tensor_value_info("y", target, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnx_export(model_dir: Path, fold: int, plans: ModelPlans) -> Path:
    """Path of the ONNX export of one fold, exporting it first when missing or made from another checkpoint."""
    checkpoint = checkpoint_path(model_dir, fold)
    target = paths.onnx_cache_dir() / Path(model_dir).parent.name / Path(model_dir).name / f"fold_{fold}.onnx"
    note = target.with_suffix(".json")
    source = _fingerprint(checkpoint, plans)
    if target.is_file() and note.is_file() and _read_json(note) == source:
        return target
    _export(load_network(model_dir, fold, plans), plans, target)
    with atomic_output(note, overwrite=True) as temporary:
        temporary.write_text(json.dumps(source, indent=1), encoding="utf-8")
    return target


def _fingerprint(checkpoint: Path, plans: ModelPlans) -> dict:
    stat = checkpoint.stat()
    return {"checkpoint": str(checkpoint.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "patch_size": list(plans.patch_size), "channels": plans.num_input_channels, "opset": ONNX_OPSET}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _export(network, plans: ModelPlans, target: Path) -> None:
    """Trace the network on one patch into a temporary file beside ``target``, then rename it into place."""
    import torch

    example = torch.zeros(1, plans.num_input_channels, *plans.patch_size)
    # torch 2.5 added the dynamo exporter (the default from 2.9); the TorchScript one traces nnU-Net's networks
    # on every version, and older versions have no switch.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    try:
        with atomic_output(target, overwrite=True) as temporary, torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation notices: expected, and no use to a user
            torch.onnx.export(network, (example,), str(temporary), input_names=["image"], output_names=["logits"],
                              opset_version=ONNX_OPSET, **legacy)
    except Exception as err:
        raise TotalSegmentatorError(f"Could not export the network to ONNX ({err}); use --runtime torch.") from err
