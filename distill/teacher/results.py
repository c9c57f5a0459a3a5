"""Judging a teacher answer and turning it into a cache line (shared by the live and Batch API paths)."""

from __future__ import annotations

import json

from distill.teacher.requests import ChatRequest

BAD_FINISH = ("length", "content_filter")


def answer_problem(choices: list[dict], wants_json: bool) -> tuple[str, str] | None:
    """(reason, detail) of the first unusable choice: cut off, filtered, or not the JSON that was asked for."""
    for i, c in enumerate(choices):
        if c.get("finish_reason") in BAD_FINISH:
            return c["finish_reason"], f"choice {i} finished with {c['finish_reason']!r}"
        if wants_json:
            try:
                json.loads(c.get("content") or "")
            except ValueError as err:
                return "invalid_json", f"choice {i}: {err}"
    return None


def completion_choices(completion: dict) -> list[dict]:
    return [
        {"content": (c.get("message") or {}).get("content"), "finish_reason": c.get("finish_reason")}
        for c in completion.get("choices") or []
    ]


def result_row(request: ChatRequest, completion: dict, attempts: int, source: str) -> dict:
    choices = completion_choices(completion)
    problem = answer_problem(choices, wants_json=bool(request.body.get("response_format")))
    row = {
        "key": request.key,
        "ids": request.ids,
        "model": request.body["model"],
        "status": "failed" if problem else "ok",
        "reason": problem[0] if problem else None,
        "detail": problem[1] if problem else None,
        "choices": choices,
        "usage": completion.get("usage"),
        "attempts": attempts,
        "source": source,
    }
    return row


def failure_row(request: ChatRequest, reason: str, detail: str, attempts: int, source: str) -> dict:
    return {
        "key": request.key,
        "ids": request.ids,
        "model": request.body["model"],
        "status": "failed",
        "reason": reason,
        "detail": detail,
        "choices": [],
        "usage": None,
        "attempts": attempts,
        "source": source,
    }
