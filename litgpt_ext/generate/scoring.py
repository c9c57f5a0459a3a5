"""Teacher-forced scores of whole prompts (``/v1/completions`` with ``echo`` + ``logprobs``: how a teacher server is
asked to score a student's sequence), computed by the engine between its decode steps on the model it holds.

One forward over right-padded prompts gives the final hidden state at every real position; the LM head then runs
over those rows in blocks (:func:`~litgpt_ext.model.blockwise_head.block_rows`), each block's log-softmax reduced to
the prompt's own next token and the ``k`` most likely ones before the next block is computed, so no
``positions × vocabulary`` tensor exists. The last position's logits (what follows the prompt) are kept: a request
for one new token is answered from them without a second prefill.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from litgpt_ext.generate.jobs import Job, PromptScores
from litgpt_ext.model.blockwise_head import block_rows
from litgpt_ext.model.heads import on_positions


@torch.inference_mode()
def score_prompts(
    model, head, prompts: list[list[int]], top_k: int, vocab: int, padded_vocab: int, device
) -> tuple[list, torch.Tensor]:
    """(:class:`PromptScores` of each prompt with ``top_k`` alternatives per position among the first ``vocab`` ids,
    the ``(n, padded vocab)`` float logits at each prompt's last position). ``head`` maps hidden rows to logits as
    the model's own forward would (softcapping included)."""
    width = max(len(p) for p in prompts)
    idx = torch.zeros((len(prompts), width), dtype=torch.long)
    flat: list[int] = []
    for b, prompt in enumerate(prompts):
        idx[b, : len(prompt)] = torch.tensor(prompt)
        flat.extend(range(b * width, b * width + len(prompt)))
    rows = on_positions(model, idx.to(device), torch.tensor(flat, device=device), lambda hidden: hidden)
    targets = torch.tensor([t for p in prompts for t in [*p[1:], 0]], device=device)
    step = block_rows(padded_vocab, rows.device)
    token_logps, top_v, top_i, last = [], [], [], []
    ends = {sum(len(p) for p in prompts[: b + 1]) - 1 for b in range(len(prompts))}
    for start in range(0, rows.size(0), step):
        logits = head(rows[start : start + step]).float()
        logps = torch.log_softmax(logits, dim=-1)
        token_logps.append(logps.gather(1, targets[start : start + step, None]).squeeze(1))
        if top_k:
            values, ids = logps[:, :vocab].topk(min(top_k, vocab), dim=-1)
            top_v.append(values)
            top_i.append(ids)
        last.extend(logits[i - start] for i in range(start, start + logits.size(0)) if i in ends)
    token_logps = torch.cat(token_logps).tolist()
    values = torch.cat(top_v).tolist() if top_k else None
    ids = torch.cat(top_i).tolist() if top_k else None
    scores, offset = [], 0
    for prompt in prompts:
        span = range(offset, offset + len(prompt) - 1)  # position t scores token t + 1
        top = [list(zip(ids[i], values[i], strict=True)) for i in span] if top_k else [[] for _ in span]
        scores.append(PromptScores([token_logps[i] for i in span], top))
        offset += len(prompt)
    return scores, torch.stack(last)


def answer_scored(engine, jobs: list[Job], emit: Callable[[Job], None]) -> None:
    """Score ``jobs``' prompts together on ``engine``'s model; a job that wants no more than one new token gets it
    from the same forward's last position (sampled as the engine samples) and is emitted, the others go on to be
    generated as any job."""
    from litgpt_ext.model.heads import SoftcappedHead

    head, cap = engine.head.head, engine.model.config.final_logit_softcapping
    head = head if cap is None else SoftcappedHead(head, cap)
    k = max(job.prompt_logprobs for job in jobs)
    scores, last = score_prompts(engine.model, head, [job.prompt_ids for job in jobs], k, engine.vocab,
                                 engine.model.config.padded_vocab_size, engine.device)  # fmt: skip
    for job, score, logits in zip(jobs, scores, last, strict=True):
        job.prompt_scores = score
        if job.max_new_tokens > 1:
            continue
        rows = engine.rows_of(job)
        logits = logits.expand(len(rows), -1)
        keys, min_new = engine.to_device([[r.key for r in rows], [r.sampling.min_new_tokens for r in rows]])
        tokens = engine.draw(logits, rows, keys, torch.zeros_like(keys), min_new)
        logprobs = engine.token_logprobs(logits, rows, tokens) or [None] * len(rows)
        for row, token, lp in zip(rows, engine.to_host(tokens), logprobs, strict=True):
            done = engine.complete(row, engine.accept(row, token, lp) or "length")
            if done is not None:
                emit(done)
