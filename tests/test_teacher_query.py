"""distill_query against a real local HTTP server speaking the OpenAI API, driven by the real openai client."""

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

from conftest import REPO, run_cli
from distill.query import distill_query
from distill.teacher.fake_server import FakeOpenAI, ServerConfig
from litgpt_ext.errors import UserError

KEY = "sk-test-0123456789abcdef"
PROMPT = REPO / "prompts" / "search_queries.md"


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return KEY


def _run(**kw) -> int:
    """distill_query's exit code: 0 when everything was answered, 3 when requests remain failed or unanswered."""
    try:
        distill_query(**kw)
    except SystemExit as stop:
        return stop.code
    return 0


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _results(path: Path) -> dict[str, dict]:
    return {r["key"]: r for r in _rows(path) if "status" in r}


def test_all_records_answered_and_rerun_sends_nothing(tmp_path, api_key):
    records = write_records(tmp_path / "records.jsonl", 30)
    out = tmp_path / "responses.jsonl"
    with FakeOpenAI(ServerConfig(api_key=KEY)) as server:
        distill_query(records=records, prompt=PROMPT, out=out, base_url=server.base_url, concurrency=8)
        assert len(_results(out)) == 30 and all(r["status"] == "ok" for r in _results(out).values())
        ids = {i for r in _rows(out) for i in r.get("ids", [])}
        assert ids == {f"doc-{i:04d}" for i in range(30)}
        answered = sum(server.state.answered.values())
        distill_query(records=records, prompt=PROMPT, out=out, base_url=server.base_url, concurrency=8)
        assert sum(server.state.answered.values()) == answered  # the cache answered everything
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="ignore"), path


def test_twenty_percent_faults_end_answered_or_quarantined(tmp_path, api_key):
    records = write_records(tmp_path / "records.jsonl", 60)
    out = tmp_path / "responses.jsonl"
    cfg = ServerConfig(api_key=KEY, fault_rate=0.2, stall_s=0.6, bad_answer_rate=0.1, latency_s=0.01, seed=3)
    with FakeOpenAI(cfg) as server:
        code = _run(
            records=records,
            prompt=PROMPT,
            out=out,
            base_url=server.base_url,
            concurrency=8,
            timeout=0.4,
            max_attempts=10,
            retry_invalid=0,
            response_format="json_object",
        )
        assert code == 3  # failures remain: a pipeline must not go on
        assert server.state.faults_injected > 5
    results = _results(out)
    assert len(results) == 60
    quarantine = _rows(tmp_path / "responses.quarantine.jsonl")
    failed = {k for k, r in results.items() if r["status"] == "failed"}
    assert failed, "bad answers were injected: some must be recorded as failures"
    assert {q["key"] for q in quarantine} == failed
    assert all(q["reason"] in ("length", "content_filter", "invalid_json") and q["ids"] for q in quarantine)


def test_client_errors_fail_the_request_and_auth_errors_stop_the_run(tmp_path, api_key):
    records = tmp_path / "records.jsonl"
    records.write_text(
        json.dumps({"id": "ok", "title": "fine", "question": "q"})
        + "\n"
        + json.dumps({"id": "bad", "title": "TRIGGER_400", "question": "q"})
        + "\n"
    )
    out = tmp_path / "responses.jsonl"
    with FakeOpenAI(ServerConfig(api_key=KEY)) as server:
        assert _run(records=records, prompt="Title: {title}", out=out, base_url=server.base_url) == 3
        by_id = {r["ids"][0]: r for r in _results(out).values()}
        assert by_id["ok"]["status"] == "ok"
        assert by_id["bad"]["reason"] == "http_400" and "prompt was rejected" in by_id["bad"]["detail"]
        assert by_id["bad"]["attempts"] == 1

        code = _run(
            records=records,
            prompt="Title: {title}",
            out=tmp_path / "r404.jsonl",
            model="missing-model",
            base_url=server.base_url,
        )
        assert code == 3
        assert {r["reason"] for r in _results(tmp_path / "r404.jsonl").values()} == {"http_404"}

        result = run_cli(
            "distill_query",
            "--records",
            records,
            "--prompt",
            "Q: {question}",
            "--out",
            tmp_path / "r401.jsonl",
            "--base_url",
            server.base_url,
            env={"OPENAI_API_KEY": "sk-wrong"},
        )
        assert result.returncode == 2
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: api_key: the API refused the request (401)") and "Traceback" not in result.stderr


def _query_args(records: Path, out: Path, base_url: str, concurrency: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "litgpt_ext",
        "distill_query",
        "--records",
        str(records),
        "--prompt",
        str(PROMPT),
        "--out",
        str(out),
        "--base_url",
        base_url,
        "--concurrency",
        str(concurrency),
    ]


def _start_until(args: list[str], out: Path, lines: int, **popen) -> subprocess.Popen:
    """Start a query run and return once ``out`` holds ``lines`` answers (or 60 s passed)."""
    proc = subprocess.Popen(args, env={**os.environ, "OPENAI_API_KEY": KEY}, **popen)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < lines):
        time.sleep(0.02)
    return proc


def test_kill_9_mid_run_loses_nothing_and_resends_only_in_flight(tmp_path):
    records = write_records(tmp_path / "records.jsonl", 150)
    out = tmp_path / "responses.jsonl"
    concurrency = 6
    with FakeOpenAI(ServerConfig(api_key=KEY, latency_s=0.05)) as server:
        args = _query_args(records, out, server.base_url, concurrency)
        proc = _start_until(args, out, 40, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before = len(_results(out))
        assert 0 < done_before < 150, done_before
        with open(out, "a") as fh:  # a torn last line, as if the kill hit mid-write
            fh.write('{"key": "deadbeef", "ids": ["doc-9')
        subprocess.run(args, env={**os.environ, "OPENAI_API_KEY": KEY}, check=True, capture_output=True)
        results = _results(out)
        assert len(results) == 150 and all(r["status"] == "ok" for r in results.values())
        lines = _rows(out)  # parses: the torn line was cut
        assert len([r for r in lines if "status" in r]) == 150  # one line per request, none twice
        assert server.state.duplicates() <= concurrency, server.state.duplicates()


def test_ctrl_c_stops_cleanly_and_keeps_everything(tmp_path):
    records = write_records(tmp_path / "records.jsonl", 200)
    out = tmp_path / "responses.jsonl"
    with FakeOpenAI(ServerConfig(api_key=KEY, latency_s=0.05)) as server:
        proc = _start_until(
            _query_args(records, out, server.base_url, 4),
            out,
            20,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "interrupted" in stdout
        assert 20 <= len(_results(out)) < 200
        assert len(_rows(out)) == len(_results(out))  # every line whole


def test_rate_limit_headers_and_429_are_honoured(tmp_path, api_key):
    records = write_records(tmp_path / "records.jsonl", 25)
    out = tmp_path / "responses.jsonl"
    with FakeOpenAI(ServerConfig(api_key=KEY, rpm=600)) as server:
        t0 = time.time()
        distill_query(records=records, prompt=PROMPT, out=out, base_url=server.base_url, concurrency=16, rpm=600)
        elapsed = time.time() - t0
        assert server.state.rate_limited == 0  # evenly spaced: never over the server's window
    assert elapsed >= 24 * 60 / 600 * 0.9
    assert len(_results(out)) == 25


def test_max_cost_stops_before_the_budget(tmp_path, api_key):
    records = write_records(tmp_path / "records.jsonl", 40)
    out = tmp_path / "responses.jsonl"
    with FakeOpenAI(ServerConfig(api_key=KEY)) as server:
        # $1 per 1k tokens: each request reserves ~(60 prompt + 50 output) tokens = ~$0.11
        code = _run(
            records=records,
            prompt=PROMPT,
            out=out,
            base_url=server.base_url,
            concurrency=2,
            max_tokens=50,
            price_in=1000.0,
            price_out=1000.0,
            max_cost_usd=1.0,
        )
        assert code == 3  # requests left unanswered
    results = _results(out)
    spent = sum((r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]) * 1e-3 for r in results.values())
    assert 0 < len(results) < 40 and spent <= 1.0


def test_dry_run_counts_with_a_local_tiktoken_file(tmp_path, capsys):
    records = write_records(tmp_path / "records.jsonl", 10)
    enc = write_tiktoken_file(tmp_path / "tiny.tiktoken")
    distill_query(
        records=records,
        prompt=PROMPT,
        out=tmp_path / "r.jsonl",
        model="gpt-4o-mini",
        dry_run=True,
        encoding=str(enc),
        max_tokens=100,
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests"] == 10 and summary["max_output_tokens"] == 1000 and summary["prompt_tokens"] > 500
    assert summary["estimated_cost_usd"] == pytest.approx(
        (summary["prompt_tokens"] * 0.15 + 1000 * 0.60) / 1e6, abs=1e-4
    )
    assert not (tmp_path / "r.jsonl").exists()  # nothing sent, nothing written
    assert summary["prompt_tokens_counted_with"] == "tiktoken tiny"
    with pytest.raises(UserError, match="cannot load tiktoken no_such_encoding .*pass --encoding"):
        distill_query(records=records, prompt=PROMPT, dry_run=True, encoding="no_such_encoding")
    with pytest.raises(UserError, match=r"missing/o200k_base.tiktoken: encoding: file not found$"):
        distill_query(records=records, prompt=PROMPT, dry_run=True, encoding="missing/o200k_base.tiktoken")


def test_dry_run_offline_without_an_encoding_file_estimates_and_says_so(tmp_path, capsys, monkeypatch):
    """No encoding ships and tiktoken cannot download one here: the count is a flagged estimate, not a stop."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):  # offline even where a network is
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    records = write_records(tmp_path / "records.jsonl", 10)
    distill_query(records=records, prompt=PROMPT, out=tmp_path / "r.jsonl", dry_run=True, max_tokens=100)
    summary = json.loads(capsys.readouterr().out.split("\nno price")[0])
    assert summary["prompt_tokens_counted_with"].startswith("ESTIMATE: 4 characters per token")
    assert summary["prompt_tokens"] > 0 and summary["estimated_cost_usd"] > 0


@pytest.mark.parametrize(
    ("records_text", "prompt", "expected"),
    [
        ('{"id": 1, "title": "a"}\n{"id": 2}\n', "Title: {title}", "records.jsonl:2: title: missing"),
        ('{"id": 1, "title": "a"}\nnot json\n', "Title: {title}", "records.jsonl:2: invalid JSON"),
        ('{"id": 1, "title": "a"}\n{"id": 1, "title": "b"}\n', "Title: {title}", "records.jsonl:2: id: duplicate id"),
        ('{"id": 1, "title": "a"}\n', "Title: {title\n", "<prompt>:1: template: "),
        ('{"id": 1, "title": "a"}\n', "Title: {t.x}", "<prompt>:1: template: placeholder {t.x}"),
    ],
)
def test_bad_records_and_templates_are_located_errors(tmp_path, records_text, prompt, expected):
    records = tmp_path / "records.jsonl"
    records.write_text(records_text)
    result = run_cli(
        "distill_query",
        "--records",
        records,
        "--prompt",
        prompt,
        "--out",
        tmp_path / "r.jsonl",
        "--dry_run",
        "true",
        "--encoding",
        write_tiktoken_file(tmp_path / "e.tiktoken"),
    )
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert expected in line and "Traceback" not in result.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_template_file_error_names_file_and_line(tmp_path):
    bad = tmp_path / "task.md"
    bad.write_text("---\nsystem: hi\n---\nTitle: {title}\nBody: {body\n")
    records = write_records(tmp_path / "records.jsonl", 2)
    with pytest.raises(UserError) as err:
        distill_query(records=records, prompt=bad, dry_run=True)
    assert str(err.value).startswith(f"{bad}:5: template:")


def test_ready_chat_messages_file(tmp_path, api_key):
    msgs = tmp_path / "messages.jsonl"
    msgs.write_text(
        json.dumps(
            {
                "id": "a",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question: why?"}],
            }
        )
        + "\n"
        + json.dumps({"id": "b", "messages": [{"role": "user", "content": "Question: how?"}]})
        + "\n"
    )
    out = tmp_path / "r.jsonl"
    with FakeOpenAI(ServerConfig(api_key=KEY)) as server:
        distill_query(messages=msgs, out=out, base_url=server.base_url)
    assert sorted(i for r in _results(out).values() for i in r["ids"]) == ["a", "b"]
    msgs.write_text(json.dumps({"id": "c", "messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(UserError, match=r"messages.jsonl:1: messages: message 0 needs a role and string content"):
        distill_query(messages=msgs, out=out, dry_run=True)


@pytest.mark.parametrize("fault", ["cut_body", "not_completion"])
def test_a_200_with_a_bad_body_is_retried_then_quarantined_never_a_traceback(tmp_path, api_key, fault):
    records = write_records(tmp_path / "records.jsonl", 30)
    out = tmp_path / "responses.jsonl"
    with FakeOpenAI(ServerConfig(api_key=KEY, fault_rate=0.3, faults=(fault,), seed=5)) as server:
        assert (
            _run(records=records, prompt=PROMPT, out=out, base_url=server.base_url, concurrency=4, max_attempts=6) == 0
        )
        assert server.state.faults_injected > 0
    results = _results(out)
    assert len(results) == 30 and all(r["status"] == "ok" for r in results.values())  # retried like a 5xx
    with FakeOpenAI(ServerConfig(api_key=KEY, fault_rate=1.0, faults=(fault,))) as server:
        out2 = tmp_path / "all-bad.jsonl"
        assert (
            _run(records=records, prompt=PROMPT, out=out2, base_url=server.base_url, concurrency=4, max_attempts=2) == 3
        )
    reasons = {r["reason"] for r in _results(out2).values()}
    assert reasons == {"invalid_response_body"}


def test_an_unreachable_endpoint_stops_at_once_and_caches_nothing(tmp_path, api_key):
    import socket

    records = write_records(tmp_path / "records.jsonl", 20)
    out = tmp_path / "responses.jsonl"
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(UserError, match=rf"base_url: cannot reach http://127.0.0.1:{port}/v1/"):
        distill_query(records=records, prompt=PROMPT, out=out, base_url=f"http://127.0.0.1:{port}/v1", concurrency=4)
    assert time.monotonic() - t0 < 15
    assert not out.exists() or _results(out) == {}  # nothing cached: a rerun sends every request


def test_a_changed_prompt_is_answered_and_changing_it_back_reuses_the_first_answers(tmp_path, api_key):
    """The pipeline's teacher stage reruns when its prompt changes; convert must then read the answers to the prompt
    of the latest run, also when the prompt goes back to one whose answers are cached (no request sent)."""
    from distill.convert import distill_convert

    records = write_records(tmp_path / "records.jsonl", 6)
    out, data = tmp_path / "responses.jsonl", tmp_path / "data"
    queries = "Title: {title}\nBody: {body}\nWrite search queries, one per line."
    categories = "Title: {title}\nBody: {body}\nList its categories, one per line."

    def outputs() -> set[str]:
        distill_convert(records=records, responses=out, out_dir=data, parser="lines", val_fraction=0.0)
        return {row["output"] for row in json.loads((data / "train.json").read_text())}

    with FakeOpenAI(ServerConfig(api_key=KEY)) as server:
        distill_query(records=records, prompt=queries, out=out, base_url=server.base_url)
        first = outputs()
        assert first and all(o == o.lower() for o in first)  # queries are lower case
        distill_query(records=records, prompt=categories, out=out, base_url=server.base_url)
        second = outputs()
        assert second and all(o[0].isupper() for o in second) and not second & first
        sent = sum(server.state.answered.values())
        distill_query(records=records, prompt=queries, out=out, base_url=server.base_url)
        assert sum(server.state.answered.values()) == sent  # cached: nothing sent
        assert outputs() == first


def test_cache_lines_are_written_at_once_and_fsynced_in_groups(tmp_path, monkeypatch):
    """Every line is in the file when write returns (a kill -9 loses nothing); fsyncs come at most once per
    interval and at close (an OS crash loses at most that interval); interval 0 fsyncs every line."""
    from litgpt_ext.io import JsonlAppender

    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    grouped = JsonlAppender(tmp_path / "grouped.jsonl", fsync_interval=60.0)
    for i in range(100):
        grouped.write({"i": i})
        assert len((tmp_path / "grouped.jsonl").read_text().splitlines()) == i + 1
    assert len(calls) == 0  # the first interval has not passed
    grouped.close()
    assert len(calls) == 1
    calls.clear()
    with JsonlAppender(tmp_path / "each.jsonl") as each:
        for i in range(10):
            each.write({"i": i})
    assert len(calls) == 10


def test_a_transient_429_waits_alone_and_a_limit_429_pauses_everyone():
    import httpx

    from distill.teacher.live import budget_left

    assert budget_left(httpx.Headers({"x-ratelimit-remaining-requests": "120", "x-ratelimit-remaining-tokens": "9"}))
    assert not budget_left(httpx.Headers({"x-ratelimit-remaining-requests": "0"}))
    assert not budget_left(httpx.Headers({"x-ratelimit-remaining-requests": "5", "x-ratelimit-remaining-tokens": "0"}))
    assert not budget_left(httpx.Headers({"retry-after-ms": "50"}))  # no headers: assume the limit


def test_the_limiter_catches_up_late_slots_only_within_its_window():
    """A sender that wakes late may use the slots it missed in the last CATCH_UP_S seconds, never more: after a
    stall, at most CATCH_UP_S / interval + 1 requests go at once, and then the spacing holds."""
    import asyncio

    from litgpt_ext.api.ratelimit import CATCH_UP_S, RateLimiter

    async def main():
        limiter = RateLimiter(rpm=60_000)  # a slot every millisecond
        await limiter.acquire()
        await asyncio.sleep(0.3)  # the loop was busy elsewhere: 300 slots passed unused
        t0 = time.monotonic()
        times = []
        for _ in range(150):
            await limiter.acquire()
            times.append(time.monotonic() - t0)
        return times

    times = asyncio.run(main())
    immediate = sum(t < 0.002 for t in times)
    assert immediate <= CATCH_UP_S / 0.001 + 2  # the missed slots, the current one and the next (< 2 ms)
    assert times[-1] >= (150 - CATCH_UP_S / 0.001 - 1) * 0.001 * 0.9
