"""Console commands for weights and the licence key, named and used like the official ones.

``totalseg_download_weights -t TASK``, ``totalseg_import_weights -i PATH`` and
``totalseg_set_license -l KEY``. Errors meant for the user are printed as one message (no
traceback) with exit code 1; Ctrl+C exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import licensing, weights, weights_archive
from .errors import TotalSegmentatorError
from .progress import TerminalReporter
from .tasks import get_task


def _run(action: Callable[[], None]) -> int:
    """Run a command body, turning user-facing errors into a message and an exit code."""
    try:
        action()
    except KeyboardInterrupt:
        print("Interrupted; nothing partial was installed.", file=sys.stderr)
        return 130
    except TotalSegmentatorError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    return 0


def download_main(argv: Optional[Sequence[str]] = None) -> int:
    """``totalseg_download_weights -t TASK [-t TASK ...]``: fetch every model of the tasks."""
    parser = argparse.ArgumentParser(prog="totalseg_download_weights",
                                     description="Download the weights of TotalSegmentator tasks (all speed "
                                                 "modes) into the cache, e.g. before working offline.")
    parser.add_argument("-t", "--task", action="append", metavar="TASK",
                        help="Task whose weights to download; repeat for several (default: total).")
    args = parser.parse_args(argv)

    def download() -> None:
        names = args.task or ["total"]
        for name in names:
            get_task(name)  # refuse a misspelt name before downloading anything
        reporter = TerminalReporter(sys.stderr)
        for name in names:
            for folder in weights.download_task(name, reporter):
                print(f"{name}: {folder}")

    return _run(download)


def import_main(argv: Optional[Sequence[str]] = None) -> int:
    """``totalseg_import_weights -i PATH [--overwrite]``: install weights brought from elsewhere."""
    parser = argparse.ArgumentParser(prog="totalseg_import_weights",
                                     description="Install weights from a release zip, a DatasetXXX_* folder or "
                                                 "a folder holding such folders (e.g. a copied "
                                                 "~/.totalsegmentator).")
    parser.add_argument("-i", "--weights_file", required=True, type=Path, metavar="PATH",
                        help="Zip file or folder with the weights.")
    parser.add_argument("--overwrite", action="store_true", help="Replace datasets that are already installed.")
    args = parser.parse_args(argv)

    def install() -> None:
        report = weights_archive.import_weights(args.weights_file, overwrite=args.overwrite)
        for folder in report.installed:
            print(f"Installed {folder}")
        for skipped in report.skipped:
            print(f"Skipped {skipped}", file=sys.stderr)

    return _run(install)


def license_main(argv: Optional[Sequence[str]] = None) -> int:
    """``totalseg_set_license -l KEY [--skip-validation]``: store the key for licensed tasks."""
    parser = argparse.ArgumentParser(prog="totalseg_set_license",
                                     description="Store a TotalSegmentator licence key (needed for licensed "
                                                 "tasks) in the official config.json.")
    parser.add_argument("-l", "--license_number", required=True, metavar="KEY", help="The licence key.")
    parser.add_argument("-sv", "--skip-validation", "--skip_validation", dest="skip_validation",
                        action="store_true", help="Store the key without asking the licence server.")
    args = parser.parse_args(argv)

    def store() -> None:
        licensing.set_license_key(args.license_number, validate=not args.skip_validation)
        print("The licence key has been saved.")

    return _run(store)


