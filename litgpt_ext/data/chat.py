"""Conversations as people store them: OpenAI ``messages``, ShareGPT ``conversations``, TRL's conversational rows.

One reader for every command that takes chat data, so a new format is one function here, not one per command.

* OpenAI (fine-tuning / distillation exports, TRL's conversational ``messages``):
  ``{"messages": [{"role": "system"|"developer"|"user"|"assistant"|"tool", "content": "..."}]}``. ``content`` may
  be a list of parts (the text parts are joined); an assistant turn that only calls tools keeps its
  ``tool_calls`` as JSON text, so nothing the model saw is dropped. ``developer`` is OpenAI's newer name for the
  system turn and is read as ``system``.
* ShareGPT (LLaMA-Factory, axolotl): ``{"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}]}``;
  ``user`` / ``assistant`` / ``tool`` / ``observation`` / ``function_call`` are accepted too.

Every turn becomes ``{"role", "content"}`` with role one of :data:`ROLES`. Errors name the file, the row and the
turn: ``msgs.jsonl:line 3: messages[2].content: missing``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from litgpt_ext.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
}
ChatFormat = Literal["messages", "sharegpt"]
CHAT_FORMATS = ("messages", "sharegpt")
CHAT_FIELDS: dict[str, str] = {"messages": "messages", "sharegpt": "conversations"}
"""The field a row of each chat format keeps its turns in."""


@dataclass
class Conversation:
    """One conversation; ``where`` locates it for error messages (``line 3``), ``id`` is the row's own if any."""

    messages: list[dict]
    where: str
    id: str | None = None


def chat_format_of(row: object) -> ChatFormat | None:
    """The chat format a row is in, by its shape (None: not a conversation)."""
    if isinstance(row, dict):
        for kind, field in CHAT_FIELDS.items():
            if field in row:
                return kind
    return None


def _content(turn: dict, key: str, path, where: str, field: str, role: str) -> str:
    if key not in turn or turn[key] is None:
        calls = turn.get("tool_calls") or turn.get("function_call")
        if role == "assistant" and calls:  # a tool call: kept as the text the model produced
            return json.dumps(calls, ensure_ascii=False)
        raise UserError("missing", path=path, line=where, field=f"{field}.{key}")
    value = turn[key]
    if isinstance(value, list):  # OpenAI content parts
        texts = []
        for j, part in enumerate(value):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise UserError("only text parts are supported", path=path, line=where, field=f"{field}.{key}[{j}]")
        value = "".join(texts)
    if not isinstance(value, str):
        raise UserError(f"expected a string, got {type(value).__name__}", path=path, line=where, field=f"{field}.{key}")
    return value


def parse_turns(value: object, path, where: str, field: str, kind: ChatFormat = "messages") -> list[dict]:
    """A list of turns in ``kind``'s spelling as ``[{"role", "content"}]`` (located errors for anything else)."""
    role_key, content_key, roles = (
        ("role", "content", OPENAI_ROLES) if kind == "messages" else ("from", "value", SHAREGPT_ROLES)
    )
    if not isinstance(value, list):
        raise UserError(f"expected a list of turns, got {type(value).__name__}", path=path, line=where, field=field)
    if not value:
        raise UserError("no turns", path=path, line=where, field=field)
    turns = []
    for i, turn in enumerate(value):
        name = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise UserError(f"expected an object, got {type(turn).__name__}", path=path, line=where, field=name)
        if role_key not in turn:
            raise UserError("missing", path=path, line=where, field=f"{name}.{role_key}")
        raw_role = turn[role_key]
        if not isinstance(raw_role, str) or raw_role not in roles:
            raise UserError(
                f"unknown role {raw_role!r}; use one of {', '.join(roles)}",
                path=path,
                line=where,
                field=f"{name}.{role_key}",
            )
        role = roles[raw_role]
        turns.append({"role": role, "content": _content(turn, content_key, path, where, name, role)})
    return turns


def read_conversation(row: object, path, where: str, need_assistant: bool = True) -> Conversation:
    """A row of a chat file as a :class:`Conversation`; ``need_assistant`` for training data (a conversation with
    nothing to learn is an error, not a silent zero-loss sample)."""
    if not isinstance(row, dict):
        raise UserError(f"expected an object, got {type(row).__name__}", path=path, line=where)
    messages = chat_turns(row, path, where)
    if messages is None:
        raise UserError(
            "missing (a chat row has 'messages' or 'conversations')", path=path, line=where, field="messages"
        )
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise UserError("no assistant turn", path=path, line=where, field=CHAT_FIELDS[chat_format_of(row)])
    ident = row.get("id")
    return Conversation(messages, where, None if ident is None else str(ident))


def chat_turns(row: object, path=None, where: str = "") -> list[dict] | None:
    """A chat row's turns as ``[{"role", "content"}]`` (located errors), or None when the row is not a chat row."""
    kind = chat_format_of(row)
    if kind is None:
        return None
    return parse_turns(row[CHAT_FIELDS[kind]], path, where, CHAT_FIELDS[kind], kind)


def prompt_and_reply(messages: list[dict]) -> tuple[list[dict], str | None]:
    """``(prompt turns, reference)``: a conversation that ends with an assistant turn, split before it (what a
    generator answers and what the answer is compared with); otherwise the whole conversation and None."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, None


DATA_FORMATS = ("auto", "alpaca", "qa", "messages", "sharegpt")


def first_row(path: Path):
    """The first row of a ``.json`` list (or the object itself), else of a JSONL file, read only up to its first
    non-empty line (None when there is none or it is not JSON)."""
    from litgpt_ext.data.records import load_json

    path = Path(path)
    if path.suffix.lower() != ".json":
        with open(path, "rb") as fh:
            for raw in fh:
                if raw.strip():
                    try:
                        return json.loads(raw)
                    except ValueError:
                        return None
        return None
    data = load_json(path)
    if isinstance(data, dict):
        return data
    return data[0] if isinstance(data, list) and data else None


def data_format(path: Path, given: str = "auto") -> str:
    """The training-data format of a file: ``given`` unless ``auto``, else by the first row's shape (a chat row
    has ``messages`` or ``conversations``, a Q/A file is an object with a ``train`` list, anything else is litgpt's
    alpaca JSON)."""
    if given not in DATA_FORMATS:
        raise UserError(f"use one of {', '.join(DATA_FORMATS)}", field="data.format")
    if given != "auto":
        return given
    first = first_row(path)
    kind = chat_format_of(first)
    if kind is not None:
        return kind
    if isinstance(first, dict) and "train" in first and Path(path).suffix.lower() == ".json":
        return "qa"
    return "alpaca"


def load_conversations(path: Path, kind: str = "auto", need_assistant: bool = True) -> list[Conversation]:
    """Every row of a chat file (JSON list or JSONL) as a :class:`Conversation`; an empty file is an error."""
    from litgpt_ext.data.records import iter_rows

    path = Path(path)
    conversations = []
    for where, row in iter_rows(path):
        if kind in CHAT_FORMATS and chat_format_of(row) not in (kind, None):
            raise UserError(f"a {chat_format_of(row)} row in a {kind} file", path=path, line=where)
        conversations.append(read_conversation(row, path, where, need_assistant))
    if not conversations:
        raise UserError("no conversations", path=path)
    return conversations
