"""TotalSegmentator engine: the segmentation pipeline behind the Slicer module, the command line, the Python API,
``totalseg_batch`` and ``totalseg_web``.

Qt-free and MRML-free: it imports only the standard library, numpy, nibabel, SimpleITK, scipy and (lazily, when a
model runs) torch and nnunetv2. The names below are its public interface, the only ones the packages above it
(``totalseg_slicer``, ``totalseg_web``, ``totalseg_batch`` and the Slicer module) use. They are imported on first
use, so that ``import totalseg_engine`` stays light: Slicer imports it at start-up, before nibabel or torch may
be installed.

The parts: :mod:`.request` (one request from every front end), :mod:`.case` (one case, input to output files),
:mod:`.core` (the in-memory pipeline, postprocessing, statistics), :mod:`.inference` (the networks on a device),
:mod:`.imageio`, :mod:`.outputs` (what a run writes), :mod:`.weights`, :mod:`.cli` (the commands), :mod:`.api`
(the official Python API), :mod:`.runner` (the engine as a child process) and :mod:`.lifeline` (child processes
that end with their parent), :mod:`.tasks` and :mod:`.terminology`
(the registry and the segment terminology, as data).
"""

from __future__ import annotations

from .lazy_exports import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, ...]] = {
    "errors": ("CancelledError", "DownloadError", "InvalidInputError", "InvalidOptionError", "LicenseError",
               "ModelPlansError", "OutputExistsError", "TotalSegmentatorError", "UnknownTaskError", "WeightsError",
               "WeightsMissingError"),
    "request": ("DEFAULT_BLOB_MM3", "OUTPUT_TYPES", "RUNTIMES", "SPEEDS", "SegmentationRequest"),
    "tasks": ("ModelSpec", "Task", "all_tasks", "get_task", "models_of_task"),
    "progress": ("ProgressCallback", "ProgressEvent", "ignore_progress"),
    "runner": ("EngineProcess", "FinishedMessage", "LogMessage", "ProgressMessage", "State", "cancel_all",
               "engine_command", "kill_process_group", "process_group_alive"),
    "lifeline": ("Lifeline",),
    "case": ("CaseResult", "segment_to_files", "switched_task"),
    "core.pipeline": ("Result", "required_models", "segment"),
    "core.model_runs": ("RunnerFactory", "default_runner_factory"),
    "outputs.surfaces": ("surface_file_has_triangles",),
    "outputs.targets": ("SURFACE_OUTPUT_TYPES", "is_file_output", "multi_output_paths", "statistics_file"),
    "terminology": ("segment_info",),
    "imageio": ("NIFTI_SUFFIXES", "SITK_SUFFIXES", "array_onto_grid", "atomic_output", "dicom_series_files",
                "load_image", "read_image", "read_label_map", "reorient_to_grid", "sitk_to_array", "split_suffix"),
    "weights": ("download_task", "ensure_weights", "get_license_key", "import_weights", "missing_models",
                "model_dir", "set_license_key"),
    "inference.cpu": ("THREADS_VARIABLE", "engine_process_environment", "use_cpu_threads"),
    "inference.allocator": ("reuse_freed_memory",),
    "cli.options": ("COHORT_REFUSED", "add_reporting_options", "add_request_arguments", "parse_command",
                    "request_from_args"),
    "inference.devices": ("AUTO_DEVICE", "CPU_DEVICE", "DEVICE_LIST_MODULE", "gpu_count"),
    "inference.resources": ("RESOURCE_CHECK_MODULE",),
}
_PUBLIC, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = ["__version__", *_PUBLIC]
