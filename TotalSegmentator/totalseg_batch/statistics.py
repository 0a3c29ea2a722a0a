"""The cohort's statistics: every case's ``statistics.json`` in one table, one row per case and structure.

Long format (``case_id, structure, volume_mm3, intensity``) so that a cohort of any task loads into pandas, R
or a spreadsheet as it is; written as CSV, and as Parquet where pyarrow is installed.
"""

from __future__ import annotations

import csv
import io
import json
from importlib.util import find_spec
from pathlib import Path
from typing import Mapping

from totalseg_engine import atomic_output

COLUMNS = ("case_id", "structure", "volume_mm3", "intensity")
TABLE = "cohort_statistics"


def cohort_rows(outdir: Path, records: Mapping[str, dict]) -> list[dict]:
    """Rows from the ``statistics.json`` of every case that is done, in case order."""
    rows = []
    for case_id in sorted(records):
        record = records[case_id]
        names = [name for name in record.get("outputs", []) if Path(name).name == "statistics.json"]
        if record.get("status") != "done" or not names:
            continue
        stats = json.loads((outdir / case_id / names[0]).read_text(encoding="utf-8"))
        rows += [{"case_id": case_id, "structure": structure, "volume_mm3": values.get("volume"),
                  "intensity": values.get("intensity")} for structure, values in stats.items()]
    return rows


def write_cohort_statistics(outdir: Path, records: Mapping[str, dict]) -> list[Path]:
    """``cohort_statistics.csv`` (and ``.parquet`` with pyarrow) in ``outdir``; returns what was written."""
    rows = cohort_rows(outdir, records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written = [outdir / f"{TABLE}.csv"]
    with atomic_output(written[0], overwrite=True) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    if find_spec("pyarrow") is not None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({column: [row[column] for row in rows] for column in COLUMNS},
                         schema=pa.schema([("case_id", pa.string()), ("structure", pa.string()),
                                           ("volume_mm3", pa.float64()), ("intensity", pa.float64())]))
        written.append(outdir / f"{TABLE}.parquet")
        with atomic_output(written[1], overwrite=True) as tmp:
            pq.write_table(table, tmp)
    return written
