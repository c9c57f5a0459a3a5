"""distill_report: the teacher's cost from the usage it returned (Batch API at half price), per record and per 1M,
its observed rate, the student's throughput from generate_batch's stats, and one-line errors for unusable inputs."""

from __future__ import annotations

import json

import pytest

from distill.report import distill_report
from litgpt_ext.errors import UserError


def _files(tmp_path, prompts: int = 50):
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"id": f"r{i}", "title": "t"}) + "\n" for i in range(4)))
    usage = {"prompt_tokens": 1000, "completion_tokens": 100}
    rows = [
        {
            "key": "k0",
            "ids": ["r0"],
            "model": "gpt-4o-mini",
            "status": "ok",
            "usage": usage,
            "source": "live",
            "time": 0,
            "run": -1.0,
        },
        {"key": "k1", "ids": ["r1", "r2"], "model": "gpt-4o-mini", "status": "ok", "usage": usage, "source": "batch"},
        {"key": "k3", "ids": ["r3"], "model": "gpt-4o-mini", "status": "failed", "reason": "http_500", "time": 5},
        {"key": "k9", "ids": ["other"], "model": "gpt-4o", "status": "ok", "usage": usage, "time": 10},  # not this run
    ]
    rows[1]["time"] = 2.0
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = tmp_path / "g.stats.json"
    stats.write_text(
        json.dumps(
            {"prompts": prompts, "generated_tokens": 1500, "seconds": 2.5, "tokens_per_s": 600.0, "device": "cpu"}
        )
    )
    metrics = tmp_path / "metrics.json"
    metrics.write_text(
        json.dumps(
            {"scored": 4, "exact_match": 0.5, "rougeL": 0.7, "bleu": 40.0, "empty": 0, "error": 0, "missing": 0}
            | {"items": {"precision": 0.9, "recall": 0.8, "f1": 0.85}}
        )
    )
    return records, responses, stats, metrics


def test_cost_per_record_and_throughput(tmp_path, capsys):
    records, responses, stats, metrics = _files(tmp_path)
    report = distill_report(
        responses=responses,
        records=[records],
        generation_stats=stats,
        fidelity=metrics,
        student_usd_per_hour=3.6,
        out=tmp_path / "report.json",
    )
    t, s = report["teacher"], report["student"]
    live = (1000 * 0.15 + 100 * 0.60) / 1e6  # gpt-4o-mini's price table, USD per 1M tokens
    assert t["usd"] == pytest.approx(live * 1.5, rel=1e-6)  # the batch answer at half price
    assert (t["records"], t["records_answered"], t["requests_answered"]) == (4, 3, 2)
    assert t["usd_per_1m_records"] == pytest.approx(live * 1.5 / 3 * 1e6, abs=0.01)
    # one live answer, 1 s after its run started (the batch answer arrived when collected: not a rate)
    assert t["observed_records_per_s"] == pytest.approx(1.0)
    assert s["records_per_s"] == 20.0 and s["tokens_per_record"] == 30.0
    assert s["hours_per_1m_records"] == pytest.approx(1e6 / 20 / 3600, abs=0.01)
    assert s["usd_per_1m_records"] == pytest.approx(1e6 / 20 / 3600 * 3.6, abs=0.01)
    assert report["fidelity"]["item_f1"] == 0.85
    assert json.loads((tmp_path / "report.json").read_text()) == report
    out = capsys.readouterr().out
    assert "items F1 0.850" in out and "cost per 1M records" in out


def test_unusable_inputs_are_one_line_errors(tmp_path):
    records, responses, stats, metrics = _files(tmp_path, prompts=0)
    args = dict(responses=responses, records=[records], generation_stats=stats, fidelity=metrics, out=tmp_path / "r")
    with pytest.raises(UserError, match="generation_stats: the last generate_batch run generated nothing"):
        distill_report(**args)
    with pytest.raises(UserError, match="nothing.json: fidelity: file not found"):
        distill_report(**{**args, "fidelity": tmp_path / "nothing.json"})
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "zzz"}) + "\n")
    with pytest.raises(UserError, match="responses: no answered request for these records"):
        distill_report(**{**args, "records": [other]})
    assert not (tmp_path / "r").exists()


def _answer(key: str, when: float, run: float | None) -> dict:
    row = {"key": key, "ids": [key], "model": "gpt-4o-mini", "status": "ok", "source": "live", "time": when}
    return row if run is None else {**row, "run": run}


@pytest.mark.parametrize("named_runs", [True, False])
def test_teacher_rate_counts_only_the_time_spent_sending(tmp_path, named_runs, capsys):
    """150 records in 17.8 s, then (while the student trained for 3 minutes) 40 more in 4.7 s: 190 / 22.5 s, not
    190 over the 3 minutes between the first and the last answer. Caches written before rows named their run are
    split at idle gaps instead."""
    records, responses, stats, metrics = _files(tmp_path)
    rows = [_answer(f"a{i}", 100 + 17.8 * (i + 1) / 150, 100.0 if named_runs else None) for i in range(150)]
    rows += [_answer(f"b{i}", 300 + 4.7 * (i + 1) / 40, 300.0 if named_runs else None) for i in range(40)]
    responses.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records.write_text("".join(json.dumps({"id": r["key"]}) + "\n" for r in rows))
    report = distill_report(
        responses=responses, records=[records], generation_stats=stats, fidelity=metrics, out=tmp_path / "r.json"
    )
    t = report["teacher"]
    if named_runs:
        assert [(r["answered"], r["seconds"]) for r in t["rate_runs"]] == [(150, 17.8), (40, 4.7)]
        assert t["observed_records_per_s"] == pytest.approx(190 / 22.5, abs=0.01)
    else:  # each run measured from its first answer
        assert [r["answered"] for r in t["rate_runs"]] == [150, 40]
        assert t["observed_records_per_s"] == pytest.approx(190 / (17.8 * 149 / 150 + 4.7 * 39 / 40), abs=0.01)
    assert t["hours_per_1m_records"] < 40  # not 265 h
    assert "teacher rate over 2 live runs: 150 answers in" in capsys.readouterr().out
