"""Text-to-SQL questions and their databases: our JSONL, or BIRD's and Spider's files exactly as published.

Three shapes, told apart by the file (``--dataset auto``) or named (``--dataset jsonl|bird|spider``):

* ``jsonl`` — one object per line: ``{"id"?, "db_id", "question", "gold_sql", "evidence"?}``;
* ``bird`` — BIRD's ``train.json`` / ``dev.json``: a JSON list of ``{"question_id", "db_id", "question",
  "evidence", "SQL"}``; the id is ``question_id``;
* ``spider`` — Spider's ``train_spider.json`` / ``dev.json``: a JSON list of ``{"db_id", "question", "query", ...}``;
  the id is the row's 0-based index in the list (Spider has no id of its own; its evaluation scripts count so too).

The databases are in the layout both datasets ship: ``<db_dir>/<db_id>/<db_id>.sqlite`` (BIRD's
``train_databases/``, Spider's ``database/``). BIRD's ``evidence`` is appended to the question text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill.records import read_records
from distill.sql.schema import db_path
from litgpt_ext.data.records import load_json
from litgpt_ext.errors import UserError

Dataset = Literal["auto", "jsonl", "bird", "spider"]
GOLD_FIELD = {"jsonl": "gold_sql", "bird": "SQL", "spider": "query"}


@dataclass
class Question:
    id: str
    db_id: str
    question: str
    """The question, with BIRD's ``evidence`` appended when present."""
    gold_sql: str
    line: int | str
    """Where the question is in its file (a line number, or ``record N`` of a JSON list), for error messages."""


def _published_rows(path: Path, dataset: str) -> tuple[str, list[tuple[str, str | int, dict]]]:
    """``(dataset, [(id, where, row)])`` of a BIRD/Spider JSON list (``dataset`` auto: by the first row's fields)."""
    data = load_json(path)
    if not isinstance(data, list):
        raise UserError(f"expected a JSON list of questions (BIRD/Spider), got {type(data).__name__}", path=path)
    if not data:
        raise UserError("no records", path=path)
    if dataset == "auto":
        first = data[0] if isinstance(data[0], dict) else {}
        dataset = "bird" if "SQL" in first else "spider" if "query" in first else "jsonl"
        if dataset == "jsonl" and "gold_sql" not in first:
            raise UserError(
                "record 1: neither BIRD (SQL) nor Spider (query) nor our gold_sql field; pass --dataset", path=path
            )
    rows, seen = [], {}
    for n, row in enumerate(data, start=1):
        where = f"record {n}"
        if not isinstance(row, dict):
            raise UserError(f"expected a JSON object, got {type(row).__name__}", path=path, line=where)
        if dataset == "bird":
            if row.get("question_id") is None:
                raise UserError("missing", path=path, line=where, field="question_id")
            rid = str(row["question_id"])
        elif dataset == "spider":
            rid = str(n - 1)
        else:
            rid = str(row["id"]) if row.get("id") is not None else str(n)
        if rid in seen:
            raise UserError(f"duplicate id {rid!r} (first at record {seen[rid]})", path=path, line=where)
        seen[rid] = n
        rows.append((rid, where, row))
    return dataset, rows


def read_questions(path: Path, db_dir: Path, dataset: Dataset = "auto") -> list[Question]:
    """Every question, validated (fields, database present) before any work starts: errors are ``file:line: field``."""
    path, db_dir = Path(path), Path(db_dir)
    if dataset not in ("auto", *GOLD_FIELD):
        raise UserError(f"use one of auto, {', '.join(GOLD_FIELD)}", field="dataset")
    if not db_dir.is_dir():
        raise UserError("not a directory", path=db_dir, field="db_dir")
    if not path.is_file():
        raise UserError("file not found", path=path, field="questions")
    if dataset in ("bird", "spider") or (dataset == "auto" and path.read_bytes().lstrip()[:1] == b"["):
        dataset, rows = _published_rows(path, dataset)
    else:
        dataset, rows = "jsonl", [(rec.id, rec.line, rec.fields) for rec in read_records(path)]
    gold_field = GOLD_FIELD[dataset]
    questions = []
    for rid, where, fields in rows:
        for field in ("db_id", "question", gold_field):
            value = fields.get(field)
            if not isinstance(value, str) or not value.strip():
                raise UserError("missing or not a non-empty string", path=path, line=where, field=field)
        evidence = fields.get("evidence")
        if evidence is not None and not isinstance(evidence, str):
            raise UserError("expected a string", path=path, line=where, field="evidence")
        db_id = fields["db_id"].strip()
        if not db_path(db_dir, db_id).is_file():
            raise UserError(f"database not found ({db_path(db_dir, db_id)})", path=path, line=where, field="db_id")
        text = fields["question"].strip() + (f" {evidence.strip()}" if evidence and evidence.strip() else "")
        questions.append(Question(rid, db_id, text, fields[gold_field].strip(), where))
    return questions
