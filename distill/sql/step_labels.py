"""Step labels for a process reward model (``distill_sql_label --target prm``): which stages of a candidate are
still on a path to the gold result.

* **Rule-made candidates** (``distill_sql_candidates --mutate``; their file says which rule made each): the rule
  edited one clause of the gold, so the steps before the first one that differs from the gold's are positive, that
  step and the rest negative. A mutation that still returns the gold's result is all positive (the labeller runs it).
* **Correct candidates** are all positive: the candidate itself is a completion of each of its prefixes.
* **Sampled wrong candidates**, with ``--rollouts K`` (Monte-Carlo, Math-Shepherd's estimator): the student samples
  K queries per question through the batch engine (``generate_batch``: batched, resumable, cached in
  ``rollouts-<key>.jsonl``); a rollout from step ``k``'s prefix keeps the candidate's first ``k`` stages and takes
  the later stages from one sample (:func:`distill.sql.steps.splice`), and runs in the sandbox against the gold
  result (executions cached like every other). ``--mc hard``: a step is positive if any of its K rollouts reaches
  the gold; ``--mc soft``: its label is the fraction that do. The last step's label is the candidate's own outcome.
  Without ``--rollouts`` such candidates have no step labels and are quarantined as ``no_step_labels``.

Why splice rather than continue the text: the stages are in evaluation order (FROM before SELECT) but a student
writes SELECT first, so "the student's continuation of the first k stages" cannot be sampled as a text
continuation; the later stages of the student's own samples for the question are the closest draw from the same
policy, and a prefix that cannot reach the gold (a wrong table) gets 0 whatever follows it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from distill.sql.extract import extract_sql, normalize_sql
from distill.sql.results import ExecCache
from distill.sql.steps import Step, first_difference, splice, sql_steps
from litgpt_ext.io import atomic_write_jsonl

PRM_PROMPT = "Question: {question}\nSQL steps:\n"
"""The text before the steps (TRL's stepwise ``prompt``); the steps follow it, one per line."""


def rule_made(paths: list[Path]) -> set[tuple[str, str]]:
    """``(question id, normalized SQL)`` of every candidate a mutation rule made (``rules`` beside
    ``generations`` in distill_sql_candidates' ``--mutations_output``; the gold itself excluded)."""
    made = set()
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            rules = row.get("rules") if isinstance(row, dict) else None
            if isinstance(rules, list):
                for rule, sql in zip(rules, row.get("generations") or [], strict=False):
                    if rule != "gold" and isinstance(sql, str):
                        made.add((str(row["id"]), normalize_sql(sql)))
    return made


def mutation_labels(steps: list[Step], gold: list[Step], correct: bool) -> list[bool]:
    if correct:
        return [True] * len(steps)
    wrong = min(first_difference(steps, gold), len(steps) - 1)
    return [i < wrong for i in range(len(steps))]


def rollout_file(out_dir: Path, student: Path, k: int, settings: dict) -> Path:
    """Where one student's K samples per question live; a different student or setting gets another file."""
    key = json.dumps({"student": str(Path(student).resolve()), "k": k, **settings}, sort_keys=True)
    return Path(out_dir) / f"rollouts-{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsonl"


def sample_rollouts(
    student: Path, prompts: Path, question_ids: set[str], out_dir: Path, k: int, settings: dict
) -> dict[str, list[list[Step]]]:
    """K samples per question from the student (one ``generate_batch`` call over every question that needs them;
    a rerun generates only what is missing), as steps; samples without SQL are kept as empty lists (they count as
    rollouts that fail)."""
    from litgpt_ext.generate.command import generate_batch
    from litgpt_ext.generate.outputs import read_generations

    wanted = []
    for line in Path(prompts).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if str(row.get("id")) in question_ids:
                wanted.append(row)
    output = rollout_file(out_dir, student, k, settings)
    subset = output.with_suffix(".prompts.jsonl")
    atomic_write_jsonl(subset, wanted)
    generate_batch(
        checkpoint_dir=Path(student),
        input=subset,
        output=output,
        input_format="prompts",
        num_samples=k,
        temperature=settings["temperature"],
        top_k=50,
        top_p=0.95,
        max_new_tokens=settings["max_new_tokens"],
        prompt_style=settings["prompt_style"],
        seed=settings["seed"],
        precision=settings.get("precision"),
    )
    found = read_generations(output, "rollouts")
    samples = {}
    for qid, entry in found.items():
        texts = entry.get("texts", [])
        samples[qid] = [sql_steps(sql) if (sql := extract_sql(t)) else [] for t in texts]
    return samples


def rollout_queries(steps: list[Step], samples: list[list[Step]]) -> list[list[str | None]]:
    """For each step k but the last: the K spliced queries (None where a sample cannot complete the prefix)."""
    from distill.sql.steps import assemble

    out = []
    for k in range(1, len(steps)):
        queries = []
        for sample in samples:
            spliced = splice(steps[:k], sample) if sample else None
            queries.append(assemble(spliced) if spliced else None)
        out.append(queries)
    return out


def mc_labels(queries: list[list[str | None]], correct: bool, reaches, soft: bool) -> list[bool] | list[float]:
    """Monte-Carlo labels from the rollouts of each step (``reaches(sql)`` -> whether it returns the gold result)."""
    labels = []
    for rollouts in queries:
        hits = sum(bool(q and reaches(q)) for q in rollouts)
        labels.append(round(hits / max(len(rollouts), 1), 4) if soft else hits > 0)
    labels.append(float(correct) if soft else correct)
    return labels


def gold_match(cache: ExecCache, db_id: str, gold: dict, mode: str):
    """``reaches(sql)``: the query ran, returned rows, and its result equals the gold's under ``mode``."""

    def reaches(sql: str) -> bool:
        run = cache.get(db_id, sql)
        return bool(run and run["ok"] and run["n_rows"] > 0 and run["digests"][mode] == gold["digests"][mode])

    return reaches
