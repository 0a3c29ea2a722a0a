"""How a cohort run reports itself: a progress bar on a terminal, a line per case otherwise, or JSON events.

``--progress-json`` writes one JSON object per line on stdout: ``start`` (cases, to run, skipped), one
``case`` per finished case (its id, status, seconds, error, and the running counts; status ``not_run`` for the
cases a stopped run did not run), ``notice`` (no worker connected, and the like), and ``end``.
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
        self.done = self.failed = self.not_run = 0
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
        skipped = record.get("status") == "not_run"  # said once, in the stop message at the end
        self.done += ok
        self.not_run += skipped
        self.failed += not ok and not skipped
        self._emit({"event": "case", "case_id": record.get("case_id"), "status": record.get("status"),
                    "seconds": record.get("seconds"), "attempts": record.get("attempts"),
                    "error": record.get("error"), "done": self.done, "failed": self.failed,
                    "not_run": self.not_run, "remaining": self.to_run - self.done - self.failed - self.not_run})
        if self.json_lines or self.quiet and ok or skipped:
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

    def notice(self, message: str) -> None:
        """Something the user should know while the run goes on (shown even with -q)."""
        self._emit({"event": "notice", "message": message})
        if self.json_lines:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    def summary(self) -> str:
        failed = f"{self.failed} failed" + (f" (and {self.failed_before} failed in earlier runs, not retried)"
                                            if self.failed_before else "")
        not_run = f", {self.not_run} not run" if self.not_run else ""
        return f"{self.done} succeeded, {failed}{not_run}, {self.skipped} skipped"

    def end(self, manifest: str, stopped: Optional[str] = None, why: str = "") -> None:
        """The last lines; ``stopped`` (and ``why``, in words) when the run stopped before its last case."""
        if self._bar is not None:
            self._bar.close()
        self._emit({"event": "end", "succeeded": self.done, "failed": self.failed, "not_run": self.not_run,
                    "skipped": self.skipped, "failed_before": self.failed_before, "stopped": stopped,
                    "message": why or None, "manifest": manifest})
        if self.json_lines:
            return
        if stopped:
            self.stream.write(f"Stopped: {why}. Finished cases are kept; {self.not_run} case(s) recorded as not "
                              f"run: re-run the same command to run them.\n")
        self.stream.write(f"{self.summary()}; manifest {manifest}\n")
        self.stream.flush()

    def _emit(self, event: dict) -> None:
        if self.json_lines:
            sys.stdout.write(json.dumps({k: v for k, v in event.items() if v is not None}) + "\n")
            sys.stdout.flush()
