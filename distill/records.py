"""Input records: JSONL, one object per line, each with a stable ``id`` (else its 1-based line number).

The id travels from the first file to the last, so any output line can be traced back to its input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from litgpt_ext.data.records import iter_jsonl
from litgpt_ext.errors import UserError


@dataclass
class Record:
    id: str
    fields: dict
    line: int


def read_records(path: Path) -> list[Record]:
    path = Path(path)
    records, seen = [], {}
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise UserError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=n)
        rid = str(obj["id"]) if obj.get("id") is not None else str(n)
        if rid in seen:
            raise UserError(f"duplicate id {rid!r} (first on line {seen[rid]})", path=path, line=n, field="id")
        seen[rid] = n
        records.append(Record(rid, obj, n))
    if not records:
        raise UserError("no records", path=path)
    return records
