"""distill_pairs: teacher-vs-student and judge pairs, against the local OpenAI-compatible server (real HTTP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from teacher_helpers import write_records, write_tiktoken_file

from conftest import REPO
from distill.convert import distill_convert
from distill.pairs import distill_pairs, parse_verdict, word_overlap
from distill.query import distill_query
from distill.teacher.fake_server import FakeOpenAI, ServerConfig
from distill.teacher.run import TeacherArgs
from litgpt_ext.errors import EXIT_INCOMPLETE, UserError

KEY = "sk-test-pairs-0123456789"
STUDENT = REPO / "prompts" / "student_search_queries.md"


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return KEY


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _generations(path: Path, rows: dict[str, list[str] | str]) -> Path:
    """generate_batch's output format; a str value is an error record."""
    lines = []
    for i, (rid, texts) in enumerate(rows.items(), start=1):
        if isinstance(texts, str):
            lines.append({"id": rid, "_line": i, "error": texts})
        else:
            lines.append({"id": rid, "generations": texts, "finish_reasons": ["stop"] * len(texts), "_line": i})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _teacher(tmp_path: Path, n: int) -> tuple[Path, Path]:
    records = write_records(tmp_path / "records.jsonl", n)
    responses = tmp_path / "responses.jsonl"
    with FakeOpenAI(ServerConfig(api_key=KEY)) as server:
        distill_query(
            records=records,
            prompt=REPO / "prompts" / "search_queries.md",
            out=responses,
            base_url=server.base_url,
        )
    return records, responses


def test_teacher_vs_student_pairs_prompts_and_quarantine(tmp_path, api_key):
    records, responses = _teacher(tmp_path, 5)
    teacher_text = _jsonl(responses)[0]["choices"][0]["content"].splitlines()
    gens = _generations(
        tmp_path / "gen.jsonl",
        {
            "doc-0000": [teacher_text[0].upper() + "  ", "salt town market", "something else entirely", ""],
            "doc-0001": ["town number river"],
            "doc-0002": "prompts.jsonl:3: prompt: empty prompt",
            # doc-0003: never generated; doc-0004 below has no teacher response
            "doc-0004": ["x"],
        },
    )
    cache = _jsonl(responses)
    responses.write_text("".join(json.dumps(r) + "\n" for r in cache if "doc-0004" not in r.get("ids", [])))
    out = tmp_path / "pairs.jsonl"
    distill_pairs(
        records=records,
        responses=responses,
        generations=gens,
        out=out,
        instruction=str(STUDENT),
        parser="lines",
        pairs_per_record=2,
    )
    pairs = _jsonl(out)
    by_record: dict[str, list[dict]] = {}
    for p in pairs:
        by_record.setdefault(p["record_id"], []).append(p)
    assert set(by_record) == {"doc-0000", "doc-0001"}
    assert len(by_record["doc-0000"]) == 2  # --pairs_per_record keeps the two hardest
    overlaps = [p["overlap"] for p in by_record["doc-0000"]]
    assert overlaps == sorted(overlaps, reverse=True)
    every_overlap = [
        word_overlap(c, r) for c in teacher_text for r in ("salt town market", "something else entirely") if c.strip()
    ]
    assert overlaps[0] == pytest.approx(max(every_overlap), abs=1e-4)
    # the prompt is exactly distill_convert's student prompt
    distill_convert(records=records, responses=responses, out_dir=tmp_path / "sft", instruction=str(STUDENT))
    student_prompts = {r["id"]: r["prompt"] for r in _jsonl(tmp_path / "sft" / "prompts.jsonl")}
    assert all(p["prompt"] == student_prompts[p["record_id"]] for p in pairs)
    assert all(p["chosen"].strip().casefold() != p["rejected"].strip().casefold() for p in pairs)
    reasons = {(q["record_id"], q["reason"]) for q in _jsonl(tmp_path / "pairs.quarantine.jsonl")}
    assert ("doc-0000", "equal") in reasons  # the upper-cased copy of the teacher's line
    assert ("doc-0002", "generation_error") in reasons
    assert ("doc-0003", "no_generations") in reasons
    assert ("doc-0004", "no_response") in reasons
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    assert summary["pairs"] == len(pairs) and summary["dropped"]["no_response"] == 1


def test_pairs_feed_finetune_dpo_data(tmp_path, api_key, tiny_checkpoint):
    """The output is what PreferenceData reads (the id, prompt, chosen, rejected columns; provenance ignored)."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.preference import PreferenceData

    records, responses = _teacher(tmp_path, 6)
    gens = _generations(tmp_path / "gen.jsonl", {f"doc-{i:04d}": ["town salt glass", "river"] for i in range(6)})
    out = tmp_path / "pairs.jsonl"
    distill_pairs(records=records, responses=responses, generations=gens, out=out, instruction=str(STUDENT))
    data = PreferenceData(path=out, val_split_fraction=0.3)
    data.connect(Tokenizer(tiny_checkpoint), batch_size=2)
    data.setup()
    assert len(data.train_dataset) + len(data.val_dataset) == len(_jsonl(out)) > 0


def test_parse_verdict():
    assert parse_verdict('{"score": 7, "reason": "ok"}') == (7.0, "ok")
    assert parse_verdict('```json\n{"score": "9", "reason": "fine"}\n```') == (9.0, "fine")
    for bad in ('{"score": 11}', '{"score": true}', '{"reason": "no score"}', "seven", '{"score": "high"}'):
        with pytest.raises(ValueError):
            parse_verdict(bad)


def _judge_setup(tmp_path: Path, n: int) -> tuple[Path, Path]:
    records = write_records(tmp_path / "records.jsonl", n)
    # sample 0 is grounded in the record (high score), sample 1 is not (low), sample 2 half (middle)
    gens = {
        f"doc-{i:04d}": [f"town {i} salt glass river", "purple elephants dancing", f"town {i} purple elephants"]
        for i in range(n)
    }
    return records, _generations(tmp_path / "gen.jsonl", gens)


def test_judge_mode_on_the_demo_records_picks_best_and_worst_with_faults(tmp_path, api_key):
    """The demo's records; per record a grounded sample (words of its body), an ungrounded one and a mixed one."""
    records = tmp_path / "records.jsonl"  # the first 20 of them
    records.write_text("".join((REPO / "artifacts" / "demo" / "records.jsonl").read_text().splitlines(True)[:20]))
    rows = _jsonl(records)
    gens = _generations(
        tmp_path / "gen.jsonl",
        {
            r["id"]: [" ".join(r["body"].split()[:6]), "purple elephants dancing", r["title"].split()[0] + " elephants"]
            for r in rows
        },
    )
    out = tmp_path / "pairs.jsonl"
    cfg = ServerConfig(api_key=KEY, fault_rate=0.2, stall_s=0.5, seed=1)
    with FakeOpenAI(cfg) as server:
        teacher = TeacherArgs(base_url=server.base_url, timeout=0.3, concurrency=8, max_attempts=10, max_tokens=100)
        distill_pairs(
            mode="judge", records=records, generations=gens, out=out, instruction=str(STUDENT), teacher=teacher
        )
        sent = sum(server.state.answered.values())
        assert sent >= len(rows) * 3
        pairs = _jsonl(out)
        assert len(pairs) == len(rows)
        for p, r in zip(pairs, rows, strict=True):
            assert p["chosen"] == " ".join(r["body"].split()[:6]) and p["rejected"] == "purple elephants dancing"
            assert p["chosen_score"] > p["rejected_score"] and p["margin"] == p["chosen_score"] - p["rejected_score"]
            assert p["source"] == "judge" and p["judge_model"] == "gpt-4o-mini"
            assert p["prompt"].startswith("Write search queries for this document.")
        # a rerun is answered from the judge cache: nothing is paid twice
        distill_pairs(
            mode="judge",
            records=records,
            generations=gens,
            out=out,
            instruction=str(STUDENT),
            teacher=teacher,
            min_margin=100,
        )
        assert sum(server.state.answered.values()) == sent
    assert _jsonl(out) == []
    reasons = {q["reason"] for q in _jsonl(tmp_path / "pairs.quarantine.jsonl")}
    assert reasons == {"below_min_margin"}
    assert (tmp_path / "pairs.judge.jsonl").is_file()


def test_judge_ties_unparseable_and_dry_run(tmp_path, api_key, capsys):
    records = write_records(tmp_path / "records.jsonl", 3)
    gens = _generations(
        tmp_path / "gen.jsonl",
        {"doc-0000": ["town 0 salt", "town 0 glass"], "doc-0001": ["only one answer"], "doc-0002": ["a b c", "d e f"]},
    )
    out = tmp_path / "pairs.jsonl"
    with FakeOpenAI(ServerConfig(api_key=KEY)) as server:
        teacher = TeacherArgs(base_url=server.base_url)
        distill_pairs(
            mode="judge",
            records=records,
            generations=gens,
            out=out,
            instruction=str(STUDENT),
            teacher=TeacherArgs(
                dry_run=True, price_in=1.0, price_out=2.0, encoding=str(write_tiktoken_file(tmp_path / "t.tiktoken"))
            ),
        )
        assert '"requests": 5' in capsys.readouterr().out and not out.exists()
        assert sum(server.state.answered.values()) == 0
        distill_pairs(
            mode="judge", records=records, generations=gens, out=out, instruction=str(STUDENT), teacher=teacher
        )
        reasons = {q["record_id"]: q["reason"] for q in _jsonl(tmp_path / "pairs.quarantine.jsonl")}
        assert reasons == {"doc-0000": "tie", "doc-0001": "too_few_scored", "doc-0002": "tie"}
        # a judge prompt whose answers carry no score: every verdict is quarantined as unparseable
        distill_pairs(
            mode="judge",
            records=records,
            generations=gens,
            out=out,
            instruction=str(STUDENT),
            teacher=teacher,
            judge_prompt="Title: {title}\nRate this answer: {student_answer}",
        )
    quarantined = _jsonl(tmp_path / "pairs.quarantine.jsonl")
    assert sum(q["reason"] == "judge_unparseable" for q in quarantined) == 5


def test_bad_inputs_are_located_errors(tmp_path, api_key):
    records, responses = _teacher(tmp_path, 2)
    bad = tmp_path / "gen.jsonl"
    bad.write_text('{"id": "doc-0000", "generations": ["a"]}\n{"id": "doc-0001", "generations": "oops"}\n')
    with pytest.raises(UserError, match=r"gen.jsonl:2: generations: expected a list"):
        distill_pairs(records=records, responses=responses, generations=bad, out=tmp_path / "p.jsonl")
    with pytest.raises(UserError, match="pairs_per_record: must be at least 1"):
        distill_pairs(records=records, responses=responses, generations=bad, pairs_per_record=0)
    assert not (tmp_path / "p.jsonl").exists()


def test_kill_9_mid_judge_run_resends_only_in_flight(tmp_path):
    records, gens = _judge_setup(tmp_path, 60)
    out = tmp_path / "pairs.jsonl"
    concurrency = 4
    with FakeOpenAI(ServerConfig(api_key=KEY, latency_s=0.05, fault_rate=0.1, stall_s=0.3, seed=2)) as server:
        args = [
            sys.executable,
            "-m",
            "litgpt_ext",
            "distill_pairs",
            "--mode",
            "judge",
            "--records",
            str(records),
            "--generations",
            str(gens),
            "--out",
            str(out),
            "--instruction",
            str(STUDENT),
            "--teacher.base_url",
            server.base_url,
            "--teacher.concurrency",
            str(concurrency),
            "--teacher.timeout",
            "0.2",
            "--teacher.max_attempts",
            "20",
        ]
        env = {**os.environ, "OPENAI_API_KEY": KEY}
        cache = tmp_path / "pairs.judge.jsonl"
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 90
        while time.time() < deadline and (not cache.exists() or cache.read_text().count("\n") < 50):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        answered_before = cache.read_text().count("\n")
        assert 0 < answered_before < 180 and not out.exists()
        result = subprocess.run(args, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(_jsonl(out)) == 60
        results = [r for r in _jsonl(cache) if "status" in r]
        assert len(results) == len({r["key"] for r in results}) == 180  # one line per verdict, none twice
        assert server.state.duplicates() <= concurrency, server.state.duplicates()


def test_unfinished_judging_exits_non_zero(tmp_path, api_key):
    """A budget stop leaves verdicts missing: pairs are written for finished records, and the exit code says so."""
    records, gens = _judge_setup(tmp_path, 10)
    out = tmp_path / "pairs.jsonl"
    with FakeOpenAI(ServerConfig(api_key=KEY)) as server:
        teacher = TeacherArgs(
            base_url=server.base_url, concurrency=1, max_tokens=20, price_in=1000.0, price_out=1000.0, max_cost_usd=0.5
        )
        with pytest.raises(SystemExit) as stop:
            distill_pairs(
                mode="judge", records=records, generations=gens, out=out, instruction=str(STUDENT), teacher=teacher
            )
    assert stop.value.code == EXIT_INCOMPLETE
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    assert summary["pending_records"] > 0 and summary["pairs"] == len(_jsonl(out)) < 10
