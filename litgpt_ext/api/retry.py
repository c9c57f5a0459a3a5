"""One retry policy for every OpenAI-compatible call: which statuses are retried, and how long to wait."""

from __future__ import annotations

import random
from dataclasses import dataclass

RETRY_STATUS = {408, 409, 429}
"""Retried besides every 5xx; other 4xx are the request's own fault."""


@dataclass
class RetryPolicy:
    max_attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 60.0
    retry_invalid: int = 1

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay) + random.uniform(0, 0.1)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


def error_message(err) -> str:
    """The server's own message of an ``openai.APIStatusError`` (its ``error.message``), else the client's."""
    body = err.body if isinstance(err.body, dict) else {}
    inner = body.get("error") if isinstance(body.get("error"), dict) else body
    return str(inner.get("message") or err.message)
