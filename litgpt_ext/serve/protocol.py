"""OpenAI's request and response shapes, as vLLM's OpenAI-compatible server speaks them: a request body checked and
turned into a :class:`Request` (what the engine is asked), the engine's finished job turned into a body, and errors
in OpenAI's ``{"error": {...}}`` shape with the status a client expects.

Nothing here knows HTTP or threads: :mod:`litgpt_ext.serve.app` calls it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from litgpt_ext.generate.jobs import Job, PromptScores, TokenLogprobs
from litgpt_ext.generate.settings import Sampling

MAX_TOP_LOGPROBS = 20
"""Alternatives per position a request may ask for (OpenAI's and vLLM's default limit)."""
MAX_N = 16
"""Choices per request."""
MAX_STOPS = 4
"""Stop strings per request (OpenAI's limit)."""


class APIError(Exception):
    """A request the server refuses: the status and OpenAI's error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _number(body: dict, name: str, default, kind: type | tuple, low=None, high=None, low_open: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, kind):
        raise APIError(400, f"'{name}' must be a number, got {value!r}", param=name)
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
        raise APIError(400, f"'{name}' must be in {bounds}, got {value}", param=name)
    return value


@dataclass
class Request:
    """One request as the engine takes it, and what the response needs to say."""

    kind: str
    """``chat`` or ``completion``."""
    id: str
    model: str
    prompt_ids: list[int]
    sampling: Sampling
    n: int
    seed: int | None
    logprobs: int | None
    """Alternatives per generated token (None: no log-probs)."""
    echo: bool = False
    """Completions: the prompt's tokens (and, with ``logprobs``, their scores) come first."""
    stream: bool = False
    include_usage: bool = False
    token_ids_as_names: bool = False
    """vLLM's ``return_tokens_as_token_ids``: tokens named ``token_id:N``, so nothing is re-tokenized."""
    created: int = field(default_factory=lambda: int(time.time()))

    def job(self) -> Job:
        prompt_logprobs = self.logprobs if self.echo and self.logprobs is not None else None
        return Job(self.id, 0, self.prompt_ids, self.n, self.sampling.max_new_tokens, sampling=self.sampling,
                   seed=self.seed, stream_name="" if self.seed is not None else None, logprobs=self.logprobs,
                   prompt_logprobs=prompt_logprobs)  # fmt: skip


def sampling_of(body: dict, room: int, completion: bool) -> Sampling:
    """The request's :class:`Sampling`; ``room`` is what the context leaves after the prompt (the default and the
    bound of ``max_tokens``)."""
    names = ("max_completion_tokens", "max_tokens") if not completion else ("max_tokens",)
    asked = next((body[n] for n in names if body.get(n) is not None), None)
    param = next((n for n in names if body.get(n) is not None), "max_tokens")
    if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int) or asked < 1):
        raise APIError(400, f"'{param}' must be an integer >= 1, got {asked!r}", param=param)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, "'stop' must be a string or a list of non-empty strings", param="stop")
    if stop is not None and len(stop) > MAX_STOPS:
        raise APIError(400, f"'stop' takes at most {MAX_STOPS} sequences, got {len(stop)}", param="stop")
    top_k = _number(body, "top_k", -1, int)  # vLLM's extension: -1 (or 0) is off
    return Sampling(
        max_new_tokens=min(asked, room) if asked is not None else room,
        min_new_tokens=_number(body, "min_tokens", 0, int, 0),
        temperature=float(_number(body, "temperature", 1.0, (int, float), 0.0, 2.0)),
        top_k=top_k if top_k > 0 else None,
        top_p=float(_number(body, "top_p", 1.0, (int, float), 0.0, 1.0, low_open=True)),
        repetition_penalty=float(_number(body, "repetition_penalty", 1.0, (int, float), 0.0, low_open=True)),
        stop=stop or None,
    )


def check_length(prompt_tokens: int, body: dict, context: int, completion: bool) -> int:
    """The room the context leaves after the prompt; a prompt (plus the tokens asked for) longer than the context
    is a 400 naming both lengths, as vLLM says it."""
    names = ("max_tokens",) if completion else ("max_completion_tokens", "max_tokens")
    asked = next((body[n] for n in names if isinstance(body.get(n), int) and not isinstance(body.get(n), bool)), 0)
    if prompt_tokens + max(asked, 1) > context:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max(asked, 1)} tokens ({prompt_tokens} in the {'prompt' if completion else 'messages'}, "
            f"{max(asked, 1)} in the completion). Please reduce the length of the "
            f"{'prompt' if completion else 'messages'} or completion.",
            param="max_tokens" if asked else ("prompt" if completion else "messages"),
            code="context_length_exceeded",
        )
    return context - prompt_tokens


def common_fields(body: dict, served: str, kind: str) -> dict:
    """The fields every request has: the model (404 when it is not the one served), ``n``, ``seed``, ``stream``."""
    model = body.get("model")
    if not isinstance(model, str):
        raise APIError(400, "'model' is required", param="model")
    if model != served:
        raise APIError(404, f"The model `{model}` does not exist.", "invalid_request_error", "model",
                       "model_not_found")  # fmt: skip
    n = _number(body, "n", 1, int, 1, MAX_N)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"'seed' must be an integer, got {seed!r}", param="seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "model": model, "n": n, "seed": seed, "stream": stream,
            "include_usage": bool(isinstance(options, dict) and options.get("include_usage"))}  # fmt: skip


def chat_logprobs(body: dict) -> int | None:
    wanted = body.get("logprobs", False)
    if not isinstance(wanted, bool):
        raise APIError(400, "'logprobs' must be a boolean", param="logprobs")
    top = _number(body, "top_logprobs", None, int, 0, MAX_TOP_LOGPROBS)
    if top is not None and not wanted:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if wanted else None


def completion_logprobs(body: dict) -> int | None:
    return _number(body, "logprobs", None, int, 0, MAX_TOP_LOGPROBS)


# -- responses -------------------------------------------------------------------------------------------------------
class Names:
    """Token ids as an API names them: their text and bytes (a special token by its name), or ``token_id:N``."""

    def __init__(self, vocab) -> None:
        self.vocab = vocab
        self.special = {i: name for name, i in vocab.special.items()}

    def text(self, i: int, as_ids: bool = False) -> str:
        if as_ids:
            return f"token_id:{i}"
        return self.special[i] if i in self.special else self.vocab.token_text(i)

    def raw(self, i: int) -> list[int]:
        raw = self.vocab.bytes[i] if i < len(self.vocab.bytes) else None
        return list(raw if raw is not None else self.special.get(i, "").encode("utf-8"))

    def entry(self, i: int, logprob: float) -> dict:
        return {"token": self.text(i), "logprob": logprob, "bytes": self.raw(i)}


def covering(names: Names, tokens: list[int], logprobs: list, text: str) -> tuple[list[int], list]:
    """The generated tokens that make up ``text`` (the answer as returned: a stop string may have cut it, inside its
    last token perhaps), with their log-probs: the rest were generated but are not in the answer."""
    target, got, n = len(text.encode("utf-8")), 0, 0
    while n < len(tokens) and got < target:
        got += len(names.raw(tokens[n]))
        n += 1
    return tokens[:n], logprobs[:n]


def chat_content_logprobs(names: Names, tokens: list[int], logprobs: list[TokenLogprobs]) -> list[dict]:
    return [{**names.entry(t, lp.logprob), "top_logprobs": [names.entry(i, v) for i, v in lp.top]}
            for t, lp in zip(tokens, logprobs, strict=True)]  # fmt: skip


def legacy_logprobs(names: Names, tokens: list[int], logprobs: list, as_ids: bool, offset: int = 0) -> dict:
    """The completions' ``logprobs`` object (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``) for
    ``tokens``; an entry of ``logprobs`` may be None (a prompt's first token)."""
    texts = [names.text(t, as_ids) for t in tokens]
    out = {"tokens": texts, "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for text, lp in zip(texts, logprobs, strict=True):
        out["token_logprobs"].append(None if lp is None else lp.logprob)
        out["top_logprobs"].append(None if lp is None else {names.text(i, as_ids): v for i, v in lp.top})
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def prompt_logprobs(scores: PromptScores, prompt: list[int]) -> list[TokenLogprobs | None]:
    """The prompt's scores as one entry per prompt token (None for the first, which nothing predicts)."""
    return [None] + [TokenLogprobs(lp, top) for lp, top in zip(scores.token_logprobs, scores.top, strict=True)]


def usage(job: Job) -> dict:
    completion = sum(job.generated_tokens)
    return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": completion,
            "total_tokens": len(job.prompt_ids) + completion}  # fmt: skip
