"""--mode batch: request files, upload, batches, state file, rerun without re-submitting, expiry, crash adoption."""

from __future__ import annotations

import json

import pytest
from teacher_helpers import write_records

from conftest import REPO
from distill.query import distill_query
from distill.teacher.batch_api import split_into_files
from distill.teacher.fake_server import FakeOpenAI, ServerConfig
from distill.teacher.requests import ChatRequest

KEY = "sk-batch-secret-42"
PROMPT = REPO / "prompts" / "search_queries.md"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def _results(path):
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines()) if "status" in r}


def _query(records, out, server, **kw) -> int:
    """The exit code: 0 when every request is answered, 3 while batches run or requests remain (rerun to collect)."""
    try:
        distill_query(
            records=records, prompt=PROMPT, out=out, base_url=server.base_url, mode="batch", poll_interval=0.05, **kw
        )
    except SystemExit as stop:
        return stop.code
    return 0


def test_batch_rerun_polls_instead_of_resubmitting(tmp_path):
    records = write_records(tmp_path / "records.jsonl", 25)
    out = tmp_path / "responses.jsonl"
    with FakeOpenAI(ServerConfig(api_key=KEY, batch_delay_s=0.5)) as server:
        assert _query(records, out, server, wait=False, batch_max_requests=10) == 3  # work left: non-zero
        assert server.state.batches_created == 3  # 25 requests, at most 10 per file
        state = json.loads((tmp_path / "responses.jsonl.batches.json").read_text())
        assert [len(e["keys"]) for e in state["entries"]] == [10, 10, 5] and all(
            e["batch_id"] for e in state["entries"]
        )
        assert _query(records, out, server, wait=True, batch_max_requests=10) == 0
        assert server.state.batches_created == 3  # polled, not submitted again
        assert server.state.duplicates() == 0
    results = _results(out)
    assert len(results) == 25 and all(r["status"] == "ok" and r["source"] == "batch" for r in results.values())
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="ignore"), path


def test_expired_batch_keeps_completed_and_resubmits_only_the_rest(tmp_path):
    records = write_records(tmp_path / "records.jsonl", 20)
    out = tmp_path / "responses.jsonl"
    cfg = ServerConfig(api_key=KEY, batch_complete_fraction=0.5, batch_delay_s=0.2)
    with FakeOpenAI(cfg) as server:
        _query(records, out, server, wait=False)
        cfg.batch_complete_fraction = 1.0  # the next batch completes
        assert _query(records, out, server, wait=True) == 0
        assert server.state.batches_created == 2
        second = sorted(server.state.batches.values(), key=lambda b: b["created_at"])[-1]
        assert second["request_counts"]["total"] == 10  # only the 10 that expired were sent again
        assert server.state.duplicates() == 0
    assert len(_results(out)) == 20


def test_crash_between_create_and_record_adopts_the_existing_batch(tmp_path):
    records = write_records(tmp_path / "records.jsonl", 6)
    out = tmp_path / "responses.jsonl"
    state_file = tmp_path / "responses.jsonl.batches.json"
    with FakeOpenAI(ServerConfig(api_key=KEY, batch_delay_s=0.3)) as server:
        _query(records, out, server, wait=False)
        state = json.loads(state_file.read_text())
        state["entries"][0]["batch_id"] = None  # as if killed right after batches.create returned
        state_file.write_text(json.dumps(state))
        assert _query(records, out, server, wait=True) == 0
        assert server.state.batches_created == 1
    assert len(_results(out)) == 6


def test_request_files_respect_count_and_size_limits():
    reqs = [
        ChatRequest(f"k{i}", {"model": "m" if i % 2 else "n", "messages": [{"role": "user", "content": "x" * 100}]})
        for i in range(9)
    ]
    chunks = split_into_files(reqs, max_requests=3, max_bytes=400)
    assert all(len({r.body["model"] for r in c}) == 1 for c in chunks)  # one model per file
    assert all(len(c) <= 2 for c in chunks)  # ~170 bytes per line: the byte limit binds before the count
    assert sorted(r.key for c in chunks for r in c) == sorted(r.key for r in reqs)
