"""Reading generate_batch's input — a JSONL of prompts (streamed), litgpt JSON/JSONL or a Q/A file's split (see
:class:`InputFormat`) — filtered by shard and by what is done.

Bad rows never disappear silently: with ``on_error=record`` (default) each becomes an error record in the output
(``{"id", "_line", "error": "path:line: field: problem"}``) and is counted; with ``on_error=stop`` the first one
stops the run with that one-line message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from litgpt_ext.data.chat import CHAT_FIELDS, chat_format_of, first_row
from litgpt_ext.data.records import load_json
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
    text: str | list[dict]
    """The prompt text, or the turns of a chat row up to the one to answer."""
    record: dict


@dataclass(frozen=True)
class InputFormat:
    """How an input file is read: which field is the prompt, and how rows are numbered and named.

    * ``prompts`` — JSONL, one object per line; the prompt is ``--field``; a row's id is its ``id`` or line number.
    * ``litgpt`` — litgpt's training format (a JSON list or JSONL of ``instruction``/``input``/``output``): the
      instruction and input go through the prompt style as in training, ``output`` is the reference.
    * ``qa`` — a Q/A file's split (``{"train"|"val"|"test": [{"Question", "Answer"}]}``): ``Question`` is the prompt,
      ``Answer`` the reference.
    * ``messages`` / ``sharegpt`` — chat rows (:mod:`litgpt_ext.data.chat`): the conversation up to its last
      user turn is the prompt, rendered with the student's chat template or style; a final assistant turn is the
      reference.

    In the two training formats every field of a row is kept in the output (so the reference travels with the
    generation), and a row without an ``id`` is ``<split>[<n>]`` — 1-based, as in error messages — where the split
    is ``--split`` (for litgpt files: the file's name without suffix, e.g. ``test`` for test.json).
    """

    kind: Literal["prompts", "litgpt", "qa", "messages", "sharegpt"]
    field: str
    split: str = ""

    @property
    def keeps_fields(self) -> bool:
        return self.kind != "prompts"

    def kept(self, record) -> dict:
        """The fields of a row that its output line (or error line) keeps: all but ``id`` in a training format."""
        return {k: v for k, v in record.items() if k != "id"} if self.keeps_fields and isinstance(record, dict) else {}


FORMATS = ("auto", "prompts", "litgpt", "qa", "messages", "sharegpt")


def detect_format(path: Path, input_format: str, field: str, split: str | None) -> InputFormat:
    """The :class:`InputFormat` of ``path`` (``auto``: a ``.json`` file is Q/A when it is an object (of splits) and
    litgpt when it is a list; a JSONL file is litgpt when its first row has ``instruction`` but no ``--field``;
    either is a chat file when its first row has ``messages`` or ``conversations``)."""
    if input_format not in FORMATS:
        raise UserError(f"use one of {', '.join(FORMATS)}", field="input_format")
    kind = input_format
    data = load_json(path) if path.suffix.lower() == ".json" and kind in ("auto", "qa") else None
    if kind == "auto":
        if isinstance(data, list):
            first = data[0] if data else None
        else:  # a JSONL file (data None), or a Q/A object
            first = first_row(path) if data is None else None
        chat = None if isinstance(first, dict) and field in first else chat_format_of(first)
        if chat is not None:
            kind = chat
        elif data is not None:
            kind = "qa" if isinstance(data, dict) else "litgpt"  # an object of splits, or a list of records
        else:
            kind = "litgpt" if isinstance(first, dict) and "instruction" in first and field not in first else "prompts"
    if kind == "prompts":
        if split:
            raise UserError("applies to Q/A and litgpt inputs, not a JSONL of prompts", field="split")
        return InputFormat("prompts", field)
    if kind == "litgpt":
        return InputFormat("litgpt", "instruction", split or path.stem)
    if kind in CHAT_FIELDS:
        return InputFormat(kind, CHAT_FIELDS[kind], split or path.stem)
    data = load_json(path) if data is None else data
    splits = [k for k in ("train", "val", "test") if isinstance(data, dict) and k in data]
    if not splits:
        raise UserError("not a Q/A file: expected an object with train/val/test lists", path=path, line="top level")
    if split not in splits:
        given = f"--split {split!r} is not in it" if split else "pass --split"
        raise UserError(f"a Q/A file with splits {', '.join(splits)}: {given}", path=path, field="split")
    return InputFormat("qa", "Question", split)


def _rows(path: Path, fmt: InputFormat) -> Iterator[tuple[int, int | str, object]]:
    """``(position, where, value)`` per row: the position decides shards and output order, ``where`` locates the
    row in error messages; a JSONL line that is not JSON gives a :class:`UserError` as its value."""
    if fmt.kind == "qa" or (fmt.kind != "prompts" and path.suffix.lower() == ".json"):
        data = load_json(path)
        rows = data.get(fmt.split) if fmt.kind == "qa" else data
        if not isinstance(rows, list):
            line = fmt.split if fmt.kind == "qa" else "top level"
            raise UserError(f"expected a list, got {type(rows).__name__}", path=path, line=line)
        label = fmt.split if fmt.kind == "qa" else "record"
        for n, obj in enumerate(rows, start=1):
            yield n, f"{label} {n}" if label == "record" else f"{label}[{n}]", obj
        return
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                value = UserError("not valid UTF-8", path=path, line=line_no)
            except json.JSONDecodeError as err:
                value = UserError(f"invalid JSON: {err.msg}", path=path, line=line_no)
            yield line_no, line_no, value


def read_prompts(
    path: Path,
    render: Callable[[dict, int | str], str],
    shard: Shard,
    done: set[str],
    on_error: str,
    fmt: InputFormat | None = None,
) -> Iterator[PromptRecord | dict]:
    """Yield prompts to generate for, or error records for bad rows (see the module docstring)."""
    fmt = fmt or InputFormat("prompts", "prompt")
    for position, where, obj in _rows(path, fmt):
        if not shard.owns(position):
            continue
        rid = str(position) if fmt.kind == "prompts" else f"{fmt.split}[{position}]"  # until the row says otherwise
        try:
            if isinstance(obj, UserError):
                raise obj
            if not isinstance(obj, dict):
                raise UserError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=where)
            rid = str(obj["id"]) if obj.get("id") is not None else rid
            if rid in done:
                continue
            text = render(obj, where)
            if isinstance(text, str) and not text.strip():
                raise UserError("empty prompt", path=path, line=where, field=fmt.field)
            yield PromptRecord(rid, position, text, obj)
        except UserError as err:
            if on_error == "stop":
                raise
            if rid not in done:
                yield {"id": rid, "_line": position, **fmt.kept(obj), "error": str(err)}
