"""Text-to-SQL questions (Spider/BIRD fields) and their databases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distill.records import read_records
from distill.sql.schema import db_path
from litgpt_ext.errors import UserError


@dataclass
class Question:
    id: str
    db_id: str
    question: str
    """The question, with BIRD's ``evidence`` appended when present."""
    gold_sql: str
    line: int


def read_questions(path: Path, db_dir: Path) -> list[Question]:
    """Every question, validated (fields, database present) before any work starts: errors are ``file:line: field``."""
    path, db_dir = Path(path), Path(db_dir)
    if not db_dir.is_dir():
        raise UserError("not a directory", path=db_dir, field="db_dir")
    questions = []
    for rec in read_records(path):
        for field in ("db_id", "question", "gold_sql"):
            value = rec.fields.get(field)
            if not isinstance(value, str) or not value.strip():
                raise UserError("missing or not a non-empty string", path=path, line=rec.line, field=field)
        evidence = rec.fields.get("evidence")
        if evidence is not None and not isinstance(evidence, str):
            raise UserError("expected a string", path=path, line=rec.line, field="evidence")
        db_id = rec.fields["db_id"].strip()
        if not db_path(db_dir, db_id).is_file():
            raise UserError(f"database not found ({db_path(db_dir, db_id)})", path=path, line=rec.line, field="db_id")
        text = rec.fields["question"].strip() + (f" {evidence.strip()}" if evidence and evidence.strip() else "")
        questions.append(Question(rec.id, db_id, text, rec.fields["gold_sql"].strip(), rec.line))
    return questions
