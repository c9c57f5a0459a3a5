"""Send chat requests to the teacher and keep every answer: the machinery behind ``distill_query``, shared by every
command that asks the teacher something (``distill_pairs --mode judge`` too).

:class:`TeacherArgs` holds the endpoint, sampling and scheduling settings; :func:`query_teacher` sends what the cache
lacks — live (async, rate-limited, retried) or through the Batch API — or, with ``dry_run``, only prices it.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill.teacher.cache import ResponseCache
from distill.teacher.cost import (
    CHARS_PER_TOKEN,
    CostMeter,
    approx_prompt_tokens,
    chat_prompt_tokens,
    load_encoding,
    price_for,
)
from distill.teacher.requests import ChatRequest
from litgpt_ext.data.records import load_json
from litgpt_ext.errors import UserError


@dataclass
class TeacherArgs:
    """How to reach the teacher, what to ask it for, and how fast."""

    model: str = "gpt-4o-mini"
    """Teacher model name."""
    base_url: str | None = None
    """OpenAI-compatible endpoint (default: the ``openai`` client's, or OPENAI_BASE_URL)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never written anywhere)."""
    temperature: float | None = None
    """Sampling temperature."""
    top_p: float | None = None
    """Nucleus sampling."""
    max_tokens: int | None = 512
    """Maximum output tokens per answer."""
    seed: int | None = None
    """Sampling seed (where the endpoint supports it)."""
    response_format: str | None = None
    """``json_object`` or a JSON-schema file; answers that are not valid JSON count as failures."""
    logprobs: int | None = None
    """Ask for the log-prob of every answer token and its ``K`` most likely alternatives (``logprobs: true,
    top_logprobs: K``; OpenAI allows up to 20) and keep them in the cache, for ``distill_convert --logprobs``."""
    mode: Literal["live", "batch"] = "live"
    """``live`` (async requests) or ``batch`` (the Batch API: upload, create, poll, merge)."""
    concurrency: int = 16
    """Requests in flight at once (live)."""
    rpm: int | None = None
    """Requests-per-minute budget (live); requests are spaced evenly."""
    tpm: int | None = None
    """Tokens-per-minute budget (live)."""
    timeout: float = 120.0
    """Seconds before a request is abandoned and retried."""
    max_attempts: int = 8
    """Attempts per request for retryable errors (408/409/429/5xx, timeouts, dropped connections)."""
    retry_invalid: int = 1
    """Extra attempts for answers cut off (length), filtered, or not valid JSON."""
    retry_failed: bool = False
    """Re-send requests cached as failed by an earlier run."""
    dry_run: bool = False
    """Count requests, prompt tokens, max output tokens and estimated cost; send nothing."""
    encoding: str | None = None
    """tiktoken encoding name or a local ``.tiktoken`` file (offline) for --dry_run counts."""
    price_in: float | None = None
    """USD per 1M input tokens (overrides the built-in table)."""
    price_out: float | None = None
    """USD per 1M output tokens (overrides the built-in table)."""
    max_cost_usd: float | None = None
    """Stop cleanly before this budget would be exceeded (counts the usage actually returned)."""
    batch_max_requests: int = 50_000
    """Requests per Batch API input file (OpenAI's limit: 50,000)."""
    batch_max_bytes: int = 200_000_000
    """Bytes per Batch API input file (OpenAI's limit: 200 MB)."""
    poll_interval: float = 30.0
    """Seconds between Batch API polls."""
    wait: bool = True
    """In batch mode, wait until every batch is finished (false: submit/poll once and exit; rerun later)."""
    fsync_interval: float = 0.2
    """Seconds between grouped fsyncs of the cache (0: every answer); each answer is written as it arrives, so a
    killed run loses nothing, and an OS crash at most the last interval's answers."""

    def validate(self, prefix: str = "") -> None:
        """Numbers that make no sense stop the command before anything is read or sent."""
        from litgpt_ext.checks import above, at_least, within

        within(prefix + "temperature", self.temperature, 0.0, 2.0)
        within(prefix + "top_p", self.top_p, 0.0, 1.0, low_open=True)
        at_least(prefix + "max_tokens", self.max_tokens, 1)
        at_least(prefix + "logprobs", self.logprobs, 0)
        at_least(prefix + "concurrency", self.concurrency, 1)
        at_least(prefix + "rpm", self.rpm, 1)
        at_least(prefix + "tpm", self.tpm, 1)
        above(prefix + "timeout", self.timeout, 0)
        at_least(prefix + "max_attempts", self.max_attempts, 1)
        at_least(prefix + "retry_invalid", self.retry_invalid, 0)
        above(prefix + "price_in", self.price_in, -1e-12)
        above(prefix + "price_out", self.price_out, -1e-12)
        above(prefix + "max_cost_usd", self.max_cost_usd, 0)
        at_least(prefix + "batch_max_requests", self.batch_max_requests, 1)
        at_least(prefix + "batch_max_bytes", self.batch_max_bytes, 1)
        above(prefix + "poll_interval", self.poll_interval, 0)
        at_least(prefix + "fsync_interval", self.fsync_interval, 0)

    def params(self, n: int = 1, stop: list[str] | None = None) -> dict:
        """The sampling part of a request body (part of each request's cache key)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "n": n if n != 1 else None,
            "stop": stop,
            "seed": self.seed,
            "response_format": response_format(self.response_format),
            "logprobs": True if self.logprobs is not None else None,
            "top_logprobs": self.logprobs,
        }


def response_format(value: str | None) -> dict | None:
    if value is None:
        return None
    if value == "json_object":
        return {"type": "json_object"}
    schema = load_json(Path(value))
    if not isinstance(schema, dict):
        raise UserError("expected a JSON schema object", path=value, field="response_format")
    if "schema" not in schema:
        schema = {"name": Path(value).stem, "schema": schema, "strict": True}
    return {"type": "json_schema", "json_schema": schema}


def query_teacher(requests: list[ChatRequest], out: Path, args: TeacherArgs) -> ResponseCache | None:
    """Answer every request into the append-only cache ``out`` (or price them with ``dry_run``: returns None).

    Returns the cache, reloaded, so callers read results by request key; requests still unanswered (budget reached,
    batches still running) are simply absent from it.
    """
    out = Path(out)
    price = price_for(args.model, args.price_in, args.price_out)
    if args.dry_run:
        _dry_run(requests, args.model, args.encoding, price, args.mode, out)
        return None
    api_key = os.environ.get(args.api_key_env)
    if not api_key:
        raise UserError(f"set the API key in the environment variable {args.api_key_env}", field="api_key_env")
    cache = ResponseCache(out, fsync_interval=args.fsync_interval)
    for req in requests:  # more record ids for requests already cached: no request needed
        if req.key in cache.results:
            cache.add_aliases(req.key, req.ids)
    pending = [r for r in requests if not cache.done(r.key, args.retry_failed)]
    print(f"{len(requests):,} requests: {len(requests) - len(pending):,} already in {out}, {len(pending):,} to send")
    try:
        if args.mode == "batch":
            import openai

            from distill.teacher.batch_api import BatchRunner

            client = openai.OpenAI(api_key=api_key, base_url=args.base_url, max_retries=3, timeout=args.timeout)
            runner = BatchRunner(
                client, cache, out, args.batch_max_requests, args.batch_max_bytes, args.poll_interval, args.wait
            )
            result = runner.run(requests, args.retry_failed)
            if result["active_batches"]:
                print(f"{result['active_batches']} batch(es) still running; rerun the same command to collect them")
        elif pending:
            _live(pending, cache, api_key, price, args)
    finally:
        cache.close()
        quarantine = cache.write_quarantine()
    done = sum(1 for r in requests if cache.done(r.key))
    failed = sum(1 for r in requests if (cache.results.get(r.key) or {}).get("status") == "failed")
    print(
        f"done: {done - failed:,} answered, {failed:,} failed (see {quarantine}), "
        f"{len(requests) - done:,} not yet answered -> {out}"
    )
    return cache


def _live(pending, cache, api_key, price, args: TeacherArgs) -> None:

    from distill.teacher.live import LiveRunner, make_clients
    from litgpt_ext.api.ratelimit import RateLimiter
    from litgpt_ext.api.retry import RetryPolicy

    async def main():
        clients = make_clients(api_key, args.base_url, args.timeout, args.concurrency)
        runner = LiveRunner(
            clients,
            cache,
            RateLimiter(args.rpm, args.tpm),
            RetryPolicy(args.max_attempts, retry_invalid=args.retry_invalid),
            CostMeter(price),
            args.concurrency,
            args.timeout,
            args.max_cost_usd,
        )
        try:
            return await runner.run(pending)
        finally:
            for client in clients:
                await client.close()

    stats = asyncio.run(main())
    print(
        f"sent {stats.sent:,} requests ({stats.retries:,} retries, {stats.rate_limited:,} rate-limited); "
        f"{stats.prompt_tokens + stats.completion_tokens:,} tokens, ${stats.cost:.4f}"
    )
    if stats.stopped_for_budget:
        print(f"stopped before exceeding --max_cost_usd {args.max_cost_usd}: ${stats.cost:.4f} spent")
    if stats.interrupted:
        print("interrupted: everything answered so far is saved; rerun the same command to continue")
        raise SystemExit(130)


def _dry_run(requests: list[ChatRequest], model: str, encoding: str | None, price, mode: str, out: Path) -> None:
    enc = load_encoding(encoding, model, estimate_offline=True)
    cache = ResponseCache(out) if out.exists() else None
    todo = [r for r in requests if cache is None or not cache.done(r.key)]
    if enc is None:
        prompt_tokens = sum(approx_prompt_tokens(r.body["messages"]) for r in todo)
        counted = (
            f"ESTIMATE: {CHARS_PER_TOKEN} characters per token (no tiktoken encoding for {model!r} could be loaded "
            f"offline; pass --encoding FILE.tiktoken for exact counts)"
        )
    else:
        prompt_tokens = sum(chat_prompt_tokens(enc, r.body["messages"]) for r in todo)
        counted = f"tiktoken {enc.name}"
    output_tokens = sum(int(r.body.get("max_tokens") or 0) * int(r.body.get("n") or 1) for r in todo)
    meter = CostMeter(price, discount=0.5 if mode == "batch" else 1.0)
    summary = {
        "requests": len(todo),
        "already_cached": len(requests) - len(todo),
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_counted_with": counted,
        "max_output_tokens": output_tokens,
        "model": model,
        "mode": mode,
        "price_per_1M": {"input": price[0], "output": price[1]} if price else None,
        "estimated_cost_usd": round(meter.cost(prompt_tokens, output_tokens), 4) if price else None,
    }
    print(json.dumps(summary, indent=2))
    if price is None:
        print(f"no price known for {model!r}: pass --price_in and --price_out (USD per 1M tokens)")
