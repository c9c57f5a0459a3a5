"""Scoring token sequences on an OpenAI-compatible server: the teacher's top-k log-probs at every position of a
prompt, from the legacy ``/v1/completions`` with ``echo`` + ``logprobs`` and vLLM's ``return_tokens_as_token_ids``
(the prompt is sent as token ids, the alternatives come back as ``token_id:N``), so nothing is re-tokenized on
either side. This is how ``finetune_kd --teacher_url`` scores the student's samples on a teacher too large to hold
beside it (ms-swift's and TRL's server-distillation shape).

Requests go through the teacher stage's rate limiter and retry policy (:mod:`litgpt_ext.api`): 408/409/429/5xx,
timeouts, dropped connections and unreadable 200s are retried with backoff; other 4xx stop with the server's
message. A server that stays unreachable raises :class:`TeacherUnavailable`, which the training loop turns into a
resumable checkpoint and one line.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass

from litgpt_ext.api.ratelimit import RateLimiter, retry_after_seconds
from litgpt_ext.api.retry import RETRY_STATUS, RetryPolicy, error_message
from litgpt_ext.errors import ResumableStop, UserError


class TeacherUnavailable(ResumableStop):
    """The teacher server stopped answering: the run can be resumed once it is back."""


@dataclass
class ServerArgs:
    """How to reach a teacher server (``--teacher_url``) and how hard to push it."""

    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the server's API key (a placeholder is sent when unset; never written)."""
    top_k: int = 20
    """Alternatives per position (vLLM's ``--max-logprobs`` bounds it, 20 by default)."""
    concurrency: int = 16
    """Sequences scored at once."""
    rpm: int | None = None
    """Requests-per-minute budget."""
    timeout: float = 60.0
    """Seconds before a request is abandoned and retried."""
    max_attempts: int = 6
    """Attempts per sequence for retryable errors before the run stops (resumable)."""


@dataclass
class Scores:
    """One sequence's scores at positions 1..T-1 (what the teacher predicts after each prefix)."""

    ids: list[list[int]]
    logps: list[list[float]]
    target: list[float]


def _token_id(name: str) -> int:
    if not name.startswith("token_id:"):
        raise ValueError(f"alternative {name!r} is not a token id (the server must honour return_tokens_as_token_ids)")
    return int(name[len("token_id:") :])


def parse_scores(completion: dict, length: int) -> Scores:
    """The scores of an echoed prompt of ``length`` tokens from a completions body; ``ValueError`` if unreadable."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ValueError("the body has no choices")
    logprobs = choices[0].get("logprobs") or {}
    top, targets = logprobs.get("top_logprobs"), logprobs.get("token_logprobs")
    if not isinstance(top, list) or not isinstance(targets, list) or len(top) < length or len(targets) < length:
        raise ValueError(f"expected log-probs for the {length} prompt tokens (echo)")
    ids, logps = [], []
    for entry in top[1:length]:
        if not isinstance(entry, dict) or not entry:
            raise ValueError("a position has no top log-probs")
        ranked = sorted(((_token_id(k), float(v)) for k, v in entry.items()), key=lambda kv: -kv[1])
        ids.append([i for i, _ in ranked])
        logps.append([v for _, v in ranked])
    return Scores(ids, logps, [float(t) for t in targets[1:length]])


class PromptScorer:
    """Scores batches of token sequences; requests run on a private event loop thread, concurrently."""

    def __init__(self, url: str, model: str, args: ServerArgs) -> None:
        import openai

        self.url, self.model, self.args = url, model, args
        self.policy = RetryPolicy(args.max_attempts, base_delay=0.25, max_delay=10.0)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="teacher-scores").start()
        api_key = os.environ.get(args.api_key_env) or "sk-no-key"

        async def make():
            self.limiter = RateLimiter(args.rpm)
            self.gate = asyncio.Semaphore(args.concurrency)
            return openai.AsyncOpenAI(api_key=api_key, base_url=url, max_retries=0, timeout=args.timeout)

        self.client = asyncio.run_coroutine_threadsafe(make(), self.loop).result()

    def score(self, sequences: list[list[int]]) -> list[Scores]:
        async def everything():
            return await asyncio.gather(*(self._one(s) for s in sequences))

        return asyncio.run_coroutine_threadsafe(everything(), self.loop).result()

    async def _one(self, ids: list[int]) -> Scores:
        import openai

        attempt = 0
        async with self.gate:
            while True:
                attempt += 1
                await self.limiter.acquire(len(ids))
                try:
                    raw = await self.client.completions.with_raw_response.create(
                        model=self.model,
                        prompt=ids,
                        echo=True,
                        logprobs=self.args.top_k,
                        max_tokens=1,
                        temperature=0.0,
                        extra_body={"return_tokens_as_token_ids": True},
                    )
                    self.limiter.observe(raw.headers)
                    return parse_scores(raw.parse().model_dump(), len(ids))
                except openai.APIStatusError as err:
                    if not (err.status_code in RETRY_STATUS or err.status_code >= 500):
                        raise UserError(
                            f"the teacher server refused the scoring request ({err.status_code}): {error_message(err)}",
                            field="teacher_url",
                        ) from None
                    wait, reason = retry_after_seconds(err.response.headers), f"HTTP {err.status_code}"
                    if err.status_code == 429:
                        self.limiter.pause(wait if wait is not None else self.policy.backoff(attempt, None))
                except (openai.APITimeoutError, openai.APIConnectionError) as err:
                    wait, reason = None, type(err).__name__
                except (ValueError, TypeError, openai.APIResponseValidationError) as err:
                    wait, reason = None, f"unreadable answer ({err})"
                if attempt >= self.policy.max_attempts:
                    raise TeacherUnavailable(
                        f"the teacher server at {self.url} stopped answering ({reason}, {attempt} attempts)",
                        field="teacher_url",
                    )
                await asyncio.sleep(self.policy.backoff(attempt, wait))

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.client.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
