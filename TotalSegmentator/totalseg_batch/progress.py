"""How a cohort run reports itself: a progress bar on a terminal, a line per case otherwise, or JSON events.

``--progress-json`` writes one JSON object per line on stdout: ``start`` (cases, to run, skipped), one
``case`` per finished case (its id, status, seconds, error, and the running counts), and ``end``.
"""

from __future__ import annotations

import json
import sys
from typing import Optional, TextIO


class CohortProgress:
    """Counts cases as they finish and shows them; ``summary`` is the run's last line."""

    def __init__(self, to_run: int, skipped: int, failed_before: int, json_lines: bool = False,
                 quiet: bool = False, stream: Optional[TextIO] = None) -> None:
        self.to_run, self.skipped, self.failed_before = to_run, skipped, failed_before
        self.done = self.failed = 0
        self.json_lines = json_lines
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._bar = None

    def start(self, message: str = "") -> None:
        self._emit({"event": "start", "cases": self.to_run + self.skipped, "to_run": self.to_run,
                    "skipped": self.skipped, "message": message})
        if self.json_lines or self.quiet:
            return
        if message:
            self.stream.write(message + "\n")
        self.stream.write(f"{self.to_run} cases to run, {self.skipped} skipped (done before, or failed before "
                          f"without --retry-failed)\n")
        if self.stream.isatty() and self.to_run:
            from tqdm import tqdm

            self._bar = tqdm(total=self.to_run, file=self.stream, unit="case", dynamic_ncols=True,
                             desc="cases")

    def case(self, record: dict) -> None:
        ok = record.get("status") == "done"
        self.done += ok
        self.failed += not ok
        self._emit({"event": "case", "case_id": record.get("case_id"), "status": record.get("status"),
                    "seconds": record.get("seconds"), "attempts": record.get("attempts"),
                    "error": record.get("error"), "done": self.done, "failed": self.failed,
                    "remaining": self.to_run - self.done - self.failed})
        if self.json_lines or self.quiet and ok:
            return
        if self._bar is not None:
            self._bar.set_postfix(done=self.done, failed=self.failed, refresh=False)
            self._bar.update(1)
            if not ok:
                self._bar.write(f"FAILED {record.get('case_id')}: {record.get('error')}", file=self.stream)
            return
        position = f"[{self.done + self.failed}/{self.to_run}]"
        if ok:
            self.stream.write(f"{position} {record.get('case_id')} done in {record.get('seconds')} s\n")
        else:
            self.stream.write(f"{position} FAILED {record.get('case_id')}: {record.get('error')}\n")
        self.stream.flush()

    def summary(self) -> str:
        failed = f"{self.failed} failed" + (f" (and {self.failed_before} failed in earlier runs, not retried)"
                                            if self.failed_before else "")
        return f"{self.done} succeeded, {failed}, {self.skipped} skipped"

    def end(self, manifest: str) -> None:
        if self._bar is not None:
            self._bar.close()
        self._emit({"event": "end", "succeeded": self.done, "failed": self.failed, "skipped": self.skipped,
                    "failed_before": self.failed_before, "manifest": manifest})
        if not self.json_lines:
            self.stream.write(f"{self.summary()}; manifest {manifest}\n")
            self.stream.flush()

    def _emit(self, event: dict) -> None:
        if self.json_lines:
            sys.stdout.write(json.dumps({k: v for k, v in event.items() if v is not None}) + "\n")
            sys.stdout.flush()
