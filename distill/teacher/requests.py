"""Chat requests and their cache key: a hash of (model, messages, params), stable across runs and machines."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from distill.records import Record, read_records
from litgpt_ext.errors import UserError
from litgpt_ext.templates import Template


@dataclass
class ChatRequest:
    key: str
    body: dict
    """The request body exactly as sent (model, messages and params)."""
    ids: list[str] = field(default_factory=list)
    """Record ids that produced this request (identical prompts are sent once)."""


def request_key(body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def make_body(model: str, messages: list[dict], params: dict) -> dict:
    return {"model": model, "messages": messages, **{k: v for k, v in params.items() if v is not None}}


def build_requests(
    records: list[Record], records_path: Path, template: Template, system: str | None, model: str, params: dict
) -> list[ChatRequest]:
    """Render every record first (all template errors surface before anything is sent), then dedupe by key."""
    by_key: dict[str, ChatRequest] = {}
    system = system if system is not None else template.system
    for rec in records:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": template.render(rec.fields, (records_path, rec.line))})
        body = make_body(model, messages, params)
        key = request_key(body)
        by_key.setdefault(key, ChatRequest(key, body)).ids.append(rec.id)
    return list(by_key.values())


def read_message_requests(path: Path, model: str, params: dict) -> list[ChatRequest]:
    """``--messages`` JSONL: ``{"id": ..., "messages": [{"role", "content"}, ...]}`` per line."""
    by_key: dict[str, ChatRequest] = {}
    for rec in read_records(path):
        messages = rec.fields.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError("expected a non-empty list of chat messages", path=path, line=rec.line, field="messages")
        for i, m in enumerate(messages):
            if (
                not isinstance(m, dict)
                or m.get("role") not in ("system", "user", "assistant", "developer")
                or not isinstance(m.get("content"), str)
            ):
                raise UserError(
                    f"message {i} needs a role and string content", path=path, line=rec.line, field="messages"
                )
        body = make_body(model, messages, params)
        by_key.setdefault(request_key(body), ChatRequest(request_key(body), body)).ids.append(rec.id)
    return list(by_key.values())
