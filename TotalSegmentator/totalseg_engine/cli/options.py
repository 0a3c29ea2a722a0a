"""The command line's flags: those of a :class:`~..request.SegmentationRequest` (built from its fields, so each
option is written once), the official TotalSegmentator 2.18 ones this engine has no field for, and as data the
official ones it does not implement.

Every official flag is registered explicitly on the command line so that no such flag is misread as another one
(``-ss`` as ``-s -s``): the ignored ones consume their value and are named in one notice, the
refused ones stop the run with a message naming the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .. import __version__
from ..errors import InvalidOptionError
from ..request import Flag, SegmentationRequest, request_fields

ROBUST_ROI = ("-rsr", "--roi_subset_robust")  # the official shorthand for --roi_subset with --robust_crop
TOKEN_VARIABLE = "TOTALSEG_SERVER_TOKEN"  # the remote server's access token (--server)


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


# Flags without effect on the result here; their values are consumed and they are named once on stderr.
IGNORED = (
    ForeignFlag(("-nr", "--nr_thr_resamp"), "resampling runs in memory in one pass", True, int),
    ForeignFlag(("-ns", "--nr_thr_saving"), "outputs are written in one pass", True, int),
    ForeignFlag(("-t", "--nora_tag"), "there is no Nora integration", True),
    ForeignFlag(("-cp", "--crop_path"), "crop masks are computed in memory, never read from disk", True),
    ForeignFlag(("--debug",), "-v already shows tracebacks"),
    ForeignFlag(("--test",), "the official unit-test switch", True, int, (0, 1, 3)),
)

# Flags a command cannot honour: the run stops before any work. TotalSegmentator honours every official flag; a
# cohort cannot write one probabilities file for all its cases.
REFUSED: tuple[ForeignFlag, ...] = ()
COHORT_REFUSED = (
    ForeignFlag(("-sp", "--save_probabilities"), "it names one file for one case; run TotalSegmentator -sp on the "
                "case whose probabilities you need", True),
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


def add_foreign_flags(parser: argparse.ArgumentParser, refused: Sequence[ForeignFlag] = REFUSED) -> None:
    """Register every ignored official flag and the ``refused`` ones (hidden from --help)."""
    parser.set_defaults(ignored_flags=[])
    for flags, action in ((IGNORED, _NoteIgnored), (refused, _Refuse)):
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


def absolute_path(text: str) -> Path:
    """A path argument made absolute where it is given, as the official parser makes -i, -o and -rp."""
    return Path(text).expanduser().absolute()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="TotalSegmentator", allow_abbrev=False,
                                description="Segment anatomical structures in CT and MR images (TotalSegmentator "
                                            "models on nnU-Net v2).")
    p.add_argument("-i", dest="input", metavar="filepath", type=absolute_path,
                   help="Input image: NIfTI, NRRD, a folder of DICOM slices or a zip of them.")
    p.add_argument("-o", dest="output", metavar="directory", type=absolute_path,
                   help="Output folder (one mask per class), or the output file with --ml or another -ot.")
    add_request_arguments(p)
    p.add_argument("-rp", "--report", metavar="filepath", type=absolute_path,
                   help="Write a JSON run report (versions, device, task, classes, runtime, output files) here.")
    p.add_argument("-sp", "--save_probabilities", metavar="filepath", type=absolute_path,
                   help="Also save the class probabilities of the task's model as nnU-Net writes them: filepath "
                        "(npz, key 'probabilities': classes x z x y x on the model's grid) and its properties "
                        "beside it (.pkl); of a multi-model task the last part model's, as in the official.")
    p.add_argument("--progress-json", action="store_true",
                   help="Print progress as one JSON object per line on stdout (for the Slicer panel).")
    add_remote_arguments(p)
    p.add_argument("-lt", "--list-tasks", action="store_true", help="List all tasks and exit.")
    p.add_argument("-lc", "--list-classes", nargs="?", const="total", metavar="task",
                   help="List the classes of a task (default total) and exit.")
    add_reporting_options(p)
    return p


def add_remote_arguments(p: argparse.ArgumentParser) -> None:
    """--server and its --token: the segmentation from a remote server, every output written here."""
    p.add_argument("--server", metavar="URL", help="segment on a TotalSegmentator server (totalseg_server, or "
                   "totalseg_web --api) instead of this machine; the outputs are written here as a local run "
                   "writes them")
    p.add_argument("--token", help=f"the server's access token (default: ${TOKEN_VARIABLE}). Every user of this "
                   f"machine can read a command line (ps): prefer {TOKEN_VARIABLE}")


def add_reporting_options(p: argparse.ArgumentParser, refused: Sequence[ForeignFlag] = REFUSED) -> None:
    """-q, -v, --version and the official flags this engine ignores or the command refuses (both commands)."""
    p.add_argument("-q", "--quiet", action="store_true", help="Print nothing but errors.")
    p.add_argument("-v", "--verbose", action="store_true", help="Show tracebacks of errors.")
    p.add_argument("--version", action="version", version=__version__)
    add_foreign_flags(p, refused)


def add_request_arguments(p: argparse.ArgumentParser, exclude: Sequence[str] = ()) -> None:
    """One argument per :class:`~..request.SegmentationRequest` field (but ``exclude``), spelled as its
    :class:`~..request.Flag` says, plus the official ``-rsr``: shared by TotalSegmentator and totalseg_batch,
    so a cohort run takes exactly the single-case options."""
    for item in request_fields():
        if item.name not in exclude:
            _add_field(p, item.name, item.default, item.metadata["flag"])
    p.add_argument(*ROBUST_ROI, nargs="+", metavar="class",
                   help="Like --roi_subset, but finds the region with the 3 mm model (as with --robust_crop).")


def _add_field(p: argparse.ArgumentParser, name: str, default: Any, flag: Flag) -> None:
    common = {"dest": name, "help": flag.help}
    if flag.kind == "switch":
        p.add_argument(*flag.names, action="store_false" if flag.negated else "store_true", default=default,
                       **common)
    elif flag.kind == "choice":
        group = p.add_mutually_exclusive_group() if flag.exclusive else p
        names_of: dict[Any, list[str]] = {}
        for flag_name, value in flag.by_flag.items():
            names_of.setdefault(value, []).append(flag_name)
        for value, names in names_of.items():
            group.add_argument(*names, action="append_const", const=value, dest=name, default=None,
                               help=flag.help if value == next(iter(names_of)) else argparse.SUPPRESS)
    else:
        nargs = {"value": None, "values": "+", "optional": "?"}[flag.kind]
        p.add_argument(*flag.names, nargs=nargs, type=flag.type, choices=flag.choices, metavar=flag.metavar,
                       default=default, **({"const": flag.const} if flag.kind == "optional" else {}), **common)


def parse_command(parser: argparse.ArgumentParser,
                  argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, SegmentationRequest]:
    """Parse a command line that takes the request's flags: its arguments, and the request converted once; the
    one notice naming ignored official flags goes to stderr."""
    args = parser.parse_args(argv)
    request = request_from_args(parser, args)
    notice = ignored_notice(args.ignored_flags)
    if notice:
        print(notice, file=sys.stderr)
    return args, request


def request_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> SegmentationRequest:
    """The parsed command line as a request, converted once; a value the request refuses is a usage error
    (exit code 2) naming its flag."""
    values = {item.name: _value(item, args) for item in request_fields() if hasattr(args, item.name)}
    robust = getattr(args, ROBUST_ROI[1][2:], None)
    if robust is not None:
        values.update(roi_subset=robust, robust_crop=True)
    for item in request_fields():  # one field at a time first, so that the message names its flag
        if item.name in values:
            try:
                SegmentationRequest.check_value(item.name, values[item.name])
            except InvalidOptionError as err:
                parser.error(f"argument {'/'.join(item.metadata['flag'].names)}: {err}")
    try:
        return SegmentationRequest(**values)
    except InvalidOptionError as err:
        parser.exit(2, f"ERROR: {err}\n")


def _value(item: dataclasses.Field, args: argparse.Namespace) -> Any:
    """The field's value from argparse's: a choice flag's winner, a switch-with-value (``-s [file]``) as a bool."""
    value = getattr(args, item.name)
    flag: Flag = item.metadata["flag"]
    if flag.kind == "choice":
        return item.default if not value else next(v for v in dict.fromkeys(flag.by_flag.values()) if v in value)
    if isinstance(item.default, bool):
        return value is not False
    return value


def statistics_path(args: argparse.Namespace) -> Optional[Path]:
    """``-s filepath``: where statistics.json goes instead of beside the output (None: beside it, or none)."""
    value = getattr(args, "statistics", None)
    return Path(value) if isinstance(value, str) else None
