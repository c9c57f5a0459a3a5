"""``litgpt-ext orm_rerank``: best-of-N selection with a reward model, against the simple baselines, in one table.

Per question (rows of ``distill_sql_label --version eval``, which keeps every candidate; candidate ``k`` of question
``q`` has id ``q#k``):

1. **first** — candidate 0, what sampling once would give;
2. **self-consistency** — the most common execution result among candidates that ran (ties: the result seen first);
3. **ORM** — the highest reward-model score, candidates tiered by execution score first (one that runs and returns
   rows beats one that fails, whatever their scores);
4. **oracle** — correct if any candidate is (the ceiling of reranking).

Execution accuracy = the share of questions whose pick has label 1.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from litgpt_ext.data.records import iter_jsonl
from litgpt_ext.errors import UserError, require
from litgpt_ext.io import atomic_write_json

METHODS = ("first", "self_consistency", "orm", "oracle")


def _candidate_index(row_id: str) -> int:
    tail = row_id.rsplit("#", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def read_rows(path: Path, fields: tuple[str, ...]) -> dict[str, dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path=path)
    rows = {}
    for n, row in iter_jsonl(path):
        if not isinstance(row, dict) or "error" in row:
            continue
        for field in fields:
            if field not in row:
                raise UserError("missing", path=path, line=n, field=field)
        rows[str(row["id"])] = row
    return rows


def pick(candidates: list[dict], method: str) -> dict:
    if method == "first":
        return candidates[0]
    if method == "oracle":
        return next((c for c in candidates if c["label"] == 1), candidates[0])
    if method == "self_consistency":
        ran = [c for c in candidates if c.get("fingerprint")]
        if not ran:
            return candidates[0]
        counts = Counter(c["fingerprint"] for c in ran)
        best = max(counts.values())
        return next(c for c in ran if counts[c["fingerprint"]] == best)
    # orm: tier by execution score, then the reward model's score; the earlier candidate wins exact ties
    return max(candidates, key=lambda c: (c["exec_score"], c["score"], -_candidate_index(c["id"])))


def orm_rerank(scored: Path | None = None, labels: Path | None = None, output: Path = Path("rerank.json")) -> None:
    """Compare first / self-consistency / ORM / oracle picks by execution accuracy.

    Args:
        scored: orm_score output for the candidates (rows with ``id`` and ``score``).
        labels: distill_sql_label ``--version eval`` rows (``id``, ``question_id``, ``label``, ``exec_score``,
            ``fingerprint``): every candidate of every question.
        output: JSON report: accuracy per method, questions counted, and each question's picks.
    """
    scores = read_rows(Path(require(scored, "scored")), ("id", "score"))
    labelled = read_rows(Path(require(labels, "labels")), ("id", "question_id", "label", "exec_score"))
    by_question: dict[str, list[dict]] = {}
    unscored = 0
    for rid, row in labelled.items():
        if rid not in scores:
            unscored += 1
            continue
        by_question.setdefault(str(row["question_id"]), []).append({**row, "score": float(scores[rid]["score"])})
    if not by_question:
        raise UserError("no labelled candidate has a score (ids must match)", path=scored)
    picks, correct = {}, Counter()
    for question, candidates in sorted(by_question.items()):
        candidates.sort(key=lambda c: _candidate_index(c["id"]))
        chosen = {m: pick(candidates, m) for m in METHODS}
        picks[question] = {m: c["id"] for m, c in chosen.items()}
        for m, c in chosen.items():
            correct[m] += int(c["label"] == 1)
    n = len(by_question)
    accuracy = {m: correct[m] / n for m in METHODS}
    report = {
        "questions": n,
        "candidates": sum(len(c) for c in by_question.values()),
        "unscored_candidates": unscored,
        "execution_accuracy": accuracy,
        "picks": picks,
    }
    atomic_write_json(Path(output), report)
    width = max(len(m) for m in METHODS)
    print(f"{n} questions, {report['candidates']} candidates ({unscored} without a score)")
    print(f"{'pick':<{width}}  execution accuracy")
    for m in METHODS:
        print(f"{m:<{width}}  {accuracy[m]:.3f} ({correct[m]}/{n})")
    print(f"-> {output}")
