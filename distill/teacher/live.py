"""Live mode: many requests in flight through ``openai.AsyncOpenAI``, paced, retried, and cached as they finish.

Fast enough for a top-tier limit (30,000 requests/min at 0.3 s latency takes ~150 in flight; ``make bench-teacher``):
* the requests go over several connection pools (:func:`make_clients`, one ``AsyncOpenAI`` per
  :data:`CONNECTIONS_PER_POOL` connections, each connection kept alive): httpcore scans a whole pool for every
  request, so one pool of hundreds of connections costs time quadratic in the concurrency;
* the body, already the JSON the cache key was computed from, is posted as it is with the client's generic
  ``post(..., cast_to=httpx.Response)`` — the ``openai`` client's transport, headers, timeouts and error classes
  (``APIStatusError`` and its subclasses, ``APIConnectionError``, ``APITimeoutError``) — without the per-field
  request transform and the pydantic response model, and the answer is read with ``json.loads``;
* cache lines are written at once and fsync'd in groups (``--fsync_interval``, see ``ResponseCache``).

Retry policy (the client's own retries are off so there is one policy, visible here):
* 408, 409, 429, 5xx, timeouts and dropped connections: retry with exponential backoff + full jitter, honouring
  ``retry-after-ms`` / ``retry-after``; a 429 also pauses every worker (see :class:`RateLimiter`) — unless its
  rate-limit headers (OpenAI sends them on every response) show requests and tokens left: such a 429 is a
  transient refusal, and only that request waits;
* 400, 404, 422: the request fails with the server's message (cached as a failure, listed in quarantine);
* 401, 403: the run stops at once — every other request would fail the same way;
* an answer cut off (``length``), filtered (``content_filter``) or not valid JSON under ``response_format`` is
  re-asked up to ``retry_invalid`` times, then cached as a failure with that reason.
"""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import dataclass

import httpx
import openai
from tqdm import tqdm

from distill.teacher.cache import ResponseCache
from distill.teacher.cost import CostMeter, approx_prompt_tokens
from distill.teacher.requests import ChatRequest
from distill.teacher.results import (
    answer_problem,
    check_logprobs,
    completion_choices,
    failure_row,
    result_row,
    wants_logprobs,
)
from litgpt_ext.api.ratelimit import RateLimiter, retry_after_seconds
from litgpt_ext.api.retry import RETRY_STATUS, RetryPolicy, error_message
from litgpt_ext.errors import UserError


class FatalAPIError(UserError):
    """The server refused our credentials or permissions, or cannot be reached at all: stop everything."""


CONNECTIONS_PER_POOL = 32
"""Connections of one pool (see the module docstring)."""


def make_clients(api_key: str, base_url: str | None, timeout: float, concurrency: int) -> list[openai.AsyncOpenAI]:
    """``ceil(concurrency / CONNECTIONS_PER_POOL)`` clients, each with its own pool of kept-alive connections."""
    pools = max(1, -(-concurrency // CONNECTIONS_PER_POOL))
    per_pool = -(-concurrency // pools)
    return [
        openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            http_client=openai.DefaultAsyncHttpxClient(
                limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
            ),
        )
        for _ in range(pools)
    ]


UNREACHABLE_AFTER = 6
"""Consecutive connection failures, with no response ever received, after which the endpoint counts as unreachable:
the run stops with one line and caches nothing, so a rerun sends every request."""


@dataclass
class RunStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    retries: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    stopped_for_budget: bool = False
    interrupted: bool = False


class LiveRunner:
    def __init__(
        self,
        client: openai.AsyncOpenAI | list[openai.AsyncOpenAI],
        cache: ResponseCache,
        limiter: RateLimiter,
        policy: RetryPolicy,
        meter: CostMeter,
        concurrency: int = 16,
        timeout: float = 120.0,
        max_cost_usd: float | None = None,
    ):
        self.clients = list(client) if isinstance(client, list | tuple) else [client]
        self.client = self.clients[0]
        self.cache, self.limiter, self.policy, self.meter = cache, limiter, policy, meter
        self.concurrency, self.timeout, self.max_cost_usd = concurrency, timeout, max_cost_usd
        self.stats = RunStats()
        self._reserved = 0.0
        self._stop = asyncio.Event()
        self._reached = False  # any HTTP response at all (an error status counts) proves the endpoint is there
        self._refused_in_a_row = 0

    # -- budget --------------------------------------------------------------------------------------------------
    def _estimate(self, req: ChatRequest) -> tuple[int, float]:
        tokens = approx_prompt_tokens(req.body["messages"])
        out = int(req.body.get("max_tokens") or 1024) * int(req.body.get("n") or 1)
        return tokens + out, self.meter.cost(tokens, out)

    def _reserve(self, estimate: float) -> bool:
        if self.max_cost_usd is None:
            return True
        if self.stats.cost + self._reserved + estimate > self.max_cost_usd:
            self.stats.stopped_for_budget = True
            self._stop.set()
            return False
        self._reserved += estimate
        return True

    # -- one request ----------------------------------------------------------------------------------------------
    async def _send(self, req: ChatRequest, tokens: int, client: openai.AsyncOpenAI | None = None) -> dict:
        client = client or self.client
        options = {"timeout": self.timeout}
        attempt, invalid = 0, 0
        while True:
            attempt += 1
            await self.limiter.acquire(tokens)
            self.stats.sent += 1
            try:
                raw = await client.post("/chat/completions", body=req.body, cast_to=httpx.Response, options=options)
                self._reached, self._refused_in_a_row = True, 0
                self.limiter.observe(raw.headers)
                completion = json.loads(raw.content)
                if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
                    raise ValueError("the body has no choices")
                check_logprobs(completion)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                raise FatalAPIError(
                    f"the API refused the request ({err.status_code}): {error_message(err)}; check the "
                    f"API key variable and its permissions",
                    field="api_key",
                ) from None
            except openai.APIStatusError as err:
                if err.status_code in RETRY_STATUS or err.status_code >= 500:
                    wait = retry_after_seconds(err.response.headers)
                    if err.status_code == 429:
                        self.stats.rate_limited += 1
                        if not budget_left(err.response.headers):
                            self.limiter.pause(wait if wait is not None else self.policy.backoff(attempt, None))
                    if attempt >= self.policy.max_attempts:
                        return failure_row(req, f"http_{err.status_code}", error_message(err), attempt, "live")
                    self.stats.retries += 1
                    await asyncio.sleep(self.policy.backoff(attempt, wait))
                    continue
                if err.status_code == 400 and refuses_logprobs(req.body, error_message(err)):
                    raise FatalAPIError(
                        f"the endpoint refused the log-probs request (400): {error_message(err)}", field="logprobs"
                    ) from None
                return failure_row(req, f"http_{err.status_code}", error_message(err), attempt, "live")
            except (openai.APITimeoutError, openai.APIConnectionError) as err:
                if not isinstance(err, openai.APITimeoutError) and not self._reached:
                    self._refused_in_a_row += 1
                    if self._refused_in_a_row >= UNREACHABLE_AFTER:
                        raise FatalAPIError(
                            f"cannot reach {self.client.base_url} ({type(err).__name__}: {err}); nothing was cached, "
                            "rerun when the endpoint is up",
                            field="base_url",
                        ) from None
                if attempt >= self.policy.max_attempts:
                    return failure_row(req, type(err).__name__, str(err), attempt, "live")
                self.stats.retries += 1
                await asyncio.sleep(self.policy.backoff(attempt, None))
                continue
            except (json.JSONDecodeError, ValueError, TypeError, openai.APIResponseValidationError) as err:
                # a 200 whose body is cut short or not a completion (a proxy, a load balancer): like a 5xx
                self._reached = True
                if attempt >= self.policy.max_attempts:
                    return failure_row(req, "invalid_response_body", f"{type(err).__name__}: {err}", attempt, "live")
                self.stats.retries += 1
                await asyncio.sleep(self.policy.backoff(attempt, None))
                continue
            self._account(completion)
            wants_json, logprobs = bool(req.body.get("response_format")), wants_logprobs(req.body)
            problem = answer_problem(completion_choices(completion, logprobs), wants_json, logprobs)
            if problem and invalid < self.policy.retry_invalid:
                invalid += 1
                self.stats.retries += 1
                continue
            return result_row(req, completion, attempt, "live")

    def _account(self, completion: dict) -> None:
        usage = completion.get("usage") or {}
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self.stats.prompt_tokens += p
        self.stats.completion_tokens += c
        self.stats.cost += self.meter.cost(p, c)

    # -- the run --------------------------------------------------------------------------------------------------
    async def run(self, pending: list[ChatRequest]) -> RunStats:
        queue: asyncio.Queue[ChatRequest] = asyncio.Queue()
        for req in pending:
            queue.put_nowait(req)
        bar = tqdm(total=len(pending), unit="req", desc="teacher", dynamic_ncols=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._interrupt)

        async def worker(client: openai.AsyncOpenAI) -> None:
            while not self._stop.is_set():
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                tokens, estimate = self._estimate(req)
                if not self._reserve(estimate):
                    return
                try:
                    row = await self._send(req, tokens, client)
                finally:
                    if self.max_cost_usd is not None:
                        self._reserved -= estimate
                self.cache.add_result(row)  # written before the next request of this worker (fsync'd in groups)
                self.stats.ok += row["status"] == "ok"
                self.stats.failed += row["status"] == "failed"
                bar.update(1)
                bar.set_postfix(
                    tokens=f"{self.stats.prompt_tokens + self.stats.completion_tokens:,}",
                    cost=f"${self.stats.cost:.4f}",
                    r429=self.stats.rate_limited,
                    refresh=False,
                )

        clients = self.clients
        workers = [asyncio.create_task(worker(clients[i % len(clients)])) for i in range(max(1, self.concurrency))]
        stopper = asyncio.create_task(self._stop.wait())
        waiting = {*workers, stopper}
        try:
            while workers and not self.stats.interrupted:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopper:  # a budget stop lets in-flight requests finish; Ctrl-C does not
                        workers.remove(task)
                        task.result()  # re-raise a fatal error
        finally:
            for task in [*workers, stopper]:
                task.cancel()
            await asyncio.gather(*workers, stopper, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            bar.close()
        return self.stats

    def _interrupt(self) -> None:
        self.stats.interrupted = True
        self._stop.set()


def budget_left(headers) -> bool:
    """Whether a 429's ``x-ratelimit-remaining-*`` headers show requests (and tokens, where given) left: then the
    limit is not what refused it, and pausing every sender would only waste the budget."""
    left = [headers.get(f"x-ratelimit-remaining-{kind}") for kind in ("requests", "tokens")]
    given = [v.strip() for v in left if v is not None]
    return bool(given) and all(v.isdigit() and int(v) > 0 for v in given)


def refuses_logprobs(body: dict, message: str) -> bool:
    """A 400 about the log-probs settings (``top_logprobs`` above the endpoint's limit, log-probs not supported):
    every request carries the same settings, so it stops the run once instead of failing each request."""
    return wants_logprobs(body) and "logprob" in message.lower()
