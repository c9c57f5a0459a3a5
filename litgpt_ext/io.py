"""File writing that never leaves partial output behind and never loses appended work.

* :func:`atomic_path` / :func:`atomic_write_text`: write to a temporary name in the same directory, fsync, then
  ``os.replace`` — a reader sees the old file or the new one, never half of one.
* :class:`JsonlAppender`: one JSON object per line, each line written with a single ``write`` and fsync'd, so a crash
  can tear at most the last line; :func:`read_jsonl_repairing` detects and cuts such a torn tail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem supports fsync on a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux exposes it (``os.umask`` can only be read by setting
    it, which races with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


def save_safetensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file`` with the umask's file mode (the library creates its files 0600)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, default_file_mode())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsync'd and renamed onto ``path``, else removed.

    The file gets the mode a plain ``open(path, "w")`` would give it (0666 minus the umask): ``mkstemp`` creates
    0600, and a rename keeps the mode, which would leave every atomically written file (a dataset, an exported
    model) unreadable to the other users and service accounts of a shared machine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, default_file_mode())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty ``<path>.partial`` directory to fill; on success it replaces ``path`` (any old one removed),
    else it is removed — a reader never sees half a checkpoint."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows) -> None:
    """One JSON object per line, written to a temporary name and renamed on success (derived files, not caches)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class JsonlAppender:
    """Append-only JSONL writer: every record is one line, written whole (one ``write`` call: once it returns, the
    line is in the kernel and survives the process being killed) and fsync'd.

    ``fsync_interval`` > 0 groups the fsyncs: a line is fsync'd at the latest with the first write after
    ``fsync_interval`` seconds, and on ``close``. A kill -9 still loses nothing (the lines are written); only an
    operating-system crash or power loss can lose the lines of the last ``fsync_interval`` seconds — for a
    teacher cache, answers that a rerun asks for again. 0 fsyncs every line."""

    def __init__(self, path: str | Path, fsync: bool = True, fsync_interval: float = 0.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab", buffering=0)
        self._fsync = fsync
        self.fsync_interval = fsync_interval
        self._synced = time.monotonic()
        self._dirty = False

    def write(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        self._fh.write(data)  # unbuffered: one write call per line
        if not self._fsync:
            return
        self._dirty = True
        now = time.monotonic()
        if now - self._synced >= self.fsync_interval:
            os.fsync(self._fh.fileno())
            self._synced, self._dirty = now, False

    def close(self) -> None:
        if self._fsync and self._dirty and not self._fh.closed:
            os.fsync(self._fh.fileno())
            self._dirty = False
        self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair_torn_tail(path: str | Path) -> int:
    """Cut a last line that lacks its newline or is not valid JSON (a crash mid-write); return bytes removed."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        # find the start of the last line
        block = min(size, 1 << 20)
        fh.seek(size - block)
        tail = fh.read(block)
        body = tail[:-1] if tail.endswith(b"\n") else tail
        start = body.rfind(b"\n") + 1
        last = tail[start:]
        ok = last.endswith(b"\n")
        if ok:
            try:
                json.loads(last)
            except ValueError:
                ok = False
        if ok:
            return 0
        cut = size - block + start
        fh.truncate(cut)
        os.fsync(fh.fileno())
        return size - cut


def read_jsonl_repairing(path: str | Path) -> Iterator[dict]:
    """Read an append-only JSONL file written by :class:`JsonlAppender`, repairing a torn last line first."""
    path = Path(path)
    if not path.exists():
        return
    repair_torn_tail(path)
    with open(path, encoding="utf-8", errors="strict") as fh:
        for n, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:  # not a torn tail (that was repaired): the file is damaged
                    from litgpt_ext.errors import UserError

                    raise UserError(f"invalid JSON ({err.msg}); not written by this tool?", path=path, line=n) from None
