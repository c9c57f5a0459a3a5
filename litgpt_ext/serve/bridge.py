"""One engine loop behind many HTTP requests: the engine runs in a thread of its own on a
:class:`~litgpt_ext.generate.feed.QueueFeed`, and every request's job joins the running batch at the engine's next
step (continuous batching across requests and clients). Tokens and finished jobs come back to the event loop
through ``call_soon_threadsafe``; a request whose client went away cancels its job, which frees its rows.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from litgpt_ext.generate.feed import QueueFeed
from litgpt_ext.generate.jobs import Job


@dataclass
class Counters:
    """What ``/metrics`` reports."""

    requests: int = 0
    requests_failed: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    running: int = 0
    started: float = field(default_factory=time.time)


class Ticket:
    """A submitted job's way back to its request: token events as they come, and the job when it is done."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop, stream: bool) -> None:
        self.job, self.loop = job, loop
        self.done: asyncio.Future = loop.create_future()
        self.events: asyncio.Queue | None = asyncio.Queue() if stream else None
        if stream:
            job.on_token = self._token

    def _token(self, sample: int, token: int, logprobs) -> None:  # the engine's thread
        self.loop.call_soon_threadsafe(self.events.put_nowait, (sample, token, logprobs))

    def finish(self, job: Job) -> None:  # the engine's thread
        self.loop.call_soon_threadsafe(self._resolve, job)

    def _resolve(self, job: Job) -> None:
        if not self.done.done():
            self.done.set_result(job)
        if self.events is not None:
            self.events.put_nowait(None)  # the end of the token events

    def cancel(self) -> None:
        self.job.cancelled = True


class EngineThread:
    """The engine's loop in a thread; :meth:`submit` from the event loop, :meth:`close` to finish what is queued
    and stop."""

    def __init__(self, engine) -> None:
        self.engine, self.feed = engine, QueueFeed()
        self.tickets: dict[int, Ticket] = {}
        self.counters = Counters()
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.engine.run(self.feed, self._emit)
        except BaseException as err:  # the engine died: every waiting request learns it
            self.error = err
            with self.lock:
                tickets, self.tickets = list(self.tickets.values()), {}
            for ticket in tickets:
                ticket.loop.call_soon_threadsafe(self._fail, ticket, err)

    @staticmethod
    def _fail(ticket: Ticket, err: BaseException) -> None:
        if not ticket.done.done():
            ticket.done.set_exception(RuntimeError(f"the engine stopped: {type(err).__name__}: {err}"))
        if ticket.events is not None:
            ticket.events.put_nowait(None)

    def _emit(self, job: Job) -> None:
        with self.lock:
            ticket = self.tickets.pop(id(job), None)
            self.counters.generation_tokens += sum(job.generated_tokens)
            self.counters.running -= 1
        if ticket is not None:
            ticket.finish(job)

    def submit(self, job: Job, stream: bool) -> Ticket:
        if self.error is not None or not self.thread.is_alive():
            raise RuntimeError("the engine is not running")
        ticket = Ticket(job, asyncio.get_running_loop(), stream)
        with self.lock:
            self.tickets[id(job)] = ticket
            self.counters.requests += 1
            self.counters.running += 1
            self.counters.prompt_tokens += len(job.prompt_ids)
        self.feed.put(job)
        return ticket

    def forget(self, ticket: Ticket) -> None:
        """A cancelled job: it will not be emitted, so its ticket and running count go here."""
        with self.lock:
            if self.tickets.pop(id(ticket.job), None) is not None:
                self.counters.running -= 1

    def queued(self) -> int:
        return len(self.feed)

    def close(self, timeout: float | None = None) -> None:
        """No more jobs; the engine finishes the ones it holds (cancel them first to stop sooner) and the thread
        ends."""
        self.feed.close()
        self.thread.join(timeout)
