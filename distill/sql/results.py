"""Query results as comparable fingerprints, and the append-only execution cache.

Results are compared through digests of canonical rows, so the cache stores a few hashes per query instead of its
rows. Canonical values: numbers become floats rounded to 9 significant digits (``3`` equals ``3.0``, and
``0.1 + 0.2`` equals ``0.3``: the float tolerance), text stays text, NULL stays NULL. Three digests per result:
``ordered`` (row order matters), ``multiset`` (rows sorted first) and ``set`` (duplicates removed too).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from distill.sql.extract import normalize_sql
from litgpt_ext.io import JsonlAppender, read_jsonl_repairing

DATA_ROWS = 10
"""Result rows kept with each labelled row (``data``)."""


def canonical(value):
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        value = float(f"{float(value):.9g}")
        return 0.0 if value == 0 else value
    return value


def digests(rows: list[list]) -> dict[str, str]:
    encoded = [json.dumps([canonical(v) for v in row], ensure_ascii=False) for row in rows]

    def h(items) -> str:
        return hashlib.sha256("\n".join(items).encode()).hexdigest()[:32]

    return {"ordered": h(encoded), "multiset": h(sorted(encoded)), "set": h(sorted(set(encoded)))}


def exec_key(db_id: str, sql: str) -> str:
    return hashlib.sha256(f"{db_id}\x00{normalize_sql(sql)}".encode()).hexdigest()[:32]


def summarize(db_id: str, sql: str, result: dict) -> dict:
    """What the cache keeps of one execution."""
    row = {"key": exec_key(db_id, sql), "db_id": db_id, "ok": result["ok"], "seconds": result.get("seconds")}
    if result["ok"]:
        rows = result["rows"]
        row.update(n_rows=len(rows), truncated=result["truncated"], data=rows[:DATA_ROWS], digests=digests(rows))
    else:
        row["error"] = result["error"]
    return row


class ExecCache:
    """Append-only JSONL of executions keyed by (database, whitespace-normalized SQL); fsync'd line by line, so a
    killed run loses at most the executions in flight."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows = {r["key"]: r for r in read_jsonl_repairing(self.path)}
        self._out: JsonlAppender | None = None

    def get(self, db_id: str, sql: str) -> dict | None:
        return self.rows.get(exec_key(db_id, sql))

    def add(self, row: dict) -> None:
        if self._out is None:
            self._out = JsonlAppender(self.path)
        self._out.write(row)
        self.rows[row["key"]] = row

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
