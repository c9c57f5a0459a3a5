"""Which candidate queries distill_sql_label labels: the generations merged by id, and v1's balanced selection per
question."""

from __future__ import annotations

import random
from pathlib import Path

from distill.sql.questions import Question
from litgpt_ext.generate.outputs import read_generations


def read_candidates(paths: list[Path]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """generate_batch-shaped files merged by id: ``id -> generations`` (in file order), and ``id -> error`` for the
    error records generate_batch writes for bad input lines."""
    merged: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    for path in paths:
        for rid, found in read_generations(path, "candidates").items():
            if "error" in found:
                errors[rid] = found["error"]
            else:
                merged.setdefault(rid, []).extend(found["texts"])
    return merged, errors


def balance(q: Question, rows: list[dict], seed: int, drop) -> list[dict]:
    """v1: a question with both labels keeps min(pos, neg) of each (seeded); a one-sided question is dropped."""
    pos = [r for r in rows if r["label"] == 1]
    neg = [r for r in rows if r["label"] == 0]
    if rows and not (pos and neg):
        drop("one_sided", question_id=q.id, positives=len(pos), negatives=len(neg))
        return []
    n = min(len(pos), len(neg))
    local = random.Random(f"{seed}/{q.id}")
    keep = {r["id"] for r in local.sample(pos, n) + local.sample(neg, n)}
    for r in rows:
        if r["id"] not in keep:
            drop("balanced_out", question_id=q.id, sql=r["sql"], label=r["label"])
    return [r for r in rows if r["id"] in keep]
