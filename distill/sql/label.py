"""``litgpt-ext distill_sql_label``: label candidate queries by running them against the gold query's result.

Per question: the gold and every distinct candidate (the SQL extracted from each generation, whitespace-normalized)
run in the sandbox (:mod:`distill.sql.sandbox`). ``exec_score = (runs without error + returns at least one row) / 2``.
A question whose gold fails is skipped. **Positive** (label 1): runs, returns rows, result equals the gold's.
**Negative** (label 0): runs, result differs (an empty result included). Execution errors are left out unless
``--include_errors`` (then negative). Equality: multiset of rows, ordered when the gold has a top-level ``ORDER BY``
(``--compare`` forces one), numbers with a tolerance (see :mod:`distill.sql.results`).

Versions: ``v1`` keeps questions with both labels and balances them (min(pos, neg) of each, seeded); ``v2`` keeps
every labelled candidate; ``eval`` keeps every candidate including failures (exec_score 0, label 0) with its result
``fingerprint`` (for self-consistency reranking). Executions are cached per (database, SQL) in an append-only file,
so a rerun — after ``kill -9`` too — executes only what is missing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from distill.quarantine import Quarantine
from distill.sql.extract import extract_sql, normalize_sql
from distill.sql.mutate import top_level
from distill.sql.questions import Dataset, Question, read_questions
from distill.sql.results import ExecCache, exec_key, summarize
from distill.sql.sandbox import Sandbox
from distill.sql.schema import db_path, schema_text
from distill.sql.selection import balance, read_candidates
from litgpt_ext.errors import UserError, require
from litgpt_ext.io import atomic_write_json, atomic_write_jsonl

Version = Literal["v1", "v2", "eval"]
Compare = Literal["auto", "set", "multiset", "ordered"]
Target = Literal["orm", "prm"]


def compare_mode(gold_sql: str, compare: str) -> str:
    if compare != "auto":
        return compare
    return "ordered" if top_level(gold_sql, r"\bORDER\s+BY\b") else "multiset"


def execute_all(
    tasks: list[tuple[str, str, str]], cache: ExecCache, workers: int, timeout_s: float, max_rows: int
) -> dict[str, int]:
    """Run every (db_id, path, sql) not in the cache; each result is appended to the cache as it arrives."""
    todo, seen = [], set()
    for db_id, path, sql in tasks:
        key = exec_key(db_id, sql)
        if key not in cache.rows and key not in seen:
            seen.add(key)
            todo.append((key, db_id, path, sql))
    stats = {"executed": len(todo), "cached": len(tasks) - len(todo)}
    if not todo:
        return stats
    by_key = {key: (db_id, sql) for key, db_id, _, sql in todo}
    bar = tqdm(total=len(todo), desc="executing", unit="query", dynamic_ncols=True)
    t0 = time.perf_counter()
    with Sandbox(workers, timeout_s, max_rows) as sandbox:
        for key, result in sandbox.run((key, path, sql) for key, _, path, sql in todo):
            db_id, sql = by_key[key]
            cache.add(summarize(db_id, sql, result))
            bar.update(1)
    bar.close()
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return stats


def label_question(
    q: Question, candidates: list[str], cache: ExecCache, compare: str, include_errors: bool, version: str, drop
) -> list[dict]:
    """Labelled rows of one question (before v1's balancing); dropped candidates go to ``drop(reason, **info)``."""
    gold = cache.get(q.db_id, q.gold_sql)
    if not gold["ok"]:
        drop("gold_failed", question_id=q.id, error=gold["error"])
        return []
    if gold.get("truncated"):
        drop("gold_too_many_rows", question_id=q.id)
        return []
    mode = compare_mode(q.gold_sql, compare)
    rows = []
    for k, sql in enumerate(candidates):
        run = cache.get(q.db_id, sql)
        exec_score = (int(run["ok"]) + int(run["ok"] and run["n_rows"] > 0)) / 2
        row = {
            "id": f"{q.id}#{k}",
            "question_id": q.id,
            "sql": sql,
            "data": run.get("data", []),
            "exec_score": exec_score,
        }
        if not run["ok"]:
            if version == "eval" or include_errors:
                rows.append({**row, "label": 0, "error": run["error"], "fingerprint": None})
            else:
                drop("exec_error", question_id=q.id, sql=sql, error=run["error"])
            continue
        if run.get("truncated"):
            drop("too_many_rows", question_id=q.id, sql=sql)
            continue
        same = run["digests"][mode] == gold["digests"][mode]
        fingerprint = run["digests"]["multiset"]
        if same and run["n_rows"] == 0:  # the gold is empty too: equal, but nothing shows it is right
            if version == "eval":
                rows.append({**row, "label": 0, "fingerprint": fingerprint})
            else:
                drop("empty_like_gold", question_id=q.id, sql=sql)
            continue
        rows.append({**row, "label": int(same), "fingerprint": fingerprint})
    return rows


def step_rows(
    rows, items, db_dir, paths, cache, compare, prompt, version, drop, rollouts, soft, student, prompts, out_dir, settings,
    workers, timeout_s, max_rows,
) -> tuple[list[dict], dict]:  # fmt: skip
    """The labelled candidates as TRL stepwise rows (``prompt``, ``completions``, ``labels``), labelled as
    :mod:`distill.sql.step_labels` says; ``eval`` rows without derivable step labels keep ``labels: null``."""
    from distill.sql import step_labels as sl
    from distill.sql.steps import sql_steps

    questions = {q.id: q for q in items}
    made = sl.rule_made(paths)
    plans = []
    for row in rows:
        q = questions[row["question_id"]]
        steps = sql_steps(row["sql"])
        correct = row["label"] == 1
        source = "outcome" if correct else "mutation" if (q.id, normalize_sql(row["sql"])) in made else "mc"
        plans.append((row, q, steps, correct, source))
    need = {q.id for _, q, steps, correct, source in plans if source == "mc" and len(steps) > 1}
    samples: dict = {}
    mc_stats = {"questions": 0, "executed": 0}
    if rollouts and need:
        samples = sl.sample_rollouts(Path(student), Path(prompts), need, out_dir, rollouts, settings)
        mc_stats["questions"] = len(need)
    planned_queries = {}
    tasks = []
    for row, q, steps, _correct, source in plans:
        if source == "mc" and rollouts:
            queries = sl.rollout_queries(steps, samples.get(q.id, [])[:rollouts])
            planned_queries[row["id"]] = queries
            path = str(db_path(db_dir, q.db_id))
            tasks += [(q.db_id, path, sql) for step in queries for sql in step if sql]
    if tasks:
        mc_stats.update(execute_all(tasks, cache, workers or os.cpu_count() or 1, timeout_s, max_rows))
        cache.close()
    out = []
    for row, q, steps, correct, source in plans:
        gold_steps = sql_steps(q.gold_sql)
        if source in ("outcome", "mutation"):
            labels = sl.mutation_labels(steps, gold_steps, correct)
            labels = [float(x) for x in labels] if soft else labels
        elif rollouts:
            gold = cache.get(q.db_id, q.gold_sql)
            reaches = sl.gold_match(cache, q.db_id, gold, compare_mode(q.gold_sql, compare))
            labels = sl.mc_labels(planned_queries[row["id"]], correct, reaches, soft)
        elif version == "eval":
            labels = None
        else:
            drop("no_step_labels", question_id=q.id, sql=row["sql"], hint="pass --rollouts K for sampled candidates")
            continue
        fields = {"question": q.question, "schema": row["schema"], "db_id": q.db_id}
        try:
            text = prompt.format(**fields)
        except (KeyError, IndexError, ValueError) as err:
            raise UserError(f"bad template ({err!r}; fields: question, schema, db_id)", field="prm_prompt") from None
        out.append(
            {
                **row,
                "prompt": text,
                "completions": [s.text for s in steps],
                "labels": labels,
                "label_source": source if source != "mc" or rollouts else "none",
            }
        )
    return out, mc_stats


def distill_sql_label(
    questions: Path | None = None,
    db_dir: Path | None = None,
    candidates: list[Path] | None = None,
    out_dir: Path = Path("sql_labels"),
    version: Version = "v1",
    split: str = "train",
    compare: Compare = "auto",
    include_errors: bool = False,
    sample_rows: int = 0,
    workers: int | None = None,
    timeout_s: float = 30.0,
    max_rows: int = 100_000,
    seed: int = 42,
    cache: Path | None = None,
    push_to_hub: str | None = None,
    public: bool = False,
    source: str = "student",
    from_hub: str | None = None,
    target: Target = "orm",
    dataset: Dataset = "auto",
    prm_prompt: str | None = None,
    rollouts: int = 0,
    mc: Literal["hard", "soft"] = "hard",
    student: Path | None = None,
    prompts: Path | None = None,
    rollout_max_new_tokens: int = 128,
    rollout_temperature: float = 0.8,
    rollout_prompt_style: str = "auto",
) -> None:
    """Execute gold and candidate SQL in a read-only sandbox and write labelled rows for an outcome reward model
    (``--target orm``) or step-labelled rows for a process reward model (``--target prm``).

    Args:
        questions: Our JSONL (``{"id", "db_id", "question", "gold_sql", "evidence"?}``), or BIRD's ``train.json`` /
            Spider's ``train_spider.json`` as published (see ``--dataset``).
        db_dir: Databases in the Spider/BIRD layout: ``<db_dir>/<db_id>/<db_id>.sqlite`` (BIRD's
            ``train_databases/``, Spider's ``database/``).
        candidates: generate_batch output(s) for distill_sql_candidates' prompts (``{"id", "generations"}``), and/or
            its ``--mutations_output``; several files are merged by id. The SQL of a generation is its last fenced
            ```sql block, else the text from the first SELECT/WITH.
        out_dir: Receives ``<split>.jsonl``, ``summary.json``, ``quarantine.jsonl`` (and the execution cache).
        version: ``v1`` (questions with both labels, balanced), ``v2`` (every labelled candidate) or ``eval`` (every
            candidate, failures included, with a result fingerprint).
        split: Name of the output split file (``train`` -> ``train.jsonl``).
        compare: Result equality: ``auto`` (ordered when the gold has a top-level ORDER BY, else multiset), ``set``,
            ``multiset`` or ``ordered``.
        include_errors: Keep candidates that fail to execute, as negatives.
        sample_rows: Example rows per table in each row's ``schema`` text.
        workers: Sandbox worker processes (default: the number of cores).
        timeout_s: Seconds one statement may run before it is interrupted (a stuck worker is killed shortly after).
        max_rows: Rows fetched per statement at most; a larger result is quarantined as ``too_many_rows``.
        seed: Seed of v1's balancing.
        cache: The append-only execution cache (default ``<out_dir>/exec_cache.jsonl``); share it between runs and
            versions to never execute a (database, SQL) pair twice.
        push_to_hub: Upload the result as a Hugging Face dataset ``OWNER/NAME`` (token from HF_TOKEN only; private
            unless --public). ``OWNER`` alone names the repo ``dataset_orm_<source>_<split>_<version>``.
        public: Make the pushed dataset public.
        source: Where the candidates came from (``student``, ``mutations``, a model name), for the card and repo name.
        from_hub: Instead of building: download the dataset ``OWNER/NAME`` (its JSONL splits and card) into out_dir.
        target: ``orm`` (one label per candidate) or ``prm``: TRL's stepwise rows (``prompt``, ``completions`` = the
            candidate's stages, ``labels`` = one per stage; see distill/sql/step_labels.py for how they are made).
        dataset: The questions file's shape: ``auto`` (by its content), ``jsonl``, ``bird`` or ``spider``.
        prm_prompt: (prm) Text before the steps, with fields ``question``, ``schema``, ``db_id`` (default
            "Question: {question}\nSQL steps:\n").
        rollouts: (prm) Monte-Carlo step labels for sampled (not rule-made) candidates: K student samples per
            question, spliced after each step's prefix and executed; 0: such wrong candidates are quarantined.
        mc: (prm) ``hard`` (a step is positive if any rollout reaches the gold result) or ``soft`` (the fraction).
        student: (prm, rollouts) The student checkpoint that samples the rollouts.
        prompts: (prm, rollouts) distill_sql_candidates' prompts file (the student's generation prompts).
        rollout_max_new_tokens: (prm, rollouts) Tokens per rollout sample.
        rollout_temperature: (prm, rollouts) Sampling temperature of the rollouts (top-k 50, top-p 0.95).
        rollout_prompt_style: (prm, rollouts) The student's prompt style for the rollouts (generate_batch's).
    """
    if from_hub:
        from distill.sql.hub import pull_dataset

        pull_dataset(from_hub, Path(out_dir))
        return
    questions_path, db_dir = Path(require(questions, "questions")), Path(require(db_dir, "db_dir"))
    if not candidates:
        raise UserError("--candidates is required (one file or a list)", field="candidates")
    if timeout_s <= 0:
        raise UserError(f"must be > 0, got {timeout_s}", field="timeout_s")
    if max_rows < 1:
        raise UserError(f"must be >= 1, got {max_rows}", field="max_rows")
    if workers is not None and workers < 1:
        raise UserError(f"must be >= 1, got {workers}", field="workers")
    if not split or "/" in split:
        raise UserError(f"not a file name: {split!r}", field="split")
    if rollouts < 0:
        raise UserError(f"must be >= 0, got {rollouts}", field="rollouts")
    if rollouts and target != "prm":
        raise UserError("Monte-Carlo rollouts label steps: they need --target prm", field="rollouts")
    if rollouts and (student is None or prompts is None):
        raise UserError("--rollouts needs --student CKPT and --prompts (distill_sql_candidates' output)",
                        field="student" if student is None else "prompts")  # fmt: skip
    paths = [Path(c) for c in (candidates if isinstance(candidates, list | tuple) else [candidates])]
    items = read_questions(questions_path, db_dir, dataset)
    generations, gen_errors = read_candidates(paths)
    out_dir = Path(out_dir)
    dropped = Quarantine()
    drop = dropped.add

    per_question: dict[str, list[str]] = {}
    tasks = []
    for q in items:
        path = str(db_path(db_dir, q.db_id))
        tasks.append((q.db_id, path, q.gold_sql))
        if q.id in gen_errors:
            drop("generation_error", question_id=q.id, error=gen_errors[q.id])
        distinct, seen = [], set()
        for text in generations.get(q.id, []):
            sql = extract_sql(text)
            if not sql:
                drop("no_sql", question_id=q.id, text=text[:200])
                continue
            if normalize_sql(sql) in seen:
                continue
            seen.add(normalize_sql(sql))
            distinct.append(sql)
            tasks.append((q.db_id, path, sql))
        if not distinct and q.id not in gen_errors:
            drop("no_candidates", question_id=q.id)
        per_question[q.id] = distinct
    unknown = set(generations) - {q.id for q in items}
    for rid in sorted(unknown):
        drop("unknown_question", question_id=rid)

    exec_cache = ExecCache(Path(cache) if cache else out_dir / "exec_cache.jsonl")
    try:
        stats = execute_all(tasks, exec_cache, workers or os.cpu_count() or 1, timeout_s, max_rows)
    finally:
        exec_cache.close()

    schemas: dict[str, str] = {}
    kept: dict[str, list[dict]] = {}
    for q in items:
        if q.db_id not in schemas:
            schemas[q.db_id] = schema_text(db_path(db_dir, q.db_id), sample_rows)
        rows = label_question(q, per_question[q.id], exec_cache, compare, include_errors, version, drop)
        if version == "v1":
            rows = balance(q, rows, seed, drop)
        kept[q.id] = rows

    out_rows: list[dict] = []
    for q in items:
        for r in kept[q.id]:
            row = {
                "id": r["id"],
                "question_id": q.id,
                "question": q.question,
                "db_id": q.db_id,
                "schema": schemas[q.db_id],
                "sql": r["sql"],
                "data": r["data"],
                "exec_score": r["exec_score"],
                "label": r["label"],
            }
            if version == "eval":
                row["fingerprint"] = r["fingerprint"]
            out_rows.append(row)
    if target == "prm":
        from distill.sql.step_labels import PRM_PROMPT

        settings = {"max_new_tokens": rollout_max_new_tokens, "temperature": rollout_temperature,
                    "prompt_style": rollout_prompt_style, "seed": seed}  # fmt: skip
        out_rows, mc_stats = step_rows(
            out_rows, items, db_dir, paths, exec_cache, compare, prm_prompt or PRM_PROMPT, version, drop,
            rollouts, mc == "soft", student, prompts, out_dir, settings, workers, timeout_s, max_rows,
        )  # fmt: skip
        stats["rollouts"] = mc_stats

    split_path = out_dir / f"{split}.jsonl"
    atomic_write_jsonl(split_path, out_rows)
    dropped.write(out_dir / "quarantine.jsonl")
    summary = {
        "version": version,
        "split": split,
        "source": source,
        "questions": len(items),
        "questions_labelled": len({r["question_id"] for r in out_rows}),
        "rows": len(out_rows),
        "positives": sum(r["label"] == 1 for r in out_rows),
        "negatives": sum(r["label"] == 0 for r in out_rows),
        "dropped": dropped.counts(),
        "target": target,
        "executions": stats,
        "compare": compare,
        "include_errors": include_errors,
    }
    atomic_write_json(out_dir / "summary.json", summary)
    rate = f", {stats['executed'] / stats['seconds']:,.0f} queries/s" if stats.get("seconds") else ""
    print(
        f"{len(items):,} questions -> {len(out_rows):,} rows ({summary['positives']:,} positive, "
        f"{summary['negatives']:,} negative) in {split_path}; executed {stats['executed']:,}, "
        f"{stats['cached']:,} from the cache{rate}"
    )
    dropped.report(out_dir / "quarantine.jsonl")
    if push_to_hub:
        from distill.sql.hub import push_dataset

        push_dataset(out_dir, push_to_hub, summary, public=public)
