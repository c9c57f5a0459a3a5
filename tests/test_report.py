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
    assert t["observed_records_per_s"] == pytest.approx(2 / 2.0)  # answers at t=0 and t=2
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
