"""``litgpt-ext serve_batch``: a litgpt checkpoint behind an OpenAI-compatible API, on the toolchain's own engine.

Every stage that talks to a teacher speaks OpenAI's API (``distill_query``, ``distill_convert --logprobs``,
``finetune_kd --teacher_url``); this puts a local model behind the same door, CPU or GPU. The HTTP stack is
Starlette on uvicorn (an ASGI server, as vLLM's): its requests are turned into jobs for one engine loop running in a
thread, which batches continuously across requests and clients. LitServe was the other candidate: its batching
collects requests into a batch and runs it to the end, which is not continuous batching (a long answer holds every
short one), so the engine keeps its own loop and LitServe is only a contender in ``make bench-serve``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from litgpt_ext.checks import at_least, check_checkpoint_dir
from litgpt_ext.errors import UserError


def serve_batch(
    checkpoint_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    api_key_env: str | None = None,
    prompt_style: str = "auto",
    max_batch_size: int = 32,
    precision: str | None = None,
    max_seq_length: int | None = None,
    prefix_cache: bool = True,
    prefix_cache_gb: float = 2.0,
    max_body_mb: float = 16.0,
    shutdown_timeout: float = 30.0,
    pack_weights: bool = True,
) -> None:
    """Serve a checkpoint through OpenAI's API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
    ``/health``, ``/metrics``. Every request joins the running batch (continuous batching across requests); log-probs
    (``logprobs`` / ``top_logprobs``, ``echo`` on completions for a prompt's scores), streaming, ``n``, ``stop``,
    ``seed`` as OpenAI and vLLM define them. SIGTERM (or Ctrl-C) stops taking requests, lets the running ones finish
    (``--shutdown_timeout``), and exits 0.

    Args:
        checkpoint_dir: The litgpt checkpoint to serve.
        host: The address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: The port (0: any free one, printed).
        model_name: The name clients ask for as ``model`` (default: the checkpoint directory's name).
        api_key_env: The environment variable holding the key clients must send as ``Authorization: Bearer KEY``
            (default: no key asked; the key itself never goes on the command line).
        prompt_style: How chat ``messages`` become the prompt: ``auto`` (the checkpoint's prompt_style.yaml, else its
            chat template, else litgpt's style for its name), ``chat_template``, or a litgpt style name.
        max_batch_size: Rows decoded together (requests x their ``n``).
        precision: bf16-true, 16-true or 32-true (default: as generate_batch picks it).
        max_seq_length: The longest prompt + answer served (default: the model's context).
        prefix_cache: Reuse the KV of a prompt's leading tokens that an earlier prompt shares (a system prompt, a
            schema): computed once, not per request.
        prefix_cache_gb: Memory the prefix cache may hold (least recently used blocks go first).
        max_body_mb: Largest request body taken (a larger one is a 413).
        shutdown_timeout: Seconds the running requests get to finish after SIGTERM.
        pack_weights: As generate_batch's (CPU, fp32: decode matmuls with weights packed once).
    """
    checkpoint_dir = Path(checkpoint_dir)
    check_checkpoint_dir(checkpoint_dir)
    at_least("max_batch_size", max_batch_size, 1)
    at_least("max_seq_length", max_seq_length, 2)
    at_least("port", port, 0)
    at_least("prefix_cache_gb", prefix_cache_gb, 0.0)
    at_least("max_body_mb", max_body_mb, 0.001)
    at_least("shutdown_timeout", shutdown_timeout, 0.0)
    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise UserError(f"the environment variable {api_key_env} is not set", field="api_key_env")
    try:
        import uvicorn  # noqa: F401
        from starlette.applications import Starlette  # noqa: F401
    except ImportError:
        raise UserError(
            "needs starlette and uvicorn: pip install 'litgpt-distill[serve]'", field="serve_batch"
        ) from None
    from litgpt_ext.model.support import require_support

    require_support(checkpoint_dir, "generate_batch")
    served = _prepare(checkpoint_dir, model_name or checkpoint_dir.name, api_key, prompt_style, max_batch_size,
                      precision, max_seq_length, prefix_cache, prefix_cache_gb, max_body_mb, pack_weights)  # fmt: skip
    _run(served, host, port, shutdown_timeout)


def _prepare(checkpoint_dir, model_name, api_key, prompt_style, max_batch_size, precision, max_seq_length,
             prefix_cache, prefix_cache_gb, max_body_mb, pack_weights):  # fmt: skip
    import lightning as L
    from litgpt.config import Config
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.chat_template import encode_bos, stop_ids
    from litgpt_ext.data.chat_encode import renderer_for
    from litgpt_ext.data.encode import encode_text
    from litgpt_ext.generate.command import load_generator
    from litgpt_ext.generate.engine import Engine, Settings
    from litgpt_ext.generate.settings import greedy
    from litgpt_ext.kd.token_bytes import ByteVocab
    from litgpt_ext.precision import compute_dtype, default_precision
    from litgpt_ext.prompts import data_style, resolve_prompt_style
    from litgpt_ext.serve.app import Served
    from litgpt_ext.serve.bridge import EngineThread
    from litgpt_ext.serve.protocol import Names

    config = Config.from_file(checkpoint_dir / "model_config.yaml")
    context = min(max_seq_length or config.block_size, config.block_size)
    precision = precision or default_precision(checkpoint_dir, training=False)
    dtype = compute_dtype(precision)
    fabric = L.Fabric(devices=1, precision=precision)
    tokenizer = Tokenizer(checkpoint_dir)
    style = resolve_prompt_style(prompt_style, checkpoint_dir, config, fallback=lambda: data_style("litgpt"))
    model = load_generator(checkpoint_dir, config, fabric, dtype)
    settings = Settings(greedy(16), max_batch_size=max_batch_size, max_seq_length=context, window=4 * max_batch_size,
                        stop_ids=tuple(sorted(stop_ids(style, tokenizer))), pack_weights=pack_weights,
                        prefix_cache=prefix_cache, prefix_cache_bytes=int(prefix_cache_gb * 2**30))  # fmt: skip
    engine = Engine(model, tokenizer, settings, fabric.device, dtype)
    vocab = ByteVocab(checkpoint_dir)
    return Served(
        engine=EngineThread(engine),
        tokenizer=tokenizer,
        renderer=renderer_for(style, tokenizer),
        encode=lambda text: encode_text(tokenizer, text, encode_bos(style)),
        names=Names(vocab),
        model_name=model_name,
        context=context,
        api_key=api_key,
        max_body_bytes=int(max_body_mb * 2**20),
        vocab=engine.vocab,
    )


def _run(served, host: str, port: int, shutdown_timeout: float) -> None:
    import socket

    import uvicorn

    from litgpt_ext.serve.app import create_app

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror})", field="port") from None
    bound = sock.getsockname()[1]
    config = uvicorn.Config(create_app(served), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=shutdown_timeout)  # fmt: skip

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # a stop asked for by a signal is a clean exit (0), not death by it

    server = Server(config)
    print(f"serving {served.model_name} at http://{host}:{bound}/v1 (context {served.context:,} tokens, "
          f"{served.engine.engine.s.max_batch_size} rows at once)", flush=True)  # fmt: skip
    try:
        server.run(sockets=[sock])
    finally:
        served.engine.close(timeout=shutdown_timeout)
        print("stopped", flush=True, file=sys.stderr)
