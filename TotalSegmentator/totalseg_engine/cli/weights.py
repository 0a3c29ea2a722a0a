"""Console commands for weights and the licence key, named and used like the official ones.

``totalseg_download_weights -t TASK`` (also the official names such as ``total_fast``, and ``all``),
``totalseg_import_weights -i PATH`` and ``totalseg_set_license -l KEY``. Errors meant for the user are
printed as one message (no traceback) with exit code 1; Ctrl+C exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from .. import tasks, weights
from ..errors import TotalSegmentatorError, UnknownTaskError
from ..progress import TerminalReporter
from ..tasks import ModelSpec


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


SPEED_ALIASES = {"total_fast": "total", "total_v3_fast": "total_v3", "total_fast_mr": "total_mr",
                 "body_fast": "body", "body_mr_fast": "body_mr"}
"""Official download names that mean only the fast and fastest models of a task."""

NOT_PROVIDED = ("body_stats_xgb", "body_stats_mr", "body_stats_ct")
"""Official download names of models this tool has no use for (the xgboost models of totalseg_get_body_stats)."""

ALL = "all"


def _downloadable(spec: ModelSpec) -> bool:
    """Whether a release or the licence server provides the model (not so for development-only tasks)."""
    return spec.licensed or spec.release is not None


def _unique(specs: Iterable[ModelSpec]) -> list[ModelSpec]:
    """Each dataset once (its first model), in the given order: a dataset folder is downloaded whole."""
    seen: dict[int, ModelSpec] = {}
    for spec in specs:
        seen.setdefault(spec.dataset_id, spec)
    return list(seen.values())


def download_specs(name: str) -> list[ModelSpec]:
    """The models ``totalseg_download_weights -t NAME`` fetches: at least what the official command fetches.

    A task name gets every speed mode and its refinement model; an official ``*_fast`` name the fast and
    fastest models of its task; ``all`` every downloadable model of every task.
    """
    if name == ALL:
        return _unique(spec for task in tasks.all_tasks() for spec in tasks.models_of_task(task)
                       if all(_downloadable(s) for s in tasks.models_of_task(task)))
    if name in NOT_PROVIDED:
        raise UnknownTaskError(f"'{name}' names the models of totalseg_get_body_stats, which this tool does not "
                               "provide; nothing to download.")
    if name in SPEED_ALIASES:
        task = tasks.get_task(SPEED_ALIASES[name])
        return _unique(spec for speed in ("fast", "fastest") if speed in task.modes
                       for spec in task.modes[speed].models)
    if name not in tasks.all_tasks():
        valid = [*tasks.all_tasks(), *SPEED_ALIASES, ALL]
        raise UnknownTaskError(tasks._unknown_message("task", name, valid))
    refine = tasks.get_task(name).refine_with
    return _unique([*tasks.models_of_task(name), *(tasks.models_of_task(refine) if refine else [])])


def _skip_unlicensed(name: str, specs: list[ModelSpec]) -> list[ModelSpec]:
    """``all`` without a stored licence key skips the licensed models instead of failing on the first."""
    if name != ALL or weights.get_license_key() is not None:
        return specs
    skipped = [spec for spec in specs if spec.licensed]
    if skipped:
        print(f"Skipped {len(skipped)} licensed models (no licence key set; see totalseg_set_license).",
              file=sys.stderr)
    return [spec for spec in specs if not spec.licensed]


def download_main(argv: Optional[Sequence[str]] = None) -> int:
    """``totalseg_download_weights -t TASK [-t TASK ...]``: fetch every model of the tasks."""
    parser = argparse.ArgumentParser(prog="totalseg_download_weights",
                                     description="Download the weights of TotalSegmentator tasks (all speed "
                                                 "modes) into the cache, e.g. before working offline.")
    parser.add_argument("-t", "--task", action="append", metavar="TASK",
                        help="Task whose weights to download, an official download name such as total_fast, or "
                             "'all'; repeat for several (default: total).")
    args = parser.parse_args(argv)

    def download() -> None:
        names = args.task or ["total"]
        plan = [(name, download_specs(name)) for name in names]  # refuse a misspelt name before downloading
        reporter = TerminalReporter(sys.stderr)
        for name, specs in plan:
            for spec in _skip_unlicensed(name, specs):
                if not weights.is_installed(spec):
                    weights.download_dataset(spec.dataset_id, reporter)
                print(f"{name}: {weights.model_dir(spec)}")

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
        report = weights.import_weights(args.weights_file, overwrite=args.overwrite)
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
        weights.set_license_key(args.license_number, validate=not args.skip_validation)
        print("The licence key has been saved.")

    return _run(store)


