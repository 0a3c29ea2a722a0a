"""The command line's flags: the official TotalSegmentator 2.18 ones, this engine's own, and as data the
official ones it does not implement.

Every official flag is registered explicitly on the command line so that no such flag is misread as another one
(``-ss`` as ``-s -s``): the ignored ones consume their value and are named in one notice, the
refused ones stop the run with a message naming the option.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import __version__

# Output types of api.OUTPUT_TYPES, repeated so that --help answers without importing the engine.
OUTPUT_TYPES = ("nifti", "seg_nrrd", "dicom_seg", "dicom_rtstruct")
# prediction.RUNTIMES, repeated for the same reason.
RUNTIMES = ("auto", "onnxruntime", "openvino", "torch", "torch_compile", "nnunet")


@dataclass(frozen=True)
class ForeignFlag:
    """An official flag without an implementation here: its names, arity and why it is not needed."""

    names: tuple[str, ...]  # as the official registers them: short form first
    reason: str
    takes_value: bool = False
    type: Callable[[str], Any] = str
    choices: Optional[tuple] = None

    @property
    def label(self) -> str:
        """``-ss (--skip_saving)``: how messages name the flag."""
        first, *others = self.names
        return f"{first} ({', '.join(others)})" if others else first

    @property
    def dest(self) -> str:
        return "foreign_" + self.names[-1].lstrip("-").replace("-", "_")


def resampling_order(text: str) -> int:
    """The official -ro range check, so a script passing a bad order still fails as it did."""
    value = int(text)
    if not 0 <= value <= 5:
        raise argparse.ArgumentTypeError("resampling order must be between 0 and 5")
    return value


# Flags without effect on the result here; their values are consumed and they are named once on stderr.
IGNORED = (
    ForeignFlag(("-nr", "--nr_thr_resamp"), "resampling runs in memory in one pass", True, int),
    ForeignFlag(("-ns", "--nr_thr_saving"), "outputs are written in one pass", True, int),
    ForeignFlag(("-ro", "--resampling_order"), "input resampling is linear as in the official default",
                True, resampling_order),
    ForeignFlag(("-t", "--nora_tag"), "there is no Nora integration", True),
    ForeignFlag(("-cp", "--crop_path"), "crop masks are computed in memory, never read from disk", True),
    ForeignFlag(("--debug",), "-v already shows tracebacks"),
    ForeignFlag(("--test",), "the official unit-test switch", True, int, (0, 1, 3)),
)

# Flags whose result this engine cannot produce: the run stops before any work.
REFUSED = (
    ForeignFlag(("-sl", "--save_lowres"), "outputs are always on the input grid"),
    ForeignFlag(("-r", "--radiomics"), "radiomics features (pyradiomics) are not computed"),
    ForeignFlag(("-rp", "--report"), "no JSON run report is written", True),
    ForeignFlag(("-sx", "--statistics_extra"), "statistics hold volume and intensity only"),
    ForeignFlag(("-ss", "--skip_saving"), "the segmentation is always written"),
    ForeignFlag(("-v1o", "--v1_order"), "classes keep the version 2 order"),
    ForeignFlag(("--higher_order_resampling_LEGACY", "--high_order_resampling_LEGACY"),
                "the legacy spline upsampling of the masks is not implemented; -ho is"),
    ForeignFlag(("-sp", "--save_probabilities"), "class probabilities are not saved", True),
)


class _NoteIgnored(argparse.Action):
    """Remember an ignored flag so that one notice names them all."""

    def __call__(self, parser, namespace, values, option_string=None):
        flag = self.const
        ignored = getattr(namespace, "ignored_flags", None) or []
        if flag not in ignored:
            namespace.ignored_flags = [*ignored, flag]


class _Refuse(argparse.Action):
    """Stop with exit code 2 (as argparse's own errors) and a message naming the flag."""

    def __call__(self, parser, namespace, values, option_string=None):
        flag: ForeignFlag = self.const
        parser.exit(2, f"ERROR: option {flag.label} is not supported by this implementation: {flag.reason}.\n")


def add_foreign_flags(parser: argparse.ArgumentParser) -> None:
    """Register every ignored and refused official flag (hidden from --help)."""
    parser.set_defaults(ignored_flags=[])
    for flags, action in ((IGNORED, _NoteIgnored), (REFUSED, _Refuse)):
        for flag in flags:
            extra = {"type": flag.type, "choices": flag.choices} if flag.takes_value else {}
            parser.add_argument(*flag.names, action=action, nargs=None if flag.takes_value else 0, const=flag,
                                dest=flag.dest, default=None, help=argparse.SUPPRESS, **extra)


def ignored_notice(flags: Sequence[ForeignFlag]) -> Optional[str]:
    """The one line naming the ignored flags a command line used, or None."""
    if not flags:
        return None
    parts = "; ".join(f"{flag.names[0]} ({flag.reason})" for flag in flags)
    return f"Note: ignoring options without effect in this implementation: {parts}."


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def output_types(values: Sequence[str]) -> list[str]:
    """``-ot`` as the official reads it: several values or comma lists, ``dicom`` meaning dicom_rtstruct."""
    names = [name for value in values for name in value.split(",") if name]
    names = ["dicom_rtstruct" if name == "dicom" else name for name in names]
    invalid = [name for name in names if name not in OUTPUT_TYPES]
    if invalid or not names:
        raise argparse.ArgumentTypeError(f"invalid output type(s) {invalid}; valid: {', '.join(OUTPUT_TYPES)}")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="TotalSegmentator", allow_abbrev=False,
                                description="Segment anatomical structures in CT and MR images (TotalSegmentator "
                                            "models on nnU-Net v2).")
    p.add_argument("-i", dest="input", metavar="filepath", type=Path,
                   help="Input image: NIfTI, NRRD, a folder of DICOM slices or a zip of them.")
    p.add_argument("-o", dest="output", metavar="directory", type=Path,
                   help="Output folder (one mask per class), or the output file with --ml or another -ot.")
    add_segmentation_options(p)
    overwrite = p.add_mutually_exclusive_group()
    overwrite.add_argument("--overwrite", action="store_true",
                           help="Replace the output even if it is a file that is no segmentation output.")
    overwrite.add_argument("--no-overwrite", action="store_true", help="Refuse to replace an existing output.")
    p.add_argument("--progress-json", action="store_true",
                   help="Print progress as one JSON object per line on stdout (for the Slicer panel).")
    p.add_argument("-lt", "--list-tasks", action="store_true", help="List all tasks and exit.")
    p.add_argument("-lc", "--list-classes", nargs="?", const="total", metavar="task",
                   help="List the classes of a task (default total) and exit.")
    add_reporting_options(p)
    return p


def add_reporting_options(p: argparse.ArgumentParser) -> None:
    """-q, -v, --version and the official flags this engine ignores or refuses (both commands take them)."""
    p.add_argument("-q", "--quiet", action="store_true", help="Print nothing but errors.")
    p.add_argument("-v", "--verbose", action="store_true", help="Show tracebacks of errors.")
    p.add_argument("--version", action="version", version=__version__)
    add_foreign_flags(p)


def add_segmentation_options(p: argparse.ArgumentParser) -> None:
    """What a segmentation is asked for (task, speed, outputs, device...): shared by TotalSegmentator and
    totalseg_batch, so a cohort run takes exactly the single-case options."""
    p.add_argument("-ot", "--output_type", nargs="+", default=["nifti"], metavar="type",
                   help="nifti (default), seg_nrrd (a Slicer .seg.nrrd file with names and colours), or for "
                        "DICOM input dicom_seg (DICOM SEG) or dicom_rtstruct (alias dicom; RT Structure Set), -o a "
                        ".dcm file. Several (-ot nifti dicom_seg or nifti,dicom_seg) are written side by side.")
    p.add_argument("-ml", "--ml", action="store_true", help="Write one multilabel NIfTI file instead of a folder.")
    p.add_argument("-ta", "--task", default="total", help="Task to run (see --list-tasks). Default: total.")
    p.add_argument("-f", "--fast", action="store_true", help="Use the 3 mm model (faster, less accurate).")
    p.add_argument("-ff", "--fastest", action="store_true", help="Use the 6 mm model (fastest); -f wins over it.")
    p.add_argument("-ms", "--model_size", choices=("big", "small"), default="big",
                   help="Only 'big' (the default) is available; it concerns task total_v3 only.")
    p.add_argument("-rs", "--roi_subset", nargs="+", metavar="class",
                   help="Only these classes (task total/total_mr); runs only the part models needed.")
    p.add_argument("-rsr", "--roi_subset_robust", nargs="+", metavar="class",
                   help="Like --roi_subset, but finds the region with the 3 mm model (as with --robust_crop).")
    p.add_argument("-rc", "--robust_crop", action="store_true",
                   help="Crop with the 3 mm model instead of the 6 mm one (slower, more robust).")
    p.add_argument("-bs", "--body_seg", action="store_true", help="Crop to the body first (CT only).")
    p.add_argument("-fs", "--force_split", action="store_true",
                   help="Process the image in three slabs along z (less memory, lower accuracy).")
    p.add_argument("-rmb", "--remove_small_blobs", nargs="?", const=200.0, default=False, type=positive_float,
                   metavar="mm3", help="Remove connected components smaller than mm3 (default 200).")
    p.add_argument("-ho", "--higher_order_resampling", "--high_order_resampling", action="store_true",
                   help="Let nnU-Net resample (higher order) instead of linear resampling to the task spacing.")
    p.add_argument("-s", "--statistics", nargs="?", const=True, default=False, metavar="filepath",
                   help="Write statistics.json (volume, intensity) beside the output, or to filepath if given.")
    p.add_argument("-sii", "--stats_include_incomplete", action="store_true",
                   help="Also report classes that touch the image border.")
    p.add_argument("-sa", "--stats_aggregation", choices=("mean", "median"), default="mean",
                   help="How statistics aggregate intensities (default mean).")
    p.add_argument("-ndm", "--no_derived_masks", action="store_true",
                   help="Do not write the derived masks (body.nii.gz and skin.nii.gz of task body).")
    p.add_argument("-p", "--preview", action="store_true", help="Also write preview_<task>.png beside the output.")
    p.add_argument("-d", "--device", default="gpu", help="gpu, gpu:N, cpu or mps (default gpu, CPU if none).")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="What runs the network on the CPU: auto or torch (labels bit-identical to the official "
                        "tool's), torch_compile (compiled once per process: for totalseg_batch), onnxruntime or "
                        "openvino (faster forward passes, not bit-identical), or nnunet (nnU-Net's own predictor). "
                        "GPUs always use nnU-Net's.")
    p.add_argument("-l", "--license_number", help="Licence key for licensed tasks (stored for later runs).")
    p.add_argument("--offline", action="store_true", help="Never download weights; fail if they are missing.")
