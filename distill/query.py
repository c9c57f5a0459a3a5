"""``litgpt-ext distill_query``: ask a teacher model for every record, crash-safe and within rate limits."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from distill.records import read_records
from distill.teacher.requests import ChatRequest, build_requests, read_message_requests
from distill.teacher.run import TeacherArgs, query_teacher
from litgpt_ext.checks import at_least
from litgpt_ext.errors import EXIT_INCOMPLETE, UserError
from litgpt_ext.templates import template_or_text


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
    logprobs: int | None = None,
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
    fsync_interval: float = 0.2,
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
        logprobs: K: also ask for every answer token's log-prob and its K most likely alternatives (OpenAI allows
            up to 20; vLLM and SGLang servers their ``--max-logprobs``), kept in the cache for
            ``distill_convert --logprobs true``. An answer without them is quarantined as ``no_logprobs``.
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
        fsync_interval: Seconds between grouped fsyncs of the cache (0: every answer). Each answer is written to
            the file as it arrives, so a killed run loses nothing; an OS crash or power loss can lose at most the
            answers of the last interval, which a rerun asks for again.
    """
    flags = locals()
    teacher = TeacherArgs(**{f.name: flags[f.name] for f in dataclasses.fields(TeacherArgs)})
    teacher.validate()
    at_least("n", n, 1)
    requests = _requests(records, prompt, messages, system_prompt, model, teacher.params(n, stop))
    cache = query_teacher(requests, Path(out), teacher)
    unfinished = cache.unfinished([r.key for r in requests]) if cache is not None else 0
    if unfinished:
        print(
            f"{unfinished:,} request(s) failed or unanswered: rerun to continue "
            f"(--retry_failed true re-sends failures); exit code {EXIT_INCOMPLETE}"
        )
        raise SystemExit(EXIT_INCOMPLETE)
