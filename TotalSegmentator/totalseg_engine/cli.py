"""``TotalSegmentator -i ct.nii.gz -o out``: the official command line, on this engine.

Parses arguments (the official flags, see :mod:`cli_options`) and runs :func:`api.totalsegmentator`, which
segments once and writes every requested output (and the preview), so official scripts run unchanged; heavy
imports happen after parsing so ``--help`` and ``--list-tasks`` answer at once. Errors meant for the user
are printed as one message (no traceback) with exit code 1, unsupported options exit with 2 as argparse
errors do; a cancelled run (Ctrl+C) exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from . import cli_options
from .cli_options import build_parser
from .errors import CancelledError, InvalidOptionError, OutputExistsError, TotalSegmentatorError
from .progress import JsonLinesReporter, ProgressCallback, TerminalReporter, ignore_progress
from .tasks import all_tasks, get_task

if TYPE_CHECKING:
    import nibabel as nib
    import numpy as np

    from . import pipeline

# The official task switch when a DICOM series' Modality contradicts the task: (modality, task) -> task.
MODALITY_SWITCH = {("MR", "total"): "total_mr", ("CT", "total_mr"): "total"}


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


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot check itself: output types, ignored flags (one notice), the model size."""
    try:
        args.output_type = cli_options.output_types(args.output_type)
    except argparse.ArgumentTypeError as err:
        parser.error(f"argument -ot/--output_type: {err}")
    notice = cli_options.ignored_notice(args.ignored_flags)
    if notice:
        print(notice, file=sys.stderr)
    if args.model_size == "small" and args.task == "total_v3":
        parser.exit(2, "ERROR: option -ms (--model_size) is not supported by this implementation: "
                       "only the big total_v3 model is available.\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_options(parser, args)
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


def planned_outputs(output: Path, types: Sequence[str], task: str, ml: bool) -> dict[str, Path]:
    """Output type -> path: -o itself for one type, the official side-by-side names for several."""
    from . import api_options

    return api_options.output_paths(output.expanduser().absolute(), types, task, ml)


def _segment(args: argparse.Namespace) -> int:
    targets = write_segmentation(args)
    if not args.quiet and not args.progress_json:
        print(f"Segmentation written to {', '.join(str(path) for path in targets.values())}", file=sys.stderr)
    return 0


def write_segmentation(args: argparse.Namespace, runner_factory: Optional[pipeline.RunnerFactory] = None,
                       progress: Optional[ProgressCallback] = None) -> dict[str, Path]:
    """Segment ``args.input`` and write every output the options ask for; returns output type -> path.

    This is the whole single-case command after parsing; ``totalseg_batch`` calls it per case with its
    workers' loaded models (``runner_factory``) and its own ``progress``, so a cohort's outputs are the
    command's outputs.
    """
    from . import allocator, api, imageio

    args.task = switched_task(args.input, args.task)
    targets = planned_outputs(args.output, args.output_type, args.task, args.ml)
    ml = args.ml or len(targets) > 1
    for kind, path in targets.items():
        check_replaceable(args.input, path, kind, ml, args)
    with allocator.reuse_freed_memory():  # a run's own process: keep freed blocks for reuse throughout
        image = api.totalsegmentator(
            args.input, args.output, ml=args.ml, task=args.task, fast=args.fast, fastest=args.fastest,
            roi_subset=args.roi_subset, roi_subset_robust=args.roi_subset_robust, robust_crop=args.robust_crop,
            body_seg=args.body_seg, force_split=args.force_split, remove_small_blobs=args.remove_small_blobs,
            higher_order_resampling=args.higher_order_resampling, statistics=args.statistics,
            stats_aggregation=args.stats_aggregation, output_type=args.output_type, device=args.device,
            license_number=args.license_number, quiet=args.quiet, verbose=args.verbose, preview=args.preview,
            stats_include_incomplete=args.stats_include_incomplete, runtime=args.runtime,
            overwrite=not args.no_overwrite, download=not args.offline,
            progress=progress or _reporter(args),
            runner_factory=runner_factory)
    image = image[0] if isinstance(image, tuple) else image  # (image, statistics) with -s
    label_map = imageio.read_label_map(image)
    first_kind, first = next(iter(targets.items()))
    folder = first if first_kind == "nifti" and not ml else first.parent
    if args.task == "body" and folder == first and not args.no_derived_masks:
        write_derived_body_masks(image, label_map, args.input, folder, overwrite=not args.no_overwrite)
    return targets


def switched_task(source: Path, task: str) -> str:
    """The official switch between total and total_mr when a DICOM series' Modality says otherwise."""
    modality = dicom_modality(source)
    switched = MODALITY_SWITCH.get((modality or "", task))
    if switched:
        print(f"WARNING: the input is a DICOM series of modality {modality}, but task '{task}' is for "
              f"{'CT' if modality == 'MR' else 'MR'} images; running task '{switched}' instead.", file=sys.stderr)
        return switched
    return task


def dicom_modality(source: Path) -> Optional[str]:
    """The Modality tag of a DICOM input (folder or zip), read from its first readable file; else None."""
    import zipfile

    from . import imageio

    source = source.expanduser()
    if not source.exists() or not imageio.is_dicom_source(source):
        return None
    try:
        if source.is_dir():
            return next(filter(None, map(_file_modality, sorted(p for p in source.rglob("*") if p.is_file()))), None)
        with zipfile.ZipFile(source) as archive, tempfile.TemporaryDirectory() as tmp:
            for name in (n for n in archive.namelist() if not n.endswith("/")):
                modality = _file_modality(Path(archive.extract(name, tmp)))
                if modality:
                    return modality
    except (OSError, RuntimeError, zipfile.BadZipFile):
        return None
    return None


def _file_modality(path: Path) -> Optional[str]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader.GetMetaData("0008|0060").strip().upper() if reader.HasMetaDataKey("0008|0060") else None


def check_replaceable(source: Path, path: Path, kind: str, ml: bool, args: argparse.Namespace) -> None:
    """Refuse to write over the input itself, or (without --overwrite) over a file that no run wrote.

    Existing segmentation outputs are replaced as the official tool replaces them, so scripts can re-run
    into the same folder; --no-overwrite refuses any existing output instead (checked when writing).
    """
    if path.exists() and source.exists() and path.resolve() == source.expanduser().resolve():
        raise InvalidOptionError(f"Output {path} is the input itself; choose another output path.")
    if path.is_file() and not (args.overwrite or args.no_overwrite or is_segmentation_file(path, kind, ml)):
        raise OutputExistsError(f"{path} exists and is not a segmentation output; choose another output "
                                f"path, or pass --overwrite to replace it anyway.")


def is_segmentation_file(path: Path, kind: str, ml: bool) -> bool:
    """Whether an existing file looks like what this output writes (so replacing it loses no data)."""
    import nibabel as nib

    try:
        if kind == "nifti":  # label images are unsigned integers; images such as CTs are not
            return ml and nib.load(path).get_data_dtype().kind == "u"
        if kind == "seg_nrrd":
            with path.open("rb") as handle:
                head = handle.read(1 << 16)
            return head.startswith(b"NRRD") and b"Segment0_" in head
        import pydicom

        return pydicom.dcmread(path, stop_before_pixels=True).get("Modality") in ("SEG", "RTSTRUCT")
    except Exception:  # unreadable as that format: not ours
        return False


def body_and_skin(labels: np.ndarray, label_map: dict[int, str], ct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official derived masks of task body: body = trunc + extremities; skin = its outer shell at
    skin densities (-200..250 HU), without components of 5 voxels or fewer."""
    import numpy as np
    from scipy import ndimage

    wanted = [label for label, name in label_map.items() if name in ("body_trunc", "body_extremities")]
    body = np.isin(labels, wanted)
    outer = ndimage.binary_dilation(body, iterations=1)  # one voxel outside the body
    shell = outer & ~ndimage.binary_erosion(outer, iterations=3)
    shell &= (ct > -200) & (ct < 250)
    components, _ = ndimage.label(shell)
    sizes = np.bincount(components.ravel())
    skin = shell & (sizes[components] > 5)
    return body.astype(np.uint8), skin.astype(np.uint8)


def write_derived_body_masks(image: nib.Nifti1Image, label_map: dict[int, str], source: Path, folder: Path,
                             overwrite: bool) -> None:
    """body.nii.gz and skin.nii.gz beside the class files, as the official writes them for task body."""
    import numpy as np

    from . import imageio

    labels = np.asanyarray(image.dataobj)
    body, skin = body_and_skin(labels, label_map, imageio.load_image(source).get_fdata())
    for name, mask in (("body", body), ("skin", skin)):
        imageio.write_class_files(mask, image, {1: name}, folder, overwrite=overwrite)


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
