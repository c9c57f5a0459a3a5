"""``litgpt-ext distill_query``: ask a teacher model for every record, crash-safe and within rate limits."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Literal

from distill.prompts import template_or_text
from distill.records import read_records
from distill.teacher.cache import ResponseCache
from distill.teacher.cost import CostMeter, chat_prompt_tokens, load_encoding, price_for
from distill.teacher.requests import ChatRequest, build_requests, read_message_requests
from litgpt_ext.data.records import load_json
from litgpt_ext.errors import UserError


def _response_format(value: str | None) -> dict | None:
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


def _requests(records, prompt, messages, system_prompt, model, params) -> list[ChatRequest]:
    if messages is not None:
        if records is not None or prompt is not None:
            raise UserError("use either --messages or --records with --prompt", field="messages")
        return read_message_requests(Path(messages), model, params)
    if records is None or prompt is None:
        raise UserError("pass --records R.jsonl and --prompt prompts/TASK.md (or --messages M.jsonl)", field="records")
    template = template_or_text(prompt, "prompt")
    system = None
    if system_prompt is not None:
        sys_template = template_or_text(system_prompt, "system_prompt")
        if sys_template.fields:
            raise UserError("the system prompt cannot have placeholders", field="system_prompt")
        system = sys_template.text
    return build_requests(read_records(Path(records)), Path(records), template, system, model, params)


def distill_query(
    records: Path | None = None,
    prompt: Path | None = None,
    out: Path = Path("responses.jsonl"),
    model: str = "gpt-4o-mini",
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    system_prompt: str | None = None,
    messages: Path | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = 512,
    n: int = 1,
    stop: list[str] | None = None,
    seed: int | None = None,
    response_format: str | None = None,
    mode: Literal["live", "batch"] = "live",
    concurrency: int = 16,
    rpm: int | None = None,
    tpm: int | None = None,
    timeout: float = 120.0,
    max_attempts: int = 8,
    retry_invalid: int = 1,
    retry_failed: bool = False,
    dry_run: bool = False,
    encoding: str | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
    max_cost_usd: float | None = None,
    batch_max_requests: int = 50_000,
    batch_max_bytes: int = 200_000_000,
    poll_interval: float = 30.0,
    wait: bool = True,
) -> None:
    """Query a teacher LLM (any OpenAI-compatible endpoint) for every record; the output file is the cache.

    A rerun sends only what is missing; a crash (even kill -9) loses nothing that was answered.

    Args:
        records: JSONL records, each with an ``id`` (else its line number is the id).
        prompt: Task template (Markdown with ``{field}`` placeholders, optional ``system:`` front matter), or text.
        out: Responses JSONL: append-only cache, one line per finished request (fsync'd).
        model: Teacher model name.
        base_url: OpenAI-compatible endpoint (default: the ``openai`` client's, or OPENAI_BASE_URL).
        api_key_env: Environment variable holding the API key (never written anywhere).
        system_prompt: System prompt text or file (overrides the template's front matter).
        messages: Instead of records + prompt: JSONL of ``{"id", "messages": [...]}`` ready chat messages.
        temperature: Sampling temperature.
        top_p: Nucleus sampling.
        max_tokens: Maximum output tokens per answer.
        n: Answers per request.
        stop: Stop sequences.
        seed: Sampling seed (where the endpoint supports it).
        response_format: ``json_object`` or a JSON-schema file; answers that are not valid JSON count as failures.
        mode: ``live`` (async requests) or ``batch`` (the Batch API: upload, create, poll, merge).
        concurrency: Requests in flight at once (live).
        rpm: Requests-per-minute budget (live); requests are spaced evenly.
        tpm: Tokens-per-minute budget (live).
        timeout: Seconds before a request is abandoned and retried.
        max_attempts: Attempts per request for retryable errors (408/409/429/5xx, timeouts, dropped connections).
        retry_invalid: Extra attempts for answers cut off (length), filtered, or not valid JSON.
        retry_failed: Re-send requests cached as failed by an earlier run.
        dry_run: Count requests, prompt tokens, max output tokens and estimated cost; send nothing.
        encoding: tiktoken encoding name or a local ``.tiktoken`` file (offline) for --dry_run counts.
        price_in: USD per 1M input tokens (overrides the built-in table).
        price_out: USD per 1M output tokens (overrides the built-in table).
        max_cost_usd: Stop cleanly before this budget would be exceeded (counts the usage actually returned).
        batch_max_requests: Requests per Batch API input file (OpenAI's limit: 50,000).
        batch_max_bytes: Bytes per Batch API input file (OpenAI's limit: 200 MB).
        poll_interval: Seconds between Batch API polls.
        wait: In batch mode, wait until every batch is finished (false: submit/poll once and exit; rerun later).
    """
    params = {
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        "n": n if n != 1 else None,
        "stop": stop,
        "seed": seed,
        "response_format": _response_format(response_format),
    }
    requests = _requests(records, prompt, messages, system_prompt, model, params)
    price = price_for(model, price_in, price_out)
    if dry_run:
        _dry_run(requests, model, encoding, price, mode, Path(out))
        return

    api_key = os.environ.get(api_key_env)
    if not api_key:
        raise UserError(f"set the API key in the environment variable {api_key_env}", field="api_key_env")
    cache = ResponseCache(Path(out))
    for req in requests:  # more record ids for requests already cached: no request needed
        if req.key in cache.results:
            cache.add_aliases(req.key, req.ids)
    pending = [r for r in requests if not cache.done(r.key, retry_failed)]
    print(f"{len(requests):,} requests: {len(requests) - len(pending):,} already in {out}, {len(pending):,} to send")
    try:
        if mode == "batch":
            import openai

            from distill.teacher.batch_api import BatchRunner

            client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=3, timeout=timeout)
            runner = BatchRunner(client, cache, Path(out), batch_max_requests, batch_max_bytes, poll_interval, wait)
            result = runner.run(requests, retry_failed)
            if result["active_batches"]:
                print(f"{result['active_batches']} batch(es) still running; rerun the same command to collect them")
        elif pending:
            _live(
                pending,
                cache,
                api_key,
                base_url,
                price,
                concurrency,
                rpm,
                tpm,
                timeout,
                max_attempts,
                retry_invalid,
                max_cost_usd,
            )
    finally:
        cache.close()
        quarantine = cache.write_quarantine()
    done = sum(1 for r in requests if cache.done(r.key))
    failed = sum(1 for r in requests if (cache.results.get(r.key) or {}).get("status") == "failed")
    print(
        f"done: {done - failed:,} answered, {failed:,} failed (see {quarantine}), "
        f"{len(requests) - done:,} not yet answered -> {out}"
    )


def _live(
    pending, cache, api_key, base_url, price, concurrency, rpm, tpm, timeout, max_attempts, retry_invalid, max_cost_usd
) -> None:
    import openai

    from distill.teacher.live import LiveRunner, RetryPolicy
    from distill.teacher.ratelimit import RateLimiter

    async def main():
        client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)
        runner = LiveRunner(
            client,
            cache,
            RateLimiter(rpm, tpm),
            RetryPolicy(max_attempts, retry_invalid=retry_invalid),
            CostMeter(price),
            concurrency,
            timeout,
            max_cost_usd,
        )
        try:
            return await runner.run(pending)
        finally:
            await client.close()

    stats = asyncio.run(main())
    print(
        f"sent {stats.sent:,} requests ({stats.retries:,} retries, {stats.rate_limited:,} rate-limited); "
        f"{stats.prompt_tokens + stats.completion_tokens:,} tokens, ${stats.cost:.4f}"
    )
    if stats.stopped_for_budget:
        print(f"stopped before exceeding --max_cost_usd {max_cost_usd}: ${stats.cost:.4f} spent")
    if stats.interrupted:
        print("interrupted: everything answered so far is saved; rerun the same command to continue")
        raise SystemExit(130)


def _dry_run(requests: list[ChatRequest], model: str, encoding: str | None, price, mode: str, out: Path) -> None:
    enc = load_encoding(encoding, model)
    cache = ResponseCache(out) if out.exists() else None
    todo = [r for r in requests if cache is None or not cache.done(r.key)]
    prompt_tokens = sum(chat_prompt_tokens(enc, r.body["messages"]) for r in todo)
    output_tokens = sum(int(r.body.get("max_tokens") or 0) * int(r.body.get("n") or 1) for r in todo)
    meter = CostMeter(price, discount=0.5 if mode == "batch" else 1.0)
    summary = {
        "requests": len(todo),
        "already_cached": len(requests) - len(todo),
        "prompt_tokens": prompt_tokens,
        "max_output_tokens": output_tokens,
        "model": model,
        "mode": mode,
        "price_per_1M": {"input": price[0], "output": price[1]} if price else None,
        "estimated_cost_usd": round(meter.cost(prompt_tokens, output_tokens), 4) if price else None,
    }
    print(json.dumps(summary, indent=2))
    if price is None:
        print(f"no price known for {model!r}: pass --price_in and --price_out (USD per 1M tokens)")
