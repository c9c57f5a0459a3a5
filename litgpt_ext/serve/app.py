"""The HTTP side of ``serve_batch``: OpenAI's routes on Starlette, each request checked
(:mod:`~litgpt_ext.serve.protocol`), turned into a job for the one engine loop (:mod:`~litgpt_ext.serve.bridge`)
and answered whole or streamed as server-sent events, the way the ``openai`` client reads them."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from litgpt_ext.errors import UserError
from litgpt_ext.serve import protocol as api
from litgpt_ext.serve.bridge import EngineThread, Ticket


@dataclass
class Served:
    """What the routes need: the model and how prompts become its tokens."""

    engine: EngineThread
    tokenizer: object
    renderer: object
    """Chat messages -> prompt ids (the checkpoint's chat template or prompt style)."""
    encode: object
    """Completion prompt text -> ids."""
    names: api.Names
    model_name: str
    context: int
    api_key: str | None
    max_body_bytes: int
    vocab: int


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def create_app(served: Served) -> Starlette:
    async def guarded(request: HTTPRequest, handler) -> Response:
        started = time.perf_counter()
        try:
            if served.api_key is not None:
                header = request.headers.get("authorization", "")
                if header != f"Bearer {served.api_key}":
                    raise api.APIError(401, "Incorrect or missing API key (send it as 'Authorization: Bearer ...')",
                                       "authentication_error", code="invalid_api_key")  # fmt: skip
            body = await _read_json(request, served.max_body_bytes)
            return await handler(body, request, started)
        except api.APIError as err:
            served.engine.counters.requests_failed += 1
            _log(request.url.path, "-", err.status, started, err.message)
            return JSONResponse(err.body(), status_code=err.status)
        except ClientGone:
            _log(request.url.path, "-", 499, started, "client went away")
            return Response(status_code=499)
        except Exception as err:  # a bug: a clean 500, no traceback to the client
            served.engine.counters.requests_failed += 1
            _log(request.url.path, "-", 500, started, f"{type(err).__name__}: {err}")
            return JSONResponse(api.APIError(500, f"internal error ({type(err).__name__})", "internal_error").body(),
                                status_code=500)  # fmt: skip

    async def chat(request: HTTPRequest) -> Response:
        return await guarded(request, lambda body, http, t0: _chat(served, body, http, t0))

    async def completions(request: HTTPRequest) -> Response:
        return await guarded(request, lambda body, http, t0: _completion(served, body, http, t0))

    async def models(request: HTTPRequest) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": served.model_name, "object": "model",
                             "created": int(served.engine.counters.started), "owned_by": "litgpt-ext",
                             "max_model_len": served.context}]})  # fmt: skip

    async def health(request: HTTPRequest) -> Response:
        alive = served.engine.thread.is_alive() and served.engine.error is None
        return JSONResponse({"status": "ok" if alive else "engine stopped"}, status_code=200 if alive else 503)

    async def metrics(request: HTTPRequest) -> Response:
        return PlainTextResponse(_metrics(served))

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])  # fmt: skip


async def _read_json(request: HTTPRequest, limit: int) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise api.APIError(413, f"the request body is {int(declared):,} bytes; this server takes at most {limit:,}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise api.APIError(413, f"the request body is over {limit:,} bytes, the most this server takes")
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise api.APIError(400, f"the request body is not JSON ({err})") from None
    if not isinstance(body, dict):
        raise api.APIError(400, "the request body must be a JSON object")
    return body


def _log(path: str, rid: str, status: int, started: float, detail: str) -> None:
    print(f"{path} {rid} {status} {(time.perf_counter() - started) * 1000:.0f} ms {detail}", flush=True)


def _user_error(err: UserError, param: str) -> api.APIError:
    return api.APIError(400, err.reason if err.field is None else f"{err.field}: {err.reason}", param=param)


# -- chat ------------------------------------------------------------------------------------------------------------
async def _chat(served: Served, body: dict, http: HTTPRequest, started: float) -> Response:
    from litgpt_ext.data.chat import parse_turns

    fields = api.common_fields(body, served.model_name, "chat")
    try:
        turns = parse_turns(body.get("messages"), None, None, "messages")
        prompt = served.renderer.prompt_ids(turns)
    except UserError as err:
        raise _user_error(err, "messages") from None
    room = api.check_length(len(prompt), body, served.context, completion=False)
    request = api.Request("chat", fields["id"], fields["model"], prompt, api.sampling_of(body, room, False),
                          fields["n"], fields["seed"], api.chat_logprobs(body), stream=fields["stream"],
                          include_usage=fields["include_usage"])  # fmt: skip
    if request.stream:
        return _sse(served, request, http, started)
    job = await _finished(served, request, http)
    choices = []
    for k in range(request.n):
        logprobs = None
        if request.logprobs is not None:
            tokens, lps = api.covering(served.names, job.token_ids[k], job.token_logprobs[k], job.texts[k])
            logprobs = {"content": api.chat_content_logprobs(served.names, tokens, lps)}
        choices.append({"index": k, "message": {"role": "assistant", "content": job.texts[k]}, "logprobs": logprobs,
                        "finish_reason": job.finish_reasons[k]})  # fmt: skip
    _log("/v1/chat/completions", request.id, 200, started, _sizes(job))
    return JSONResponse({"id": request.id, "object": "chat.completion", "created": request.created,
                         "model": request.model, "choices": choices, "usage": api.usage(job)})  # fmt: skip


def _sizes(job) -> str:
    return f"prompt {len(job.prompt_ids)} tokens, completion {sum(job.generated_tokens)} tokens"


# -- completions -----------------------------------------------------------------------------------------------------
async def _completion(served: Served, body: dict, http: HTTPRequest, started: float) -> Response:
    fields = api.common_fields(body, served.model_name, "completion")
    prompt, text = _prompt(served, body.get("prompt"))
    body = {**body, "max_tokens": body.get("max_tokens", 16)}  # the legacy endpoint's default, as OpenAI's
    room = api.check_length(len(prompt), body, served.context, completion=True)
    as_ids = body.get("return_tokens_as_token_ids", False) is True
    request = api.Request("completion", fields["id"], fields["model"], prompt, api.sampling_of(body, room, True),
                          fields["n"], fields["seed"], api.completion_logprobs(body), echo=bool(body.get("echo")),
                          stream=fields["stream"], include_usage=fields["include_usage"],
                          token_ids_as_names=as_ids)  # fmt: skip
    if request.stream:
        return _sse(served, request, http, started, echo_text=text)
    job = await _finished(served, request, http)
    choices = []
    for k in range(request.n):
        tokens, lps = list(job.token_ids[k]), job.token_logprobs[k]
        logprobs = None
        if request.logprobs is not None:
            tokens, lps = api.covering(served.names, tokens, lps, job.texts[k])
            if request.echo:
                tokens = list(prompt) + tokens
                lps = api.prompt_logprobs(job.prompt_scores, prompt) + list(lps)
            logprobs = api.legacy_logprobs(served.names, tokens, lps, request.token_ids_as_names)
        choices.append({"index": k, "text": (text if request.echo else "") + job.texts[k], "logprobs": logprobs,
                        "finish_reason": job.finish_reasons[k]})  # fmt: skip
    _log("/v1/completions", request.id, 200, started, _sizes(job))
    return JSONResponse({"id": request.id, "object": "text_completion", "created": request.created,
                         "model": request.model, "choices": choices, "usage": api.usage(job)})  # fmt: skip


def _prompt(served: Served, prompt) -> tuple[list[int], str]:
    """A completions ``prompt`` (text, or token ids; a list of one of either) as ids and as text."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise api.APIError(400, "'prompt' is empty", param="prompt")
        return served.encode(prompt), prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        bad = [t for t in prompt if not 0 <= t < served.vocab]
        if bad:
            raise api.APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{served.vocab - 1})",
                               param="prompt")  # fmt: skip
        import torch

        return list(prompt), served.tokenizer.decode(torch.tensor(prompt))
    raise api.APIError(400, "'prompt' must be a string or a list of token ids (one prompt per request)",
                       param="prompt")  # fmt: skip


# -- waiting and streaming -------------------------------------------------------------------------------------------
async def _client_gone(http: HTTPRequest) -> None:
    """Returns when the client disconnects. The request's body has been read, so the next ASGI message is its
    disconnect: one waiting ``receive`` per request, where polling ``is_disconnected`` every 0.25 s woke the event
    loop 256 times a second under 64 clients, each wake-up taking the GIL from the engine's thread."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _finished(served: Served, request: api.Request, http: HTTPRequest):
    ticket = served.engine.submit(request.job(), stream=False)
    gone = asyncio.ensure_future(_client_gone(http))
    try:
        done, _ = await asyncio.wait({ticket.done, gone}, return_when=asyncio.FIRST_COMPLETED)
        if ticket.done in done:
            return ticket.done.result()
        raise ClientGone
    except (ClientGone, asyncio.CancelledError):
        ticket.cancel()
        served.engine.forget(ticket)
        raise
    finally:
        gone.cancel()


def _sse(served: Served, request: api.Request, http: HTTPRequest, started: float, echo_text: str = "") -> Response:
    job = request.job()
    ticket = served.engine.submit(job, stream=True)
    return StreamingResponse(_events(served, request, ticket, started, echo_text), media_type="text/event-stream")


async def _events(served: Served, request: api.Request, ticket: Ticket, started: float, echo_text: str):
    """Server-sent events: a first chunk per choice, a chunk per accepted token (text held back while it could be
    the start of a stop string or a split character), the rest and the finish reason when the job completes."""
    import torch

    chat = request.kind == "chat"
    kind = "chat.completion.chunk" if chat else "text_completion"
    tokens: list[list[int]] = [[] for _ in range(request.n)]
    sent = [""] * request.n
    hold = max((len(s) for s in request.sampling.stops), default=1) - 1

    def chunk(k: int, text: str | None, finish: str | None = None, logprobs=None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": k, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": k, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        body = {"id": request.id, "object": kind, "created": request.created, "model": request.model,
                "choices": [choice]}  # fmt: skip
        return f"data: {json.dumps(body)}\n\n"

    try:
        for k in range(request.n):
            yield chunk(k, echo_text if (not chat and request.echo) else None, first=chat)
        while True:
            event = await ticket.events.get()
            if event is None:
                break
            k, token, lp = event
            tokens[k].append(token)
            text = served.tokenizer.decode(torch.tensor(tokens[k]))
            ready = text[: max(len(sent[k]), len(text) - hold)] if request.sampling.stops else text
            ready = ready.rstrip("\ufffd") if ready.endswith("\ufffd") else ready
            logprobs = None
            if request.logprobs is not None and lp is not None:
                logprobs = ({"content": api.chat_content_logprobs(served.names, [token], [lp])} if chat else
                            api.legacy_logprobs(served.names, [token], [lp], request.token_ids_as_names))  # fmt: skip
            if len(ready) > len(sent[k]) or logprobs is not None:
                yield chunk(k, ready[len(sent[k]) :], logprobs=logprobs)
                sent[k] = max(sent[k], ready, key=len)
        finished = await ticket.done
        for k in range(request.n):
            rest = finished.texts[k][len(sent[k]) :] if finished.texts[k].startswith(sent[k]) else ""
            yield chunk(k, rest, finish=finished.finish_reasons[k])
        if request.include_usage:
            usage = {"id": request.id, "object": kind, "created": request.created, "model": request.model,
                     "choices": [], "usage": api.usage(finished)}  # fmt: skip
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
        _log(f"/v1/{'chat/' if chat else ''}completions", request.id, 200, started, _sizes(finished) + " (stream)")
    finally:
        if not ticket.done.done():  # the client went away (or the server is stopping): free the rows
            ticket.cancel()
            served.engine.forget(ticket)


def _metrics(served: Served) -> str:
    c = served.engine.counters
    stats = served.engine.engine.prefix_stats()  # (its counters, read as the engine thread updates them)
    lines = [
        f"litgpt_ext:requests_total {c.requests}",
        f"litgpt_ext:requests_failed_total {c.requests_failed}",
        f"litgpt_ext:prompt_tokens_total {c.prompt_tokens}",
        f"litgpt_ext:generation_tokens_total {c.generation_tokens}",
        f"litgpt_ext:requests_running {c.running}",
        f"litgpt_ext:requests_waiting {served.engine.queued()}",
    ]
    lines += [f"litgpt_ext:prefix_cache_{key} {value}" for key, value in stats.items()]
    return "\n".join(lines) + "\n"
