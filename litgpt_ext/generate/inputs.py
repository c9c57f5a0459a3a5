"""Streaming the prompts file: one JSON object per line, read lazily, filtered by shard and by what is done.

Bad lines never disappear silently: with ``on_error=record`` (default) each becomes an error record in the output
(``{"id", "_line", "error": "path:line: field: problem"}``) and is counted; with ``on_error=stop`` the first one
stops the run with that one-line message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from litgpt_ext.errors import UserError


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def owns(self, line: int) -> bool:
        return (line - 1) % self.count == self.index

    def split(self, rank: int, world: int) -> Shard:
        """This shard, further split over ``world`` processes (one per device)."""
        return Shard(self.index * world + rank, self.count * world)


def parse_shard(value: str | None) -> Shard:
    """``I/N`` (0-based), else the SLURM array variables, else the whole input."""
    if value:
        try:
            i, n = (int(x) for x in value.split("/"))
        except ValueError:
            raise UserError(f"expected I/N, got {value!r}", field="shard") from None
        if not 0 <= i < n:
            raise UserError(f"shard index must be in [0, {n}), got {i}", field="shard")
        return Shard(i, n)
    if "SLURM_ARRAY_TASK_ID" in os.environ:
        task = int(os.environ["SLURM_ARRAY_TASK_ID"])
        first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0))
        count = int(
            os.environ.get("SLURM_ARRAY_TASK_COUNT", int(os.environ.get("SLURM_ARRAY_TASK_MAX", task)) - first + 1)
        )
        return Shard(task - first, count)
    return Shard()


@dataclass
class PromptRecord:
    id: str
    line: int
    text: str
    record: dict


def read_prompts(
    path: Path, render: Callable[[dict, int], str], shard: Shard, done: set[str], on_error: str
) -> Iterator[PromptRecord | dict]:
    """Yield prompts to generate for, or error records for bad lines (see the module docstring)."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not shard.owns(line_no) or not raw.strip():
                continue
            rid = str(line_no)  # until the record says otherwise
            try:
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise UserError("not valid UTF-8", path=path, line=line_no) from None
                except json.JSONDecodeError as err:
                    raise UserError(f"invalid JSON: {err.msg}", path=path, line=line_no) from None
                if not isinstance(obj, dict):
                    raise UserError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line_no)
                rid = str(obj["id"]) if obj.get("id") is not None else str(line_no)
                if rid in done:
                    continue
                text = render(obj, line_no)
                if not text.strip():
                    raise UserError("empty prompt", path=path, line=line_no, field="prompt")
                yield PromptRecord(rid, line_no, text, obj)
            except UserError as err:
                if on_error == "stop":
                    raise
                if rid not in done:
                    yield {"id": rid, "_line": line_no, "error": str(err)}
