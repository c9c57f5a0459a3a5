"""Run untrusted SQL (a model wrote it) against SQLite databases without letting it change or stall anything.

Four layers, each sufficient for a different attack:

1. **Read-only file**: the database is opened through a ``file:...?mode=ro`` URI — SQLite refuses any write to it.
2. **Only queries**: the text must be one statement that starts with ``SELECT``, ``WITH`` or ``VALUES`` (Python's
   ``sqlite3`` refuses several statements at once), so ``VACUUM INTO``, ``ATTACH`` or ``PRAGMA`` never reach the
   engine; ``SQLITE_LIMIT_ATTACHED`` is 0.
3. **Authorizer**: every operation the compiled statement would perform is checked — only reads, ``SELECT``,
   recursive CTEs and ordinary functions pass; writes, DDL, ``ATTACH``, ``PRAGMA``, transactions and
   ``load_extension`` are denied (this also stops a ``WITH ... DELETE``).
4. **Time**: a progress handler aborts the statement ``timeout_s`` after it started (a recursive CTE that never ends,
   a huge cross join); rows are fetched up to ``max_rows``. Statements run in worker processes, one task at a time
   over a private pipe, and a worker that overruns its deadline anyway (stuck outside the SQLite VM) is killed and
   replaced, so one runaway query never stalls the run.

This module imports only the standard library: workers start fast under ``spawn``.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections.abc import Iterable, Iterator
from multiprocessing.connection import wait
from pathlib import Path

_ALLOWED = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}
_QUERY_STARTS = ("select", "with", "values")
PROGRESS_EVERY = 2_000
"""SQLite VM instructions between deadline checks (~a few microseconds of work)."""


def _authorizer(action: int, arg1, arg2, db_name, trigger) -> int:
    if action not in _ALLOWED:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _strip_comments(sql: str) -> str:
    text = sql.lstrip()
    while text.startswith(("--", "/*")):
        if text.startswith("--"):
            text = text.split("\n", 1)[1] if "\n" in text else ""
        else:
            text = text.split("*/", 1)[1] if "*/" in text else ""
        text = text.lstrip()
    return text


def open_readonly(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    conn.set_authorizer(_authorizer)
    if hasattr(conn, "setlimit"):
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    return conn


def _value(v):
    return v.hex() if isinstance(v, bytes) else v


def run_query(conn: sqlite3.Connection, sql: str, timeout_s: float, max_rows: int) -> dict:
    """``{"ok": True, "rows", "truncated", "seconds"}`` or ``{"ok": False, "error", "seconds"}``."""
    t0 = time.monotonic()
    head = _strip_comments(sql).lower()
    if not head:
        return {"ok": False, "error": "empty query", "seconds": 0.0}
    if not head.startswith(_QUERY_STARTS):
        return {"ok": False, "error": f"not a query (starts with {head.split()[0]!r})", "seconds": 0.0}
    deadline = t0 + timeout_s
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, PROGRESS_EVERY)
    try:
        cur = conn.execute(sql)
        rows = cur.fetchmany(max_rows + 1)
        cur.close()
    except sqlite3.OperationalError as err:
        reason = "timeout" if str(err) == "interrupted" else str(err)
        return {"ok": False, "error": reason, "seconds": round(time.monotonic() - t0, 4)}
    except (sqlite3.Error, ValueError, OverflowError, MemoryError) as err:
        return {"ok": False, "error": f"{type(err).__name__}: {err}", "seconds": round(time.monotonic() - t0, 4)}
    finally:
        conn.set_progress_handler(None, 0)
    truncated = len(rows) > max_rows
    rows = [[_value(v) for v in row] for row in rows[:max_rows]]
    return {"ok": True, "rows": rows, "truncated": truncated, "seconds": round(time.monotonic() - t0, 4)}


def _serve(pipe, timeout_s: float, max_rows: int) -> None:
    """Worker process: one connection per database, one task at a time."""
    conns: dict[str, sqlite3.Connection] = {}
    while True:
        try:
            task = pipe.recv()
        except EOFError:
            return
        if task is None:
            return
        key, path, sql = task
        try:
            conn = conns.get(path) or conns.setdefault(path, open_readonly(path))
            result = run_query(conn, sql, timeout_s, max_rows)
        except sqlite3.Error as err:
            result = {"ok": False, "error": f"cannot open database: {err}", "seconds": 0.0}
        pipe.send((key, result))


class _Worker:
    def __init__(self, ctx, timeout_s: float, max_rows: int) -> None:
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, timeout_s, max_rows), daemon=True)
        self.proc.start()
        child.close()
        self.key = None
        self.started = 0.0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.pipe.close()


class Sandbox:
    """A pool of sandboxed SQLite workers. ``run(tasks)`` yields ``(key, result)`` as statements finish."""

    def __init__(self, workers: int, timeout_s: float = 30.0, max_rows: int = 100_000, grace_s: float = 2.0) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.timeout_s, self.max_rows, self.grace_s = timeout_s, max_rows, grace_s
        self.workers = [_Worker(self.ctx, timeout_s, max_rows) for _ in range(max(1, workers))]

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers[self.workers.index(worker)] = _Worker(self.ctx, self.timeout_s, self.max_rows)

    def run(self, tasks: Iterable[tuple[str, str, str]]) -> Iterator[tuple[str, dict]]:
        pending = iter(tasks)
        exhausted = False
        while True:
            for worker in self.workers:
                if worker.key is None and not exhausted:
                    task = next(pending, None)
                    if task is None:
                        exhausted = True
                        break
                    worker.pipe.send(task)
                    worker.key, worker.started = task[0], time.monotonic()
            busy = [w for w in self.workers if w.key is not None]
            if not busy:
                return
            ready = wait([w.pipe for w in busy], timeout=0.05)
            for worker in busy:
                if worker.pipe in ready:
                    try:
                        key, result = worker.pipe.recv()
                    except (EOFError, OSError):
                        key, result = worker.key, {"ok": False, "error": "worker died", "seconds": 0.0}
                        self._replace(worker)
                    else:
                        worker.key = None
                    yield key, result
                elif time.monotonic() - worker.started > self.timeout_s + self.grace_s:
                    key = worker.key
                    self._replace(worker)
                    yield key, {"ok": False, "error": "timeout (worker killed)", "seconds": self.timeout_s}

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.pipe.send(None)
            except (OSError, BrokenPipeError):
                pass
        for worker in self.workers:
            worker.proc.join(timeout=2)
            if worker.proc.is_alive():
                worker.kill()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
