"""The cohort's manifest: one JSON line per case, what was run on which input, and what came of it.

Whoever finishes a case appends its record to a file of its own, ``OUTDIR/manifest.<writer>.jsonl`` (a worker
process, a ``--shard`` process, the driver for cases whose workers died), and flushes it to disk before
the case is reported: several processes on several nodes never write one file, and a crash loses nothing.
Reading merges them with ``manifest.jsonl``; when a run ends they are compacted into ``manifest.jsonl``, one
line per case (its latest), and ``manifest.csv`` summarises it. A re-run decides from it which cases to
skip (:func:`decide`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

from totalseg_engine import atomic_output

from .cases import Case

MANIFEST = "manifest.jsonl"
SUMMARY = "manifest.csv"
SUMMARY_COLUMNS = ("case_id", "status", "input", "attempts", "seconds", "error", "finished")
_READ_CHUNK = 1 << 20


def stat_fingerprint(case: Case) -> str:
    """Names, sizes and modification times of the case's files: cheap, and changes when a file does."""
    digest = hashlib.sha256()
    for path in case.files():
        info = path.stat()
        digest.update(f"{_relative(path, case)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def content_fingerprint(case: Case) -> str:
    """SHA-256 over the case's file names and contents: the same input copied elsewhere has the same one."""
    digest = hashlib.sha256()
    for path in case.files():
        digest.update(f"{_relative(path, case)}\0".encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(_READ_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _relative(path: Path, case: Case) -> str:
    root = case.path if case.path.is_dir() else case.path.parent
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def options_key(options: Mapping[str, object]) -> str:
    """A short digest of the segmentation options: a case done with other options is done again."""
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Manifest:
    """The records of one output folder: ``append`` as cases end, ``compact`` when a run ends."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir

    def _files(self) -> list[Path]:
        return [self.outdir / MANIFEST, *sorted(self.outdir.glob("manifest.*.jsonl"))]

    def load(self) -> dict[str, dict]:
        """The latest record of every case (by finishing time across the files; later lines win ties)."""
        latest: dict[str, dict] = {}
        for path in self._files():
            for record in _read_lines(path):
                case_id = record.get("case_id")
                if case_id and record.get("finished", "") >= latest.get(case_id, {}).get("finished", ""):
                    latest[case_id] = record
        return latest

    def append(self, record: Mapping[str, object], writer: str) -> None:
        """One line in the writer's own file, flushed to disk before the case is reported."""
        self.outdir.mkdir(parents=True, exist_ok=True)
        with (self.outdir / f"manifest.{writer}.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def compact(self) -> dict[str, dict]:
        """Rewrite ``manifest.jsonl`` with one line per case and fold the writers' files into it.

        Only while no other run writes into the folder (shards running at the same time must not).
        """
        records = self.load()
        lines = "".join(json.dumps(records[key], sort_keys=True, default=str) + "\n" for key in sorted(records))
        with atomic_output(self.outdir / MANIFEST, overwrite=True) as tmp:
            tmp.write_text(lines, encoding="utf-8")
        for path in self._files()[1:]:
            path.unlink(missing_ok=True)
        self.write_summary(records)
        return records

    def write_summary(self, records: Optional[Mapping[str, dict]] = None) -> Path:
        """``manifest.csv``: one row per case, for a spreadsheet."""
        records = self.load() if records is None else records
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for key in sorted(records):
            writer.writerow({column: records[key].get(column, "") for column in SUMMARY_COLUMNS})
        target = self.outdir / SUMMARY
        with atomic_output(target, overwrite=True) as tmp:
            tmp.write_text(buffer.getvalue(), encoding="utf-8")
        return target


def _read_lines(path: Path) -> Iterable[dict]:
    """Records of a manifest file; a line cut short by a crash is skipped, not fatal."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@dataclass(frozen=True)
class Decision:
    """Whether a case runs in this run, and why (shown in the progress and kept in its record)."""

    case: Case
    run: bool
    reason: str


def decide(case: Case, previous: Optional[Mapping[str, object]], key: str, outdir: Path,
           force: bool = False, retry_failed: bool = False) -> Decision:
    """Run what is new, changed, asked for again, lost or left by a stopped run; skip what is done on the same input
    and options."""
    if previous is None:
        return Decision(case, True, "new")
    if force:
        return Decision(case, True, "forced (--force)")
    if previous.get("status") == "not_run":  # a run that stopped early did not get to it
        return Decision(case, True, "not run before")
    if previous.get("options_key") != key:
        return Decision(case, True, "options changed")
    if not _same_input(case, previous.get("fingerprint") or {}):
        return Decision(case, True, "input changed")
    if previous.get("status") == "done":
        if (outdir / case.case_id).is_dir():
            return Decision(case, False, "done")
        return Decision(case, True, "outputs missing")
    if retry_failed:
        return Decision(case, True, "failed before (--retry-failed)")
    return Decision(case, False, "failed before; --retry-failed runs it again")


def _same_input(case: Case, fingerprint: Mapping[str, object]) -> bool:
    """Same files by name, size and time; else the same content (a cohort copied to another disk)."""
    try:
        if fingerprint.get("stat") == stat_fingerprint(case):
            return True
        return bool(fingerprint.get("sha256")) and fingerprint.get("sha256") == content_fingerprint(case)
    except OSError:  # the input vanished: running it reports that as the case's error
        return False
