"""``TotalSegmentator -i ct.nii.gz -o out``: the official command line, on this engine.

Parses arguments, then calls :func:`api.totalsegmentator`; heavy imports happen after parsing so
``--help`` and ``--list-tasks`` answer at once. Errors meant for the user are printed as one
message (no traceback) with exit code 1; a cancelled run (Ctrl+C) exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .errors import CancelledError, TotalSegmentatorError
from .progress import JsonLinesReporter, TerminalReporter, ignore_progress
from .tasks import all_tasks, get_task

# Output types of api.OUTPUT_TYPES, repeated so that --help answers without importing the engine.
OUTPUT_TYPES = ("nifti", "seg_nrrd", "dicom_seg", "dicom_rtstruct")
# prediction.RUNTIMES, repeated for the same reason.
RUNTIMES = ("auto", "onnxruntime", "torch", "nnunet")
# Official options this engine accepts for compatibility but has no use for (thread counts, Nora).
IGNORED_OPTIONS = (("-nr", "--nr_thr_resamp", int), ("-ns", "--nr_thr_saving", int), ("-t", "--nora_tag", str))


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="TotalSegmentator",
                                description="Segment anatomical structures in CT and MR images (TotalSegmentator "
                                            "models on nnU-Net v2).")
    p.add_argument("-i", dest="input", metavar="filepath", type=Path,
                   help="Input image: NIfTI, NRRD, a folder of DICOM slices or a zip of them.")
    p.add_argument("-o", dest="output", metavar="directory", type=Path,
                   help="Output folder (one mask per class), or the output file with --ml or another -ot.")
    p.add_argument("-ot", "--output_type", default="nifti", choices=OUTPUT_TYPES,
                   help="nifti (default), seg_nrrd (a Slicer .seg.nrrd file with names and colours), or for "
                        "DICOM input dicom_seg (DICOM SEG) or dicom_rtstruct (RT Structure Set), -o a .dcm file.")
    p.add_argument("-ml", "--ml", action="store_true", help="Write one multilabel NIfTI file instead of a folder.")
    p.add_argument("-ta", "--task", default="total", help="Task to run (see --list-tasks). Default: total.")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("-f", "--fast", action="store_true", help="Use the 3 mm model (faster, less accurate).")
    speed.add_argument("-ff", "--fastest", action="store_true", help="Use the 6 mm model (fastest).")
    p.add_argument("-rs", "--roi_subset", nargs="+", metavar="class",
                   help="Only these classes (task total/total_mr); runs only the part models needed.")
    p.add_argument("-rc", "--robust_crop", action="store_true",
                   help="Crop with the 3 mm model instead of the 6 mm one (slower, more robust).")
    p.add_argument("-bs", "--body_seg", action="store_true", help="Crop to the body first (CT only).")
    p.add_argument("-fs", "--force_split", action="store_true",
                   help="Process the image in three slabs along z (less memory, lower accuracy).")
    p.add_argument("-rmb", "--remove_small_blobs", nargs="?", const=200.0, default=False, type=positive_float,
                   metavar="mm3", help="Remove connected components smaller than mm3 (default 200).")
    p.add_argument("-ho", "--higher_order_resampling", action="store_true",
                   help="Let nnU-Net resample (higher order) instead of linear resampling to the task spacing.")
    p.add_argument("-s", "--statistics", action="store_true", help="Write statistics.json (volume, mean intensity).")
    p.add_argument("-sii", "--stats_include_incomplete", action="store_true",
                   help="Also report classes that touch the image border.")
    p.add_argument("-d", "--device", default="gpu", help="gpu, gpu:N, cpu or mps (default gpu, CPU if none).")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="What runs the network on the CPU: auto or torch (identical to the official labels), "
                        "onnxruntime (faster, not bit-identical), or nnunet (nnU-Net's own predictor). "
                        "GPUs always use nnU-Net's.")
    p.add_argument("-l", "--license_number", help="Licence key for licensed tasks (stored for later runs).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing output.")
    p.add_argument("--offline", action="store_true", help="Never download weights; fail if they are missing.")
    p.add_argument("--progress-json", action="store_true",
                   help="Print progress as one JSON object per line on stdout (for the Slicer panel).")
    p.add_argument("-lt", "--list-tasks", action="store_true", help="List all tasks and exit.")
    p.add_argument("-lc", "--list-classes", nargs="?", const="total", metavar="task",
                   help="List the classes of a task (default total) and exit.")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="Print nothing but errors.")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="Show tracebacks of errors.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for short, long, kind in IGNORED_OPTIONS:
        p.add_argument(short, long, type=kind, help=argparse.SUPPRESS)
    return p


def format_tasks() -> str:
    """One line per task: name, modality, speeds, class count, licence mark."""
    rows = [f"{'task':32} {'modality':8} {'speeds':22} {'classes':>7}  licence"]
    for task in all_tasks().values():
        rows.append(f"{task.name:32} {task.modality:8} {','.join(task.speeds):22} {len(task.classes):>7}  "
                    f"{'required' if task.licensed else 'open'}")
    return "\n".join(rows)


def format_classes(task_name: str) -> str:
    task = get_task(task_name)
    return "\n".join(f"{label:>4}  {name}" for label, name in sorted(task.classes.items()))


def _interrupt_on_sigterm() -> None:
    """Turn SIGTERM (the panel's Cancel) into KeyboardInterrupt so atomic writes clean up before exiting."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list_tasks:
            print(format_tasks())
            return 0
        if args.list_classes is not None:
            print(format_classes(args.list_classes))
            return 0
        if args.input is None or args.output is None:
            parser.error("both -i (input) and -o (output) are required for a segmentation")
        return _segment(args)
    except CancelledError:
        print("Cancelled.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("Interrupted; nothing was written.", file=sys.stderr)
        return 130
    except TotalSegmentatorError as err:
        if args.verbose:
            raise
        print(f"ERROR: {err}", file=sys.stderr)
        return 1


def _reporter(args: argparse.Namespace):
    if args.progress_json:
        return JsonLinesReporter(sys.stdout)
    if args.quiet:
        return ignore_progress
    return TerminalReporter(sys.stderr)


def _segment(args: argparse.Namespace) -> int:
    from . import allocator, api, licensing

    if args.license_number:
        licensing.set_license_key(args.license_number)
    with allocator.reuse_freed_memory():  # a run's own process: keep freed blocks for reuse throughout
        api.totalsegmentator(
            args.input, args.output, ml=args.ml, task=args.task, fast=args.fast, fastest=args.fastest,
            roi_subset=args.roi_subset, robust_crop=args.robust_crop, body_seg=args.body_seg,
            force_split=args.force_split, remove_small_blobs=args.remove_small_blobs,
            higher_order_resampling=args.higher_order_resampling, statistics=args.statistics,
            stats_include_incomplete=args.stats_include_incomplete, device=args.device,
            runtime=args.runtime, output_type=args.output_type, overwrite=args.overwrite,
            download=not args.offline, progress=_reporter(args))
    if not args.quiet and not args.progress_json:
        print(f"Segmentation written to {args.output}", file=sys.stderr)
    return 0


def run() -> None:
    """Console entry point: the command as a program (exit code, SIGTERM handled)."""
    _interrupt_on_sigterm()
    end_process(main())


def end_process(code: int) -> None:
    """End the process without Python's teardown, once everything it wrote is flushed.

    Tearing down torch's modules and the run's arrays one object at a time takes most of a second; the kernel
    frees the memory at once. By now every output has been written, closed and renamed into place, and every
    worker thread has been joined, so nothing is left for the teardown to finish.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can reach the reader anyway
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
