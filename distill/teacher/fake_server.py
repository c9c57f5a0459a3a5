"""A local HTTP server that speaks the OpenAI API — chat completions, ``/v1/files`` and ``/v1/batches`` — for
tests, the offline demo and benchmarks. It is driven by the real ``openai`` client over real sockets.

Knobs: per-request latency, a server-side rate limit (requests and tokens per minute, answered with 429 and
``retry-after-ms``, plus ``x-ratelimit-*`` headers on every answer), injected faults (500/503/429, dropped
connections, stalls past the client's timeout), bad answers (``finish_reason`` ``length`` / ``content_filter``,
invalid JSON under ``response_format``), and Batch API expiry. It counts what it answered per request body so tests
can prove that nothing was sent twice. Run it standalone: ``python -m distill.teacher.fake_server --port 8000``, or around one command:
``python -m distill.teacher.fake_server -- litgpt-ext distill_query ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ServerConfig:
    latency_s: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    fault_rate: float = 0.0
    """Fraction of chat requests answered with an injected transport/server fault."""
    faults: tuple[str, ...] = ("500", "503", "429", "drop", "stall")
    """Fault kinds drawn from; also available: ``cut_body`` (a 200 with truncated JSON), ``not_completion``."""
    stall_s: float = 3.0
    bad_answer_rate: float = 0.0
    """Fraction of requests whose answer is cut (length), filtered, or invalid JSON when JSON was requested."""
    api_key: str | None = None
    """If set, requests must carry ``Authorization: Bearer <api_key>`` (else 401)."""
    batch_complete_fraction: float = 1.0
    """Fraction of a batch's requests completed before it 'expires' (1.0: the batch completes)."""
    batch_delay_s: float = 0.0
    seed: int = 0
    tokenizer: str | None = None
    """A checkpoint directory: answers asked for ``logprobs`` get them in its vocabulary (else ``logprobs: null``,
    as from an endpoint that does not support them)."""
    model_dir: str | None = None
    """A litgpt checkpoint that scores ``/v1/completions`` prompts (``echo`` + ``logprobs``), as a vLLM server."""
    max_top_logprobs: int = 20
    """Requests asking for more alternatives are refused with a 400 (OpenAI's limit)."""
    answer_limit: int | None = None
    """After this many admitted requests the server behaves as if it died: every connection is dropped."""


def approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def body_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def judge_verdict(prompt: str) -> str | None:
    """For a judge prompt (``<task>...</task>`` and ``<answer>...</answer>``, as ``prompts/judge_score.md``): a JSON
    verdict whose score is the share of the answer's words found in the task — grounded answers score high."""
    task = re.search(r"<task>(.*?)</task>", prompt, flags=re.DOTALL)
    answer = re.search(r"<answer>(.*?)</answer>", prompt, flags=re.DOTALL)
    if not (task and answer):
        return None
    words = _words(answer.group(1))
    grounded = len(words & _words(task.group(1))) / len(words) if words else 0.0
    score = 1 + round(9 * grounded)
    return json.dumps({"score": score, "reason": f"{grounded:.0%} of the answer's words appear in the task"})


# The stand-in teacher's "knowledge": what a product is, for the category query of the search-query task.
CATEGORIES = {
    "apples": "fruit",
    "wool": "textiles",
    "silk": "textiles",
    "copper": "metal",
    "salt": "minerals",
    "honey": "sweets",
    "glass": "glassware",
    "timber": "wood",
    "cheese": "dairy",
    "pottery": "ceramics",
}


def _bare_words(text: str) -> list[str]:
    return [w.strip(".,;:!?()\"'") for w in text.split()]


def search_queries(title: str, body: str) -> list[str]:
    """The search-query task's teacher: three lower-case queries by a fixed rule over the document, so the answer
    depends on the input the way a real teacher's does — a keyword query (the title's subject and the product the
    body names), a category query (the product's category, from :data:`CATEGORIES`) and a place query (the last
    capitalised word of the title: "towns on the aire"). Documents without a known product or a second name in the
    title get the body's longest word and "where is <subject>" instead."""
    title_words = [w for w in _bare_words(title) if w[:1].isalpha()]
    subject = title_words[0].lower() if title_words else "this"
    body_words = [w.lower() for w in _bare_words(body)]
    product = next((w for w in body_words if w in CATEGORIES), None)
    names = [w for w in title_words[1:] if w[0].isupper()]
    if product is None:
        long_words = [w for w in body_words if len(w) > 3 and w != subject]
        keyword = max(long_words, key=len) if long_words else "guide"
        queries = [f"{subject} {keyword}", f"visiting {subject}"]
    else:
        queries = [f"{subject} {product}", f"{CATEGORIES[product]} shops in {subject}"]
    queries.append(f"towns on the {names[-1].lower()}" if names else f"where is {subject}")
    return queries


def teacher_answer(body: dict) -> str:
    """A deterministic, task-shaped stand-in for a teacher model's answer."""
    messages = body.get("messages") or []
    prompt = str(messages[-1].get("content", "")) if messages else ""
    verdict = judge_verdict(prompt)
    if verdict is not None:
        return verdict
    fields = dict(re.findall(r"^(Title|URL|Question|Body|Article):\s*(.+)$", prompt, flags=re.MULTILINE))
    fmt = (body.get("response_format") or {}).get("type")
    if "Title" in fields and "categor" in prompt.lower():
        words = [
            w for w in _bare_words(fields["Title"] + " " + fields.get("Body", "")) if len(w) > 3 and w[0].isalpha()
        ]
        items = sorted({w.capitalize() for w in words[:12]})[:4] or ["General"]
    elif "Title" in fields:
        items = search_queries(fields["Title"], fields.get("Body", ""))
    else:
        question = fields.get("Question", prompt.strip().splitlines()[-1] if prompt.strip() else "")
        items = [f"A short answer about {question.rstrip('?')[:80]}."]
    if fmt in ("json_object", "json_schema"):
        return json.dumps({"items": items, "answer": items[0]})
    return "\n".join(items)


class _State:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.rng = random.Random(config.seed)
        self.window: deque[tuple[float, int]] = deque()  # (time, tokens) of admitted requests in the last minute
        self.answered: Counter[str] = Counter()  # body key -> 200 answers sent
        self.received = 0
        self.rate_limited = 0
        self.faults_injected = 0
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.batches_created = 0
        self.first_admitted: float | None = None
        self.admitted = 0
        """Requests the rate limit let through (answered or hit by an injected fault)."""
        self.last_answered: float | None = None
        from distill.teacher.fake_logprobs import AnswerLogprobs, ModelScorer

        self.logprobs = AnswerLogprobs(config.tokenizer) if config.tokenizer else None
        self.scorer = ModelScorer(config.model_dir) if config.model_dir else None

    def duplicates(self) -> int:
        return sum(c - 1 for c in self.answered.values() if c > 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing -------------------------------------------------------------------------------------------------
    def _send(self, status: int, payload: dict | bytes, headers: dict | None = None, ctype="application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, etype: str = "invalid_request_error", headers=None) -> None:
        self._send(status, {"error": {"message": message, "type": etype, "code": None, "param": None}}, headers)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        key = self.server.state.config.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._error(401, "Incorrect API key provided.", "invalid_api_key")
            return False
        return True

    # -- routing --------------------------------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        if not self._authorized():
            return
        path = self.path.split("?")[0]
        if path == "/v1/chat/completions":
            self._chat(json.loads(body))
        elif path == "/v1/completions":
            self._prompt_scores(json.loads(body))
        elif path == "/v1/files":
            self._upload(body)
        elif path == "/v1/batches":
            self._create_batch(json.loads(body))
        elif m := re.fullmatch(r"/v1/batches/([\w-]+)/cancel", path):
            self._cancel_batch(m.group(1))
        else:
            self._error(404, f"no route {path}")

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        path = self.path.split("?")[0]
        state = self.server.state
        if m := re.fullmatch(r"/v1/files/([\w-]+)/content", path):
            f = state.files.get(m.group(1))
            self._send(200, f["content"], ctype="application/octet-stream") if f else self._error(404, "no file")
        elif m := re.fullmatch(r"/v1/files/([\w-]+)", path):
            f = state.files.get(m.group(1))
            self._send(200, {k: v for k, v in f.items() if k != "content"}) if f else self._error(404, "no file")
        elif m := re.fullmatch(r"/v1/batches/([\w-]+)", path):
            b = state.batches.get(m.group(1))
            self._send(200, b) if b else self._error(404, "no batch")
        elif path == "/v1/batches":
            items = sorted(state.batches.values(), key=lambda b: b["created_at"], reverse=True)
            self._send(
                200,
                {
                    "object": "list",
                    "data": items,
                    "has_more": False,
                    "first_id": items[0]["id"] if items else None,
                    "last_id": items[-1]["id"] if items else None,
                },
            )
        else:
            self._error(404, f"no route {path}")

    # -- chat completions -----------------------------------------------------------------------------------------
    def _rate_headers(self, now: float) -> dict:
        state, cfg = self.server.state, self.server.state.config
        headers = {}
        for kind, limit, used in (
            ("requests", cfg.rpm, len(state.window)),
            ("tokens", cfg.tpm, sum(t for _, t in state.window)),
        ):
            if limit:
                reset = (state.window[0][0] + 60 - now) if state.window else 0.0
                headers[f"x-ratelimit-limit-{kind}"] = str(limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - used))
                headers[f"x-ratelimit-reset-{kind}"] = f"{max(reset, 0) * 1000:.0f}ms"
        return headers

    def _admit(self, tokens: int) -> tuple[bool, dict, float]:
        state, cfg = self.server.state, self.server.state.config
        now = time.monotonic()
        with state.lock:
            while state.window and state.window[0][0] <= now - 60:
                state.window.popleft()
            over_r = cfg.rpm and len(state.window) >= cfg.rpm
            over_t = cfg.tpm and sum(t for _, t in state.window) + tokens > cfg.tpm
            if over_r or over_t:
                state.rate_limited += 1
                wait = (state.window[0][0] + 60 - now) if state.window else 1.0
                return False, self._rate_headers(now), max(wait, 0.05)
            state.window.append((now, tokens))
            state.admitted += 1
            state.first_admitted = state.first_admitted or now
            return True, self._rate_headers(now), 0.0

    def _chat(self, body: dict) -> None:
        if body.get("model") == "missing-model":
            return self._error(404, "The model `missing-model` does not exist.", "model_not_found")
        if "TRIGGER_400" in json.dumps(body.get("messages")):
            return self._error(400, "Invalid request: the prompt was rejected.", "invalid_request_error")
        if self._refuse_top_logprobs(body):
            return
        prompt_tokens = sum(approx_tokens(str(m.get("content", ""))) for m in body.get("messages", []))
        fault = self._gate(prompt_tokens + int(body.get("max_tokens") or 16))
        if fault is False:
            return
        headers, bad = fault
        if headers is None:  # a fault that still answers 200
            return self._fault_body(body, prompt_tokens, bad)
        self._send(200, self._completion(body, prompt_tokens, bad), headers)
        self._count(body)

    def _count(self, body: dict) -> None:
        state = self.server.state
        with state.lock:
            state.answered[body_key(body)] += 1
            state.last_answered = time.monotonic()

    def _refuse_top_logprobs(self, body: dict) -> bool:
        limit, asked = self.server.state.config.max_top_logprobs, body.get("top_logprobs")
        if body.get("logprobs") and isinstance(asked, int) and asked > limit:
            self._error(
                400,
                f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= {limit}, but got {asked} "
                "instead.",
                "invalid_request_error",
            )
            return True
        return False

    def _gate(self, tokens: int):
        """Rate limit, latency and injected faults before an answer: False when the request was answered with an
        error (or dropped); else ``(headers, bad)``, with ``headers`` None when the fault is a damaged 200."""
        state, cfg = self.server.state, self.server.state.config
        with state.lock:
            state.received += 1
            roll, fault, bad_roll = state.rng.random(), state.rng.choice(cfg.faults), state.rng.random()
        if cfg.answer_limit is not None and state.admitted >= cfg.answer_limit:
            self.close_connection = True
            self.connection.shutdown(2)
            return False
        admitted, headers, wait = self._admit(tokens)
        if not admitted:
            headers["retry-after-ms"] = f"{wait * 1000:.0f}"
            headers["retry-after"] = f"{max(1, round(wait))}"
            self._error(429, "Rate limit reached for requests.", "rate_limit_exceeded", headers)
            return False
        if cfg.latency_s:
            time.sleep(cfg.latency_s)
        bad = bad_roll < cfg.bad_answer_rate
        if roll >= cfg.fault_rate:
            return headers, bad
        with state.lock:
            state.faults_injected += 1
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
        elif fault == "stall":
            time.sleep(cfg.stall_s)
            self._error(504, "stalled")
        elif fault == "429":
            # a transient 429 (OpenAI sends its rate-limit headers on every response: here, requests left)
            self._error(429, "Injected rate limit.", "rate_limit_exceeded", {**headers, "retry-after-ms": "50"})
        elif fault in ("cut_body", "not_completion", "bad_logprobs"):
            self._damaged = fault
            return None, bad
        else:
            self._error(int(fault), "Injected server error.", "server_error")
        return False

    def _fault_body(self, body: dict, prompt_tokens: int, bad: bool) -> None:
        kind = self._damaged
        if kind == "cut_body":  # a 200 whose JSON a proxy cut short
            whole = json.dumps(self._completion(body, prompt_tokens, False)).encode()
            return self._send(200, whole[: len(whole) // 2])
        if kind == "bad_logprobs" and body.get("logprobs") and self.server.state.logprobs is not None:
            completion = self._completion(body, prompt_tokens, False)
            for choice in completion["choices"]:  # log-probs a broken server or proxy mangled
                for entry in (choice.get("logprobs") or {}).get("content") or []:
                    entry["logprob"] = "-0.5"
            return self._send(200, completion)
        return self._send(200, {"status": "ok"})  # valid JSON that is not a chat completion

    def _prompt_scores(self, body: dict) -> None:
        """Legacy ``/v1/completions`` used to score a prompt: ``echo: true``, ``logprobs: K``, ``max_tokens`` 0 or 1,
        ``prompt`` as token ids (a string is tokenized); only with ``--model_dir``."""
        state = self.server.state
        if state.scorer is None:
            return self._error(404, "this server has no model to score prompts (start it with --model_dir)")
        if not body.get("echo") or body.get("logprobs") is None:
            return self._error(400, "only echo=true with logprobs is supported here", "invalid_request_error")
        if int(body["logprobs"]) > state.config.max_top_logprobs:
            return self._error(
                400, f"Invalid 'logprobs': must be <= {state.config.max_top_logprobs}.", "invalid_request_error"
            )
        prompt = body.get("prompt")
        ids = prompt if isinstance(prompt, list) else state.scorer.vocab.encode(str(prompt))
        if ids and isinstance(ids[0], list):
            return self._error(400, "one prompt per request here", "invalid_request_error")
        fault = self._gate(len(ids))
        if fault is False:
            return
        if fault[0] is None:
            return self._send(200, {"status": "ok"})
        logprobs = state.scorer.prompt_logprobs(
            ids, int(body["logprobs"]), bool(body.get("return_tokens_as_token_ids"))
        )
        completion = {
            "id": f"cmpl-{uuid.uuid4().hex[:12]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "text": "", "logprobs": logprobs, "finish_reason": "length"}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)},
        }
        self._send(200, completion, fault[0])
        self._count(body)

    def _completion(self, body: dict, prompt_tokens: int, bad: bool) -> dict:
        state = self.server.state
        choices = []
        for i in range(int(body.get("n") or 1)):
            text = teacher_answer(body)
            finish = "stop"
            if bad:
                kind = state.rng.choice(["length", "content_filter", "invalid_json"])
                if kind == "invalid_json" and body.get("response_format"):
                    text = text[: len(text) // 2]
                elif kind == "content_filter":
                    text, finish = "", "content_filter"
                else:
                    text, finish = text[: max(1, len(text) // 3)], "length"
            logprobs = None
            if body.get("logprobs") and state.logprobs is not None:
                logprobs = {
                    "content": state.logprobs.content(text, int(body.get("top_logprobs") or 0)),
                    "refusal": None,
                }
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": logprobs,
                }
            )
        completion_tokens = sum(approx_tokens(c["message"]["content"]) for c in choices)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # -- files & batches -------------------------------------------------------------------------------------------
    def _upload(self, raw: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        boundary = re.search(r"boundary=(.+)", ctype)
        if not boundary:
            return self._error(400, "expected multipart/form-data")
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in raw.split(b"--" + boundary.group(1).strip('"').encode())[1:-1]:
            head, _, content = part.strip(b"\r\n").partition(b"\r\n\r\n")
            name = re.search(rb'name="([^"]+)"', head).group(1).decode()
            filename = re.search(rb'filename="([^"]*)"', head)
            fields[name] = (filename.group(1).decode() if filename else None, content)
        filename, content = fields["file"]
        fid = f"file-{uuid.uuid4().hex[:16]}"
        meta = {
            "id": fid,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename or "upload.jsonl",
            "purpose": fields.get("purpose", (None, b"batch"))[1].decode(),
            "status": "processed",
        }
        self.server.state.files[fid] = {**meta, "content": content}
        self._send(200, meta)

    def _create_batch(self, body: dict) -> None:
        state = self.server.state
        src = state.files.get(body.get("input_file_id", ""))
        if src is None:
            return self._error(400, "input_file_id not found")
        bid = f"batch_{uuid.uuid4().hex[:16]}"
        batch = {
            "id": bid,
            "object": "batch",
            "endpoint": body.get("endpoint"),
            "errors": None,
            "input_file_id": src["id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "in_progress_at": None,
            "expires_at": int(time.time()) + 86400,
            "completed_at": None,
            "expired_at": None,
            "failed_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        with state.lock:
            state.batches[bid] = batch
            state.batches_created += 1
        fraction = state.config.batch_complete_fraction  # fixed when the batch is created
        threading.Thread(target=self._run_batch, args=(batch, src["content"], fraction), daemon=True).start()
        self._send(200, batch)

    def _cancel_batch(self, bid: str) -> None:
        batch = self.server.state.batches.get(bid)
        if batch is None:
            return self._error(404, "no batch")
        batch["status"], batch["cancelled_at"] = "cancelled", int(time.time())
        self._send(200, batch)

    def _run_batch(self, batch: dict, content: bytes, fraction: float) -> None:
        state, cfg = self.server.state, self.server.state.config
        lines = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
        batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
        batch["request_counts"]["total"] = len(lines)
        time.sleep(cfg.batch_delay_s)
        n_done = int(round(len(lines) * fraction))
        out, err = [], []
        for line in lines[:n_done]:
            body = line["body"]
            bad = state.rng.random() < cfg.bad_answer_rate
            prompt_tokens = sum(approx_tokens(str(m.get("content", ""))) for m in body.get("messages", []))
            asked, limit = body.get("top_logprobs"), cfg.max_top_logprobs
            refused = body.get("logprobs") and isinstance(asked, int) and asked > limit
            if body.get("model") == "missing-model" or refused:
                status, message = (
                    (400, f"Invalid 'top_logprobs': Expected a value <= {limit}, but got {asked} instead.")
                    if refused
                    else (404, "model not found")
                )
                err.append(
                    {
                        "id": f"batch_req_{uuid.uuid4().hex[:12]}",
                        "custom_id": line["custom_id"],
                        "response": {
                            "status_code": status,
                            "request_id": uuid.uuid4().hex,
                            "body": {"error": {"message": message}},
                        },
                        "error": None,
                    }
                )
                continue
            out.append(
                {
                    "id": f"batch_req_{uuid.uuid4().hex[:12]}",
                    "custom_id": line["custom_id"],
                    "response": {
                        "status_code": 200,
                        "request_id": uuid.uuid4().hex,
                        "body": self._completion(body, prompt_tokens, bad),
                    },
                    "error": None,
                }
            )
            with state.lock:
                state.answered[body_key(body)] += 1
        state.rng.shuffle(out)  # output order is not input order
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                fid = f"file-{uuid.uuid4().hex[:16]}"
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                state.files[fid] = {
                    "id": fid,
                    "object": "file",
                    "bytes": len(data),
                    "created_at": int(time.time()),
                    "filename": f"{batch['id']}_{name}.jsonl",
                    "purpose": "batch_output",
                    "status": "processed",
                    "content": data,
                }
                batch[name] = fid
        batch["request_counts"].update(completed=len(out), failed=len(err))
        if batch["status"] == "cancelled":
            return
        if n_done < len(lines):
            batch["status"], batch["expired_at"] = "expired", int(time.time())
        else:
            batch["status"], batch["completed_at"] = "completed", int(time.time())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # clients may hang up
            super().handle_error(request, client_address)


class FakeOpenAI:
    """Start with :meth:`start` (returns the base URL, e.g. ``http://127.0.0.1:PORT/v1``); stop with :meth:`stop`."""

    def __init__(self, config: ServerConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or ServerConfig()
        self._server = _Server((host, port), _Handler)
        self._server.state = _State(self.config)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def state(self) -> _State:
        return self._server.state

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> str:
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve forever, or — given a command after ``--`` — serve while that command runs, with ``OPENAI_BASE_URL``
    pointing at the server (and a placeholder ``OPENAI_API_KEY`` if none is set), and exit with its exit code.
    The second form is how the demo task's ``make teacher`` runs ``distill_query`` offline."""
    argv = sys.argv[1:] if argv is None else argv
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description="Local OpenAI-compatible server for tests and offline demos.")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free one; the default with a command)")
    parser.add_argument("--latency_s", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute before 429s")
    parser.add_argument("--fault_rate", type=float, default=0.0, help="fraction of requests answered with a fault")
    parser.add_argument("--stall_s", type=float, default=3.0, help="how long a 'stall' fault holds the answer")
    parser.add_argument("--port_file", default=None, help="write the chosen port here once listening")
    parser.add_argument("--tokenizer", default=None, help="checkpoint dir: answers carry log-probs in its vocabulary")
    parser.add_argument("--model_dir", default=None, help="litgpt checkpoint that scores /v1/completions prompts")
    parser.add_argument("--max_top_logprobs", type=int, default=20, help="more alternatives than this: a 400")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    config = ServerConfig(
        latency_s=args.latency_s,
        rpm=args.rpm,
        fault_rate=args.fault_rate,
        stall_s=args.stall_s,
        tokenizer=args.tokenizer,
        model_dir=args.model_dir,
        max_top_logprobs=args.max_top_logprobs,
    )
    server = FakeOpenAI(config, port=0 if command and args.port == 8000 else args.port)
    server.start()
    if args.port_file:
        with open(args.port_file, "w") as fh:
            fh.write(str(server._server.server_address[1]))
    print(f"fake OpenAI API at {server.base_url}", flush=True)
    try:
        if command:
            env = {**os.environ, "OPENAI_BASE_URL": server.base_url}
            env.setdefault("OPENAI_API_KEY", "sk-offline-placeholder")
            return subprocess.run(command, env=env).returncode
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
