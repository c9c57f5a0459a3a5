"""Where the engine's jobs come from: a file read as it goes (``generate_batch``, :class:`IteratorFeed`) or requests
arriving from other threads (a server, :class:`QueueFeed`). The engine asks a feed for new jobs between steps: never
waiting while rows run, and waiting for the next job when none does."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from litgpt_ext.generate.jobs import Job


class Feed:
    def take(self, n: int, wait: bool) -> list[Job] | None:
        """Up to ``n`` new jobs; with ``wait``, block until there is at least one. None once the feed is closed and
        empty (no job will come again)."""
        raise NotImplementedError


class IteratorFeed(Feed):
    """Jobs pulled from an iterable as the engine makes room for them (memory does not grow with the input)."""

    def __init__(self, jobs: Iterable[Job]) -> None:
        self.source = iter(jobs)
        self.done = False

    def take(self, n: int, wait: bool) -> list[Job] | None:
        taken = []
        while not self.done and len(taken) < n:
            job = next(self.source, None)
            if job is None:
                self.done = True
            else:
                taken.append(job)
        return taken if taken or not self.done else None


class QueueFeed(Feed):
    """Jobs put from other threads; :meth:`close` ends the feed once what was put has been taken."""

    def __init__(self) -> None:
        self.jobs: deque[Job] = deque()
        self.ready = threading.Condition()
        self.closed = False

    def put(self, job: Job) -> None:
        with self.ready:
            if self.closed:
                raise RuntimeError("the feed is closed")
            self.jobs.append(job)
            self.ready.notify()

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()

    def __len__(self) -> int:
        return len(self.jobs)

    def take(self, n: int, wait: bool) -> list[Job] | None:
        with self.ready:
            while wait and not self.jobs and not self.closed:
                self.ready.wait()
            taken = [self.jobs.popleft() for _ in range(min(n, len(self.jobs)))]
            return taken if taken or not self.closed else None
