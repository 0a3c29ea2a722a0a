"""``TotalSegmentator -i ct.nii.gz -o out``: the official command line, on this engine.

Parses arguments (the request's flags and the official ones, see :mod:`.options`), converts them once into a
:class:`~..request.SegmentationRequest` and runs :func:`..case.segment_to_files`, which segments once and writes
every requested output (and the preview), so official scripts run unchanged; heavy imports happen after parsing so
``--help`` and ``--list-tasks`` answer at once. Errors meant for the user are printed as one message (no traceback)
with exit code 1, unsupported options exit with 2 as argparse errors do; a cancelled run (Ctrl+C) exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from ..errors import CancelledError, TotalSegmentatorError
from ..progress import JsonLinesReporter, ProgressCallback, TerminalReporter, ignore_progress
from ..request import SegmentationRequest
from ..tasks import all_tasks, get_task
from .options import build_parser, parse_command, statistics_path


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


def parse(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, SegmentationRequest]:
    """The command line and its request (see :func:`.options.parse_command`)."""
    parser = build_parser()
    args, request = parse_command(parser, argv)
    if not (args.list_tasks or args.list_classes is not None) and (args.input is None or args.output is None):
        parser.error("both -i (input) and -o (output) are required for a segmentation")
    if args.server or args.token:
        from .remote import check_remote_arguments

        check_remote_arguments(parser, args, request)
    return args, request


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, request = parse(argv)
    try:
        if args.list_tasks:
            print(format_tasks())
            return 0
        if args.list_classes is not None:
            print(format_classes(args.list_classes))
            return 0
        return _segment(args, request)
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


def _reporter(args: argparse.Namespace) -> ProgressCallback:
    if args.progress_json:
        return JsonLinesReporter(sys.stdout)
    if args.quiet:
        return ignore_progress
    return TerminalReporter(sys.stderr)


def _segment(args: argparse.Namespace, request: SegmentationRequest) -> int:
    from ..case import segment_to_files, switched_task
    from ..inference import allocator

    request = switched_task(args.input, request)
    segmenter = None
    if args.server:
        from .remote import remote_segmenter

        segmenter = remote_segmenter(args.server, args.token)
    with allocator.reuse_freed_memory():  # a run's own process: keep freed blocks for reuse throughout
        case = segment_to_files(args.input, args.output, request, statistics_path=statistics_path(args),
                                report_path=args.report, progress=_reporter(args),
                                probabilities_path=args.save_probabilities, segmenter=segmenter)
    if not args.quiet and not args.progress_json and case.targets:
        written = ", ".join(str(path) for path in case.targets.values())
        print(f"Segmentation written to {written}", file=sys.stderr)
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
