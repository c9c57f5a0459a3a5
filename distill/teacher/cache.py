"""The responses file *is* the cache: append-only JSONL, one line per finished request, fsync'd.

Line kinds:
* a result — ``{"key", "ids", "model", "status": "ok"|"failed", "reason", "choices": [{"content", "finish_reason"}],
  "usage", "attempts", "source", "time", "run"}``; the latest line for a key wins (a later success replaces an
  earlier failure). ``time`` is when the answer arrived and ``run`` when the command that sent it opened the cache,
  so a teacher's rate can be measured over the time spent sending, run by run (``distill_report``);
* an alias — ``{"key", "alias_ids": [...]}``: more record ids whose request is already cached (no request sent).

The latest line naming a record id decides which request is that record's: when a task's prompt changes and changes
back, the rerun finds the first answers cached and re-points the records to them with an alias line (no request).

A crash can tear only the last line; it is detected and cut on open. Nothing is ever rewritten in place.
"""

from __future__ import annotations

import time
from pathlib import Path

from litgpt_ext.io import JsonlAppender, atomic_write_jsonl, read_jsonl_repairing


class ResponseCache:
    def __init__(self, path: Path, fsync_interval: float = 0.0) -> None:
        self.path = Path(path)
        self.fsync_interval = fsync_interval
        """Seconds between grouped fsyncs of the appended lines (see :class:`litgpt_ext.io.JsonlAppender`)."""
        self.results: dict[str, dict] = {}
        self.ids: dict[str, set[str]] = {}
        self.key_of: dict[str, str] = {}  # record id -> the key of the latest line naming it
        for row in read_jsonl_repairing(self.path):
            self._name(row["key"], row.get("ids") or row.get("alias_ids") or [])
            if "status" in row:
                self.results[row["key"]] = row
        self._appender: JsonlAppender | None = None
        self.run = round(time.time(), 3)
        """This process's run: when it opened the cache (the rows it adds carry it)."""

    def _append(self, row: dict) -> None:
        if self._appender is None:
            self._appender = JsonlAppender(self.path, fsync_interval=self.fsync_interval)
        self._appender.write(row)

    def _name(self, key: str, ids: list[str]) -> None:
        self.ids.setdefault(key, set()).update(ids)
        self.key_of.update((rid, key) for rid in ids)

    def done(self, key: str, retry_failed: bool = False) -> bool:
        row = self.results.get(key)
        return row is not None and (row["status"] == "ok" or not retry_failed)

    def add_result(self, row: dict) -> None:
        row = {**row, "time": round(time.time(), 3), "run": self.run}
        self._append(row)
        self.results[row["key"]] = row
        self._name(row["key"], row.get("ids") or [])

    def add_aliases(self, key: str, ids: list[str]) -> None:
        new = [i for i in ids if self.key_of.get(i) != key]
        if new:
            self._append({"key": key, "alias_ids": new})
            self._name(key, new)

    def unfinished(self, keys: list[str]) -> int:
        """How many of these requests have no answer, or a failed one."""
        return sum(1 for k in keys if (self.results.get(k) or {}).get("status") != "ok")

    def failures(self) -> list[dict]:
        return [r for r in self.results.values() if r["status"] == "failed"]

    def write_quarantine(self) -> Path:
        """Rewrite ``<out>.quarantine.jsonl`` (derived, atomic): every request whose latest result failed."""

        path = self.path.with_name(self.path.stem + ".quarantine.jsonl")
        rows = [
            {
                "key": r["key"],
                "ids": sorted(self.ids.get(r["key"], [])),
                "reason": r.get("reason"),
                "detail": r.get("detail"),
            }
            for r in self.failures()
        ]
        atomic_write_jsonl(path, rows)
        return path

    def close(self) -> None:
        if self._appender is not None:
            self._appender.close()
            self._appender = None
