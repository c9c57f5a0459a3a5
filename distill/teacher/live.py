"""Live mode: many requests in flight through ``openai.AsyncOpenAI``, paced, retried, and cached as they finish.

Retry policy (the client's own retries are off so there is one policy, visible here):
* 408, 409, 429, 5xx, timeouts and dropped connections: retry with exponential backoff + full jitter, honouring
  ``retry-after-ms`` / ``retry-after``; a 429 also pauses every worker (see :class:`RateLimiter`);
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
        client: openai.AsyncOpenAI,
        cache: ResponseCache,
        limiter: RateLimiter,
        policy: RetryPolicy,
        meter: CostMeter,
        concurrency: int = 16,
        timeout: float = 120.0,
        max_cost_usd: float | None = None,
    ):
        self.client, self.cache, self.limiter, self.policy, self.meter = client, cache, limiter, policy, meter
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
    async def _send(self, req: ChatRequest, tokens: int) -> dict:
        attempt, invalid = 0, 0
        while True:
            attempt += 1
            await self.limiter.acquire(tokens)
            self.stats.sent += 1
            try:
                raw = await self.client.chat.completions.with_raw_response.create(**req.body, timeout=self.timeout)
                self._reached, self._refused_in_a_row = True, 0
                self.limiter.observe(raw.headers)
                completion = raw.parse().model_dump()
                if not isinstance(completion.get("choices"), list):
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

        async def worker() -> None:
            while not self._stop.is_set():
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                tokens, estimate = self._estimate(req)
                if not self._reserve(estimate):
                    return
                try:
                    row = await self._send(req, tokens)
                finally:
                    if self.max_cost_usd is not None:
                        self._reserved -= estimate
                self.cache.add_result(row)  # fsync'd before the next request of this worker
                self.stats.ok += row["status"] == "ok"
                self.stats.failed += row["status"] == "failed"
                bar.update(1)
                bar.set_postfix(
                    tokens=f"{self.stats.prompt_tokens + self.stats.completion_tokens:,}",
                    cost=f"${self.stats.cost:.4f}",
                    r429=self.stats.rate_limited,
                    refresh=False,
                )

        workers = [asyncio.create_task(worker()) for _ in range(max(1, self.concurrency))]
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


def refuses_logprobs(body: dict, message: str) -> bool:
    """A 400 about the log-probs settings (``top_logprobs`` above the endpoint's limit, log-probs not supported):
    every request carries the same settings, so it stops the run once instead of failing each request."""
    return wants_logprobs(body) and "logprob" in message.lower()
