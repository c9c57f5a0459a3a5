"""``litgpt-ext distill_report``: what distillation bought — the student's fidelity to the teacher on held-out
records, next to the teacher's cost and the student's speed, each projected to 1M records.

Everything is read from files the pipeline already wrote, so the report costs nothing to rerun:
* the teacher's cost from the usage it returned (the responses cache) and the price table (or ``--price_in/out``);
  Batch API answers cost half, as billed;
* the teacher's observed rate from the cache's answer times (rate limits, retries and latency included), over the
  time each run spent sending — from the run's start to its last answer, summed over the runs that answered these
  records — so the hours between runs (while a student trained) do not count;
* the student's throughput from ``generate_batch``'s stats file (``<output>.stats.json``: its last run);
* fidelity from ``evaluate_generations``' ``metrics.json`` on the held-out records against the teacher's answers.
"""

from __future__ import annotations

from pathlib import Path

from distill.records import read_records
from distill.teacher.cache import ResponseCache
from distill.teacher.cost import price_for
from litgpt_ext.data.records import load_json
from litgpt_ext.errors import UserError, require
from litgpt_ext.io import atomic_write_json

MILLION = 1_000_000


def distill_report(
    responses: Path | None = None,
    records: list[Path] | None = None,
    generation_stats: Path | None = None,
    fidelity: Path | None = None,
    baseline: Path | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
    student_usd_per_hour: float | None = None,
    out: Path | None = None,
) -> dict:
    """Print the fidelity + cost/speed table of a distillation run and write it as JSON.

    Args:
        responses: The teacher's responses cache (distill_query --out).
        records: The record files sent to the teacher in this run (training and held-out); the cost covers their
            answers.
        generation_stats: generate_batch's stats file of a student run (``generations.stats.json``).
        fidelity: evaluate_generations' metrics.json of the student's held-out outputs against the teacher's.
        baseline: The same metrics.json for an untrained student, shown for contrast (optional).
        price_in: USD per 1M prompt tokens (default: the price table's, by the cached answers' model).
        price_out: USD per 1M completion tokens (default: the price table's).
        student_usd_per_hour: What the student's machine costs per hour, to price its 1M-record time (optional).
        out: Where the report JSON goes (e.g. artifacts/runs/<task>/report.json).
    """
    responses, records = Path(require(responses, "responses")), require(records, "records")
    generation_stats, fidelity = (
        Path(require(generation_stats, "generation_stats")),
        Path(require(fidelity, "fidelity")),
    )
    out = Path(require(out, "out"))
    if student_usd_per_hour is not None and student_usd_per_hour < 0:
        raise UserError(f"must be >= 0, got {student_usd_per_hour}", field="student_usd_per_hour")
    if not responses.is_file():
        raise UserError("file not found", path=responses, field="responses")
    stats, quality = _json(generation_stats, "generation_stats"), _json(fidelity, "fidelity")
    untrained = _json(Path(baseline), "baseline") if baseline is not None else None
    report = {
        "teacher": _teacher(ResponseCache(responses), [Path(p) for p in records], price_in, price_out),
        "student": _student(stats, student_usd_per_hour),
        "fidelity": _fidelity(quality),
    }
    if untrained is not None:
        report["untrained_student"] = _fidelity(untrained)
    atomic_write_json(out, report)
    print(format_report(report))
    print(f"report: {out}")
    return report


def _json(path: Path, flag: str) -> dict:
    if not path.is_file():
        raise UserError("file not found", path=path, field=flag)
    data = load_json(path)
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", path=path, field=flag)
    return data


def _teacher(cache: ResponseCache, record_files: list[Path], price_in, price_out) -> dict:
    ids = [rec.id for path in record_files for rec in read_records(path)]
    rows = {cache.key_of[i]: cache.results.get(cache.key_of[i]) for i in ids if i in cache.key_of}
    answered = [r for r in rows.values() if r is not None and r["status"] == "ok"]
    if not answered:
        raise UserError("no answered request for these records", path=cache.path, field="responses")
    models = sorted({r.get("model") or "" for r in answered})
    prompt_tokens = completion_tokens = 0
    cost, priced = 0.0, True
    for r in answered:
        usage = r.get("usage") or {}
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        prompt_tokens, completion_tokens = prompt_tokens + p, completion_tokens + c
        price = price_for(r.get("model") or "", price_in, price_out)
        if price is None:
            priced = False
            continue
        cost += (0.5 if r.get("source") == "batch" else 1.0) * (p * price[0] + c * price[1]) / MILLION
    ok = {r["key"] for r in answered}
    answered_ids = sum(cache.key_of.get(i) in ok for i in ids)
    runs = teacher_runs(cache, answered)
    sent = sum(r["answered"] for r in runs)
    span = sum(r["seconds"] for r in runs)
    per_record = cost / answered_ids  # identical requests are sent once, so a record can cost less than a request
    return {
        "model": ", ".join(models),
        "records": len(ids),
        "requests_answered": len(answered),
        "records_answered": answered_ids,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "usd": round(cost, 6) if priced else None,
        "usd_per_1m_records": round(per_record * MILLION, 2) if priced else None,
        "observed_records_per_s": round(sent / span, 2) if span > 0 else None,
        "hours_per_1m_records": round(MILLION / (sent / span) / 3600, 1) if span > 0 else None,
        "rate_runs": runs,
    }


IDLE_GAP_S = 60.0
"""In a cache written before rows named their run, a pause this long between two answers starts a new run."""


def teacher_runs(cache: ResponseCache, answered: list[dict]) -> list[dict]:
    """The live runs that answered any of ``answered``: ``{"started", "answered", "seconds"}`` each, where
    ``answered`` counts every answer the run received (all records, not only these) and ``seconds`` runs from the
    run's start to its last answer. Batch API answers are left out: they arrive when collected, not when sent."""
    live = [r for r in cache.results.values() if r.get("status") == "ok" and r.get("source") != "batch" and "time" in r]
    wanted = {r["key"] for r in answered}
    groups: dict[float, list[dict]] = {}
    unnamed = sorted((r for r in live if "run" not in r), key=lambda r: r["time"])
    for r in live:
        if "run" in r:
            groups.setdefault(r["run"], []).append(r)
    start = None
    for r, previous in zip(unnamed, [None, *unnamed[:-1]]):
        if previous is None or r["time"] - previous["time"] > IDLE_GAP_S:
            start = r["time"]  # an old row has no run start: its run starts at its first answer
        groups.setdefault(start, []).append(r)
    runs = []
    for started, rows in sorted(groups.items()):
        if not any(r["key"] in wanted for r in rows):
            continue
        last = max(r["time"] for r in rows)
        runs.append({"started": started, "answered": len(rows), "seconds": round(last - started, 3)})
    return runs


def _student(stats: dict, usd_per_hour: float | None) -> dict:
    if not stats.get("prompts"):
        raise UserError(
            "the last generate_batch run generated nothing (all done already?): rerun it to measure throughput",
            field="generation_stats",
        )
    rate = stats["prompts"] / stats["seconds"]
    hours = MILLION / rate / 3600
    return {
        "records": stats["prompts"],
        "records_per_s": round(rate, 2),
        "tokens_per_s": stats["tokens_per_s"],
        "tokens_per_record": round(stats["generated_tokens"] / stats["prompts"], 1),
        "device": stats.get("device"),
        "dtype": stats.get("dtype"),
        "threads": stats.get("threads"),
        "hours_per_1m_records": round(hours, 2),
        "usd_per_1m_records": round(hours * usd_per_hour, 2) if usd_per_hour is not None else None,
    }


def _fidelity(metrics: dict) -> dict:
    keep = {k: metrics.get(k) for k in ("scored", "exact_match", "rougeL", "bleu", "empty", "error", "missing")}
    if "items" in metrics:
        keep.update({f"item_{k}": metrics["items"][k] for k in ("precision", "recall", "f1")})
    return keep


def format_report(report: dict) -> str:
    """The report as one table: fidelity first, then teacher and student side by side."""
    t, s, f = report["teacher"], report["student"], report["fidelity"]
    quality = f"exact match {f['exact_match']:.3f}, ROUGE-L {f['rougeL']:.3f}"
    if "item_f1" in f:
        quality = f"items F1 {f['item_f1']:.3f} (P {f['item_precision']:.3f} / R {f['item_recall']:.3f}), " + quality
    lines = [f"== fidelity: student vs teacher on {f['scored']} held-out records ==", f"  {quality}"]
    base = report.get("untrained_student")
    if base:
        lines.append(
            f"  untrained student: items F1 {base.get('item_f1', 0.0):.3f}, exact match {base['exact_match']:.3f}"
        )
    student_cost = (
        _money(s["usd_per_1m_records"])
        if s["usd_per_1m_records"] is not None
        else "machine time (--student_usd_per_hour)"
    )
    rows = [
        ("", f"teacher ({t['model']})", f"student ({s['device']}, {s['threads']} threads, {s['dtype']})"),
        ("records in this run", f"{t['records_answered']:,} answered", f"{s['records']:,} generated"),
        ("cost of this run", _money(t["usd"]), "-"),
        ("cost per 1M records", _money(t["usd_per_1m_records"]), student_cost),
        (
            "records/s",
            f"{_number(t['observed_records_per_s'])} (observed)",
            f"{s['records_per_s']:,.1f} ({s['tokens_per_s']:,.0f} tokens/s)",
        ),
        ("hours per 1M records", _number(t["hours_per_1m_records"]), _number(s["hours_per_1m_records"])),
    ]
    lines.append("== cost and speed ==")
    lines += [f"  {a:<22} {b:<34} {c}" for a, b, c in rows]
    lines.append(f"  teacher rate over {_runs(t['rate_runs'])} (from each run's start to its last answer)")
    return "\n".join(lines)


def _runs(runs: list[dict]) -> str:
    """Which runs the teacher's rate covers: ``2 runs: 150 in 17.8 s, 40 in 4.7 s``."""
    if not runs:
        return "no live run (Batch API answers arrive when collected)"
    shown = ", ".join(f"{r['answered']:,} answers in {r['seconds']:,.1f} s" for r in runs[:3])
    more = f", +{len(runs) - 3} more" if len(runs) > 3 else ""
    return f"{len(runs)} live run{'s' if len(runs) > 1 else ''}: {shown}{more}"


def _money(value) -> str:
    if value is None:
        return "not priced"
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def _number(value) -> str:
    return "n/a" if value is None else f"{value:,.1f}"
