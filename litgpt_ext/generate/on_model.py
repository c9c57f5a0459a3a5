"""Sampling from a model that is being trained, with ``generate_batch``'s continuous-batching engine.

On-policy distillation samples the batch's answers from the *current* student (LoRA layers included) between two
optimizer steps. The engine installs slot KV caches, a last-position LM head and the decode forwards on the model and
takes them off again when it closes (:mod:`litgpt_ext.model.patches`); :func:`engine_on` also restores train/eval
mode, so the next training forward is the one it would have been.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from litgpt_ext.generate.engine import Engine, Job, Settings
from litgpt_ext.generate.settings import Sampling
from litgpt_ext.model.heads import unwrap

ON_POLICY = Sampling(temperature=1.0, top_k=None, max_new_tokens=64)
"""How a student's (or teacher's) answers are sampled for training on them, unless ``--gen.*`` says otherwise: from
the whole distribution at temperature 1, as GKD samples; an answer cut at ``max_new_tokens`` has no EOS and is
trained on as it is."""


@contextlib.contextmanager
def engine_on(model: nn.Module, tokenizer, settings: Settings) -> Iterator[Engine]:
    """An :class:`Engine` on ``model`` for the duration of the block, in eval mode; the engine's :meth:`~Engine.close`
    takes off all it installed (the training forwards it replaced come back) and the train/eval mode is restored.
    Enter the run's autocast first: the caches are made in the dtype it computes in."""
    gpt = unwrap(model)
    was_training = gpt.training
    parameter = next(gpt.parameters())
    device = parameter.device
    # the KV caches hold what the attention computes: under autocast (a -mixed run) the half type, not the weights'
    autocast = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if autocast else parameter.dtype
    gpt.eval()
    try:
        with Engine(gpt, tokenizer, settings, device, dtype) as engine:
            yield engine
    finally:
        gpt.train(was_training)


def sample_answers(
    model: nn.Module,
    tokenizer,
    prompts: list[list[int]],
    gen: Sampling,
    seed: int,
    context: int,
    autocast=None,
    keys: list[str] | None = None,
) -> list[tuple[list[int], str]]:
    """One sampled answer per prompt, ``(ids without EOS, finish reason)``, in prompt order. Each row draws its own
    random stream from ``seed`` and its key (default: its index), so a row's sample depends on its prompt, key and
    the weights — not on which other rows share the call."""
    longest = max(len(p) for p in prompts)
    settings = Settings(
        sampling=gen, max_batch_size=len(prompts), max_seq_length=min(context, longest + gen.max_new_tokens), seed=seed
    )
    keys = keys or [str(i) for i in range(len(prompts))]
    jobs = [Job(key, i, list(p), 1, gen.max_new_tokens) for i, (key, p) in enumerate(zip(keys, prompts, strict=True))]
    done: dict[str, Job] = {}
    with autocast or contextlib.nullcontext(), engine_on(model, tokenizer, settings) as engine, torch.no_grad():
        engine.run(jobs, lambda job: done.__setitem__(job.id, job))
    return [(done[key].token_ids[0] or [], done[key].finish_reasons[0]) for key in keys]
