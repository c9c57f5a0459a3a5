"""Read training records from disk with one-line, located errors for every way the input can be wrong.

Formats:
* litgpt JSON — a list of ``{"instruction", "input"?, "output"}`` objects (``.json``) or one per line (``.jsonl``);
* Q/A — ``{"train": [{"Question", "Answer"}], "val": [...], "test": [...]}`` (``val``/``test`` optional);
* any table of rows — a JSON list, JSONL or CSV (:func:`iter_rows`), for preference and reward data.

Errors name the file, the record (``record N`` in a JSON array, ``line N`` in JSONL, ``train[N]`` in Q/A files,
1-based) and the field: ``data.json:record 3: output: empty``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litgpt_ext.errors import UserError


@dataclass
class Example:
    """One supervised example before tokenization; ``where`` locates it for error messages."""

    instruction: str
    output: str
    input: str = ""
    where: str = ""
    id: str | None = None


def read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError("file not found", path=path) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(f"not valid UTF-8 (byte {err.start})", path=path, line=f"line {line}") from None


def load_json(path: Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"invalid JSON: {err.msg}", path=path, line=f"line {err.lineno}") from None


def iter_jsonl(path: Path, where=lambda n: n) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-empty line; invalid JSON is a located error (``where(n)`` names the line)."""
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"invalid JSON: {err.msg}", path=path, line=where(n)) from None


def iter_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """``(where, row)`` for each row of a table: a JSON list (``record N``), JSONL (``line N``) or CSV with a header
    (``line N``, the line the row starts on: quoted cells may span lines). Cells of a CSV are strings."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        if not reader.fieldnames:
            raise UserError("no header row", path=path, line="line 1")
        start = 2
        try:
            for row in reader:
                if None in row:
                    raise UserError(
                        f"{len(reader.fieldnames) + len(row[None])} cells, but the header has {len(reader.fieldnames)}",
                        path=path,
                        line=f"line {start}",
                    )
                yield f"line {start}", row
                start = reader.line_num + 1
        except csv.Error as err:
            raise UserError(f"invalid CSV: {err}", path=path, line=f"line {reader.line_num}") from None
        return
    if path.suffix.lower() == ".jsonl":
        rows = ((f"line {n}", obj) for n, obj in iter_jsonl(path))
    else:
        data = load_json(path)
        if not isinstance(data, list):
            raise UserError(f"expected a list of objects, got {type(data).__name__}", path=path, line="top level")
        rows = ((f"record {i}", obj) for i, obj in enumerate(data, start=1))
    for where, obj in rows:
        if not isinstance(obj, dict):
            raise UserError(f"expected an object, got {type(obj).__name__}", path=path, line=where)
        yield where, obj


def text_field(obj: dict, key: str, path: Path, where: str, required: bool = True, allow_empty: bool = False) -> str:
    if key not in obj:
        if required:
            raise UserError("missing", path=path, line=where, field=key)
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise UserError(f"expected a string, got {type(value).__name__}", path=path, line=where, field=key)
    if not allow_empty and not value.strip():
        raise UserError("empty", path=path, line=where, field=key)
    return value


def _litgpt_example(obj: Any, path: Path, where: str) -> Example:
    if not isinstance(obj, dict):
        raise UserError(f"expected an object, got {type(obj).__name__}", path=path, line=where)
    ident = obj.get("id")
    return Example(
        instruction=text_field(obj, "instruction", path, where),
        input=text_field(obj, "input", path, where, required=False, allow_empty=True),
        output=text_field(obj, "output", path, where),
        where=where,
        id=None if ident is None else str(ident),
    )


def _qa_example(obj: Any, path: Path, where: str) -> Example:
    if not isinstance(obj, dict):
        raise UserError(f"expected an object, got {type(obj).__name__}", path=path, line=where)
    question = text_field(obj, "Question", path, where)
    answer = text_field(obj, "Answer", path, where)
    # The answer follows "Answer:" after one space, so the student learns to start its reply the same way.
    return Example(instruction=question, output=answer if answer[:1].isspace() else " " + answer, where=where)


def is_qa_file(data: Any) -> bool:
    return isinstance(data, dict) and "train" in data


def load_examples(path: Path) -> dict[str, list[Example]]:
    """Load a file into ``{"train": [...], "val": [...]?, "test": [...]?}`` (litgpt files give only ``train``)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = iter_jsonl(path, where=lambda n: f"line {n}")
        return {"train": [_litgpt_example(obj, path, f"line {n}") for n, obj in rows]}
    data = load_json(path)
    if is_qa_file(data):
        splits = {}
        for split in ("train", "val", "test"):
            if split not in data:
                continue
            rows = data[split]
            if not isinstance(rows, list):
                raise UserError(f"expected a list, got {type(rows).__name__}", path=path, line=split)
            splits[split] = [_qa_example(obj, path, f"{split}[{i}]") for i, obj in enumerate(rows, start=1)]
        return splits
    if isinstance(data, list):
        return {"train": [_litgpt_example(obj, path, f"record {i}") for i, obj in enumerate(data, start=1)]}
    raise UserError(
        f"expected a list of records or an object with a 'train' list, got {type(data).__name__}",
        path=path,
        line="top level",
    )


@dataclass
class Columns:
    """A split as parallel lists (what batch tokenization wants)."""

    instruction: list[str]
    input: list[str]
    output: list[str]
    id: list[str]


def columns_of(examples: list[Example]) -> Columns:
    return Columns(
        [e.instruction for e in examples],
        [e.input for e in examples],
        [e.output for e in examples],
        [e.id or e.where for e in examples],
    )


def load_columns(path: Path) -> Columns:
    """Columns of a litgpt JSON/JSONL file. A fast path checks whole columns at once; if anything is off, the
    record-by-record loader runs instead and reports the exact ``path:record: field: problem``."""
    path = Path(path)
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in read_text(path).splitlines() if line.strip()]
        else:
            rows = json.loads(read_text(path))
        if isinstance(rows, list) and all(type(r) is dict for r in rows):
            cols = Columns(
                [r["instruction"] for r in rows],
                [r.get("input", "") for r in rows],
                [r["output"] for r in rows],
                [str(r["id"]) if r.get("id") is not None else f"record {i}" for i, r in enumerate(rows, start=1)],
            )
            text_ok = all(type(v) is str for col in (cols.instruction, cols.input, cols.output) for v in col)
            if text_ok and all(v.strip() for v in cols.instruction) and all(v.strip() for v in cols.output):
                return cols
    except (KeyError, ValueError, UserError):
        pass
    return columns_of(load_examples(path)["train"])


def read_routes(path: Path, field: str) -> dict[str, str | None]:
    """``where -> route`` of a file's rows (``record N`` / ``line N``, as the loaders name them): the row's
    ``field``, a non-empty string, or None where the row has no such field."""
    routes = {}
    for where, row in iter_rows(path):
        value = row.get(field)
        if value is not None and (not isinstance(value, str) or not value):
            raise UserError(f"must be a teacher's name (a non-empty string), got {value!r}", path=path, line=where,
                            field=field)  # fmt: skip
        routes[where] = value
    return routes
