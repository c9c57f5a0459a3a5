"""``litgpt-ext distill_sql_candidates``: generation prompts for the student (a ``generate_batch`` input), and
optionally rule-made candidates from the gold queries (``--mutate K``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from distill.sql.mutate import mutate as make_mutations
from distill.sql.questions import Dataset, read_questions
from distill.sql.schema import connect_ro, db_path, schema_text
from litgpt_ext.errors import UserError, require
from litgpt_ext.io import atomic_write_jsonl
from litgpt_ext.templates import template_or_text


def table_columns(path: Path) -> dict[str, list[str]]:
    conn = connect_ro(path)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: [row[1] for row in conn.execute(f'PRAGMA table_info("{t}")')] for t in tables}
    except sqlite3.Error as err:
        raise UserError(f"cannot read the schema: {err}", path=path) from None
    finally:
        conn.close()


def distill_sql_candidates(
    questions: Path | None = None,
    db_dir: Path | None = None,
    output: Path = Path("sql_prompts.jsonl"),
    template: str = "prompts/text_to_sql.md",
    sample_rows: int = 0,
    mutate: int = 0,
    mutations_output: Path | None = None,
    dataset: Dataset = "auto",
) -> None:
    """Write one generation prompt per question (``{"id", "db_id", "prompt"}``) for ``generate_batch``.

    Sample N candidates per question with ``generate_batch CKPT --input OUTPUT --output C.jsonl --num_samples N
    --temperature 0.8 --top_k 50 --top_p 0.95``, then label them with ``distill_sql_label --candidates C.jsonl``.

    Args:
        questions: Our JSONL (``{"id", "db_id", "question", "gold_sql", "evidence"?}``), or BIRD's ``train.json`` /
            Spider's ``train_spider.json`` as published (see ``--dataset``).
        db_dir: Databases in the Spider/BIRD layout: ``<db_dir>/<db_id>/<db_id>.sqlite``.
        output: The prompts JSONL (generate_batch's ``--input``).
        template: Prompt template (file or text) with ``{schema}`` and ``{question}`` (and any question field).
        sample_rows: Example rows per table shown under each CREATE statement (0: none).
        mutate: Also make up to K candidates per question from its gold query by rule (wrong column, aggregate,
            condition, join key, LIMIT, ORDER BY direction); the gold itself is one more candidate.
        mutations_output: Where those candidates go, in generate_batch's output shape (``{"id", "generations"}``);
            pass it to distill_sql_label's ``--candidates`` with (or instead of) the student's samples.
        dataset: The questions file's shape: ``auto`` (by its content), ``jsonl``, ``bird`` or ``spider``.
    """
    questions_path, db_dir = Path(require(questions, "questions")), Path(require(db_dir, "db_dir"))
    if sample_rows < 0:
        raise UserError(f"must be >= 0, got {sample_rows}", field="sample_rows")
    if mutate < 0:
        raise UserError(f"must be >= 0, got {mutate}", field="mutate")
    if mutate and mutations_output is None:
        raise UserError("--mutate needs --mutations_output", field="mutations_output")
    items = read_questions(questions_path, db_dir, dataset)
    tmpl = template_or_text(template, "template")
    schemas: dict[str, str] = {}
    columns: dict[str, dict[str, list[str]]] = {}
    prompts, mutations = [], []
    for q in items:
        if q.db_id not in schemas:
            schemas[q.db_id] = schema_text(db_path(db_dir, q.db_id), sample_rows)
            columns[q.db_id] = table_columns(db_path(db_dir, q.db_id))
        fields = {"id": q.id, "db_id": q.db_id, "schema": schemas[q.db_id], "question": q.question}
        prompt = tmpl.render(fields, (questions_path, q.line))
        prompts.append(
            {"id": q.id, "db_id": q.db_id, **({"system": tmpl.system} if tmpl.system else {}), "prompt": prompt}
        )
        if mutate:
            made = make_mutations(q.gold_sql, columns[q.db_id], mutate, q.id)
            mutations.append(
                {
                    "id": q.id,
                    "generations": [q.gold_sql] + [sql for _, sql in made],
                    "rules": ["gold"] + [r for r, _ in made],
                }
            )
    atomic_write_jsonl(Path(output), prompts)
    print(f"{len(prompts):,} prompts -> {output}")
    if mutate:
        atomic_write_jsonl(Path(mutations_output), mutations)
        total = sum(len(m["generations"]) for m in mutations)
        print(f"{total:,} rule-made candidates (gold included) -> {mutations_output}")
