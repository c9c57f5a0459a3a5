"""Judging a teacher answer and turning it into a cache line (shared by the live and Batch API paths)."""

from __future__ import annotations

import json

from distill.teacher.requests import ChatRequest

BAD_FINISH = ("length", "content_filter")


def answer_problem(choices: list[dict], wants_json: bool, wants_logprobs: bool = False) -> tuple[str, str] | None:
    """(reason, detail) of the first unusable choice: cut off, filtered, not the JSON that was asked for, or
    without the log-probs that were asked for."""
    for i, c in enumerate(choices):
        if c.get("finish_reason") in BAD_FINISH:
            return c["finish_reason"], f"choice {i} finished with {c['finish_reason']!r}"
        if wants_logprobs and c.get("content") and not c.get("logprobs"):
            return "no_logprobs", f"choice {i} came without log-probs (does the endpoint support logprobs?)"
        if wants_json:
            try:
                json.loads(c.get("content") or "")
            except ValueError as err:
                return "invalid_json", f"choice {i}: {err}"
    return None


def completion_choices(completion: dict, wants_logprobs: bool = False) -> list[dict]:
    """What the cache keeps of each choice: the text, why it ended, and — when they were asked for — the answer's
    token log-probs exactly as returned (``[{"token", "bytes", "logprob", "top_logprobs": [...]}, ...]``)."""
    choices = []
    for c in completion.get("choices") or []:
        row = {"content": (c.get("message") or {}).get("content"), "finish_reason": c.get("finish_reason")}
        if wants_logprobs:
            row["logprobs"] = (c.get("logprobs") or {}).get("content")
        choices.append(row)
    return choices


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_logprobs(completion: dict) -> None:
    """Raise ``ValueError`` when log-probs are present but not in the shape OpenAI documents (a body a proxy
    damaged, a server bug): such an answer is retried like any unreadable body, never cached half-read."""
    for i, c in enumerate(completion.get("choices") or []):
        content = (c.get("logprobs") or {}).get("content")
        if content is None:
            continue
        if not isinstance(content, list):
            raise ValueError(f"choice {i}: logprobs.content is not a list")
        for j, tok in enumerate(content):
            alternatives = tok.get("top_logprobs") if isinstance(tok, dict) else None
            entries = [tok, *(alternatives if isinstance(alternatives, list) else [None])]
            for entry in entries:
                if not (
                    isinstance(entry, dict)
                    and isinstance(entry.get("token"), str)
                    and _number(entry.get("logprob"))
                    and (entry.get("bytes") is None or isinstance(entry.get("bytes"), list))
                ):
                    raise ValueError(f"choice {i}: logprobs.content[{j}] is not a token log-prob")


def wants_logprobs(body: dict) -> bool:
    return bool(body.get("logprobs"))


def result_row(request: ChatRequest, completion: dict, attempts: int, source: str) -> dict:
    logprobs = wants_logprobs(request.body)
    choices = completion_choices(completion, logprobs)
    problem = answer_problem(choices, bool(request.body.get("response_format")), logprobs)
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
