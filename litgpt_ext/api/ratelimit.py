"""Client-side pacing under request and token budgets, corrected live by the server's rate-limit headers.

* Requests are spaced evenly (``60 / rpm`` seconds apart) rather than burst: a server that counts a sliding minute
  never sees more than ``rpm`` in any window, so no 429s are provoked and the limit is used fully. A sender that
  wakes late (a busy event loop at thousands of requests a minute) may take the slots it missed within the last
  :data:`CATCH_UP_S` seconds, so lateness does not cost throughput; any minute then holds at most
  ``rpm * (1 + CATCH_UP_S / 60)`` requests (0.08 % over).
* Tokens come from a bucket refilled at ``tpm / 60`` per second (capacity one minute).
* ``x-ratelimit-remaining-*`` of 0 pauses new sends until ``x-ratelimit-reset-*``; a 429 pauses everyone for its
  ``retry-after`` — one pause for all workers instead of a herd of retries.
"""

from __future__ import annotations

import asyncio
import re
import time

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


def parse_duration(value: str | None) -> float | None:
    """OpenAI reset headers: ``"1s"``, ``"6m0s"``, ``"350ms"``, ``"1.5s"``; bare numbers are seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    m = _DURATION.match(value)
    if not m or not any(m.groups()):
        return None
    h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000


def retry_after_seconds(headers) -> float | None:
    """``retry-after-ms`` (milliseconds) wins over ``retry-after`` (seconds or an HTTP date, ignored)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    s = headers.get("retry-after")
    try:
        return float(s) if s else None
    except ValueError:
        return None


CATCH_UP_S = 0.05
"""How far back missed request slots may still be used (see the module docstring)."""


class RateLimiter:
    def __init__(self, rpm: int | None = None, tpm: int | None = None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self.tpm = tpm
        self._next_slot = 0.0
        self._tokens = float(tpm or 0)
        self._refilled = time.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def acquire(self, tokens: int = 0) -> None:
        async with self._lock:  # one sender at a time through the gate keeps the spacing exact
            while (wait := self._paused_until - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if self.interval:
                now = time.monotonic()
                slot = max(now - CATCH_UP_S, self._next_slot)
                self._next_slot = slot + self.interval
                if slot > now:
                    await asyncio.sleep(slot - now)
            if self.tpm:
                need = min(float(tokens), float(self.tpm))
                while True:
                    now = time.monotonic()
                    self._tokens = min(self.tpm, self._tokens + (now - self._refilled) * self.tpm / 60)
                    self._refilled = now
                    if self._tokens >= need:
                        self._tokens -= need
                        break
                    await asyncio.sleep((need - self._tokens) * 60 / self.tpm)

    def observe(self, headers) -> None:
        """Apply the server's view: out of requests or tokens -> pause until its reset."""
        for kind in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            if remaining is not None and remaining.strip().isdigit() and int(remaining) == 0:
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    self.pause(reset)
