"""``litgpt-ext orm_rerank``: best-of-N selection with a reward model, against the simple baselines, in one table.

Per question (rows of ``distill_sql_label --version eval``, which keeps every candidate; candidate ``k`` of question
``q`` has id ``q#k``):

1. **first** — candidate 0, what sampling once would give;
2. **self-consistency** — the most common execution result among candidates that ran (ties: the result seen first);
3. **ORM** — the highest reward-model score, candidates tiered by execution score first (one that runs and returns
   rows beats one that fails, whatever their scores);
4. **PRM** (when a ``--scored`` file is ``prm_score`` output) — the same rule with the aggregated step scores:
   ``prm_min`` / ``prm_prod`` / ``prm_last`` / ``prm_mean``, each computed from the rows' ``step_scores``;
5. **oracle** — correct if any candidate is (the ceiling of reranking).

Execution accuracy = the share of questions whose pick has label 1.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from litgpt_ext.data.records import iter_jsonl
from litgpt_ext.errors import UserError, require
from litgpt_ext.evaluate.step_scores import AGGREGATES, aggregate
from litgpt_ext.io import atomic_write_json

BASELINES = ("first", "self_consistency")


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
    # a reward model: tier by execution score, then its score; the earlier candidate wins exact ties
    return max(candidates, key=lambda c: (c["exec_score"], c["scores"][method], -_candidate_index(c["id"])))


def model_scores(path: Path) -> tuple[str, dict[str, dict[str, float]]]:
    """``("orm" | "prm", {id: {method: score}})`` of one scored file: an ORM's ``score``, or a PRM's aggregate of
    ``step_scores`` under every rule."""
    rows = read_rows(path, ("id", "score"))
    if rows and all("step_scores" in r for r in rows.values()):
        for rid, r in rows.items():
            if not isinstance(r["step_scores"], list) or not r["step_scores"]:
                raise UserError(f"id {rid}: expected a non-empty list", path=path, field="step_scores")
        return "prm", {rid: {f"prm_{a}": aggregate(r["step_scores"], a) for a in AGGREGATES} for rid, r in rows.items()}
    return "orm", {rid: {"orm": float(r["score"])} for rid, r in rows.items()}


def orm_rerank(
    scored: list[Path] | Path | None = None, labels: Path | None = None, output: Path = Path("rerank.json")
) -> None:
    """Compare first / self-consistency / ORM / PRM / oracle picks by execution accuracy.

    Args:
        scored: orm_score and/or prm_score output for the candidates (rows with ``id`` and ``score``; a PRM's
            ``step_scores`` give one line per aggregate): one file or a list, at most one of each kind.
        labels: distill_sql_label ``--version eval`` rows (``id``, ``question_id``, ``label``, ``exec_score``,
            ``fingerprint``): every candidate of every question.
        output: JSON report: accuracy per method, questions counted, and each question's picks.
    """
    files = [Path(p) for p in (scored if isinstance(scored, list | tuple) else [require(scored, "scored")])]
    kinds: dict[str, Path] = {}
    scores: dict[str, dict[str, float]] = {}
    for path in files:
        kind, found = model_scores(path)
        if kind in kinds:
            raise UserError(f"two {kind.upper()} files ({kinds[kind]} and {path}): pass one of each", field="scored")
        kinds[kind] = path
        for rid, by_method in found.items():
            scores.setdefault(rid, {}).update(by_method)
    models = [m for kind in ("orm", "prm") if kind in kinds for m in (["orm"] if kind == "orm" else
              [f"prm_{a}" for a in AGGREGATES])]  # fmt: skip
    methods = (*BASELINES, *models, "oracle")
    labelled = read_rows(Path(require(labels, "labels")), ("id", "question_id", "label", "exec_score"))
    by_question: dict[str, list[dict]] = {}
    unscored = 0
    for rid, row in labelled.items():
        if rid not in scores or any(m not in scores[rid] for m in models):
            unscored += 1
            continue
        by_question.setdefault(str(row["question_id"]), []).append({**row, "scores": scores[rid]})
    if not by_question:
        raise UserError("no labelled candidate has a score (ids must match)", path=files[0])
    picks, correct = {}, Counter()
    for question, candidates in sorted(by_question.items()):
        candidates.sort(key=lambda c: _candidate_index(c["id"]))
        chosen = {m: pick(candidates, m) for m in methods}
        picks[question] = {m: c["id"] for m, c in chosen.items()}
        for m, c in chosen.items():
            correct[m] += int(c["label"] == 1)
    n = len(by_question)
    accuracy = {m: correct[m] / n for m in methods}
    report = {
        "questions": n,
        "candidates": sum(len(c) for c in by_question.values()),
        "unscored_candidates": unscored,
        "execution_accuracy": accuracy,
        "picks": picks,
    }
    atomic_write_json(Path(output), report)
    width = max(len(m) for m in methods)
    print(f"{n} questions, {report['candidates']} candidates ({unscored} without a score)")
    print(f"{'pick':<{width}}  execution accuracy")
    for m in methods:
        print(f"{m:<{width}}  {accuracy[m]:.3f} ({correct[m]}/{n})")
    print(f"-> {output}")
