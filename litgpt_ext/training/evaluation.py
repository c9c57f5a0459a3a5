"""Validation: objective metrics over the validation set, and optional generation scored with BLEU / ROUGE."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from torch import nn

from litgpt_ext.io import atomic_path
from litgpt_ext.model.heads import unwrap
from litgpt_ext.training.objectives.base import Objective, strip_eos
from litgpt_ext.training.ranks import compute_on_every_rank


@torch.no_grad()
def validate(
    fabric: L.Fabric, model: nn.Module, objective: Objective, loader, max_iters: int, step: int = 0
) -> dict[str, float]:
    """The objective's loss and metrics over up to ``max_iters`` validation batches (all ranks), each batch weighted
    by its number of samples, so a short last batch counts for what it holds. Objectives whose metrics need every
    row at once (AUROC) return per-row outputs instead; those are gathered from all ranks and summarized."""
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, list[torch.Tensor]] = {}
    weight = torch.zeros((), device=fabric.device)
    for k, batch in enumerate(loader):
        if k >= max_iters:
            break
        outputs = objective.val_outputs(model, batch)
        if outputs is not None:
            for key, value in outputs.items():
                rows.setdefault(key, []).append(value.detach())
            continue
        loss, metrics = compute_on_every_rank(fabric, objective, model, batch)
        n = objective.batch_size(batch)
        for key, value in {"loss": loss, **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float() * n
        weight += n
    model.train()
    if rows:
        gathered = {key: gather_rows(fabric, torch.cat(values)) for key, values in rows.items()}
        return objective.summarize_val(gathered, step)
    total = fabric.all_reduce(weight, reduce_op="sum").clamp(min=1)
    means = {f"val_{key}": float(fabric.all_reduce(value, reduce_op="sum") / total) for key, value in sums.items()}
    means.update(objective.derived_val_metrics(means))
    return means


def gather_rows(fabric: L.Fabric, values: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor over ranks (ranks may hold different numbers of rows)."""
    if fabric.world_size == 1:
        return values.cpu()
    count = fabric.all_gather(torch.tensor(len(values), device=fabric.device))
    longest = int(count.max())
    padded = torch.zeros(longest, dtype=values.dtype, device=fabric.device)
    padded[: len(values)] = values
    every = fabric.all_gather(padded)
    return torch.cat([every[r, : int(count[r])] for r in range(fabric.world_size)]).cpu()


@torch.no_grad()
def greedy_generate(model: nn.Module, prompt: torch.Tensor, max_new_tokens: int, eos_id: int | None) -> torch.Tensor:
    """One prompt, greedy, with litgpt's KV-cache generation; restores the model's training state afterwards."""
    from litgpt.generate.base import generate

    gpt = unwrap(model)
    was_training, old_max = gpt.training, gpt.max_seq_length
    total = min(len(prompt) + max_new_tokens, gpt.config.block_size)
    gpt.eval()
    gpt.max_seq_length = total
    gpt.set_kv_cache(batch_size=1, device=prompt.device)
    try:
        out = generate(gpt, prompt, max_returned_tokens=total, temperature=0.0, top_k=1, eos_id=eos_id)
    finally:
        gpt.clear_kv_cache()
        gpt.max_seq_length = old_max
        gpt.train(was_training)
    return strip_eos(out[len(prompt) :], eos_id)


def generation_eval(
    fabric: L.Fabric,
    model: nn.Module,
    samples: list[tuple[torch.Tensor, torch.Tensor]],
    tokenizer,
    max_new_tokens: int,
    out_file: Path,
    text_metrics: bool,
) -> dict[str, float]:
    """Generate answers for ``(prompt ids, reference ids)`` samples (rank 0), write them (and BLEU/ROUGE per sample)
    to ``out_file`` CSV."""
    rows = []
    for i, (prompt, reference) in enumerate(samples):
        generated = greedy_generate(model, prompt.to(fabric.device), max_new_tokens, tokenizer.eos_id)
        rows.append(
            {
                "index": i,
                "prompt": tokenizer.decode(prompt),
                "reference": tokenizer.decode(reference).strip(),
                "generated": tokenizer.decode(generated).strip(),
            }
        )
    means: dict[str, float] = {}
    if text_metrics and rows:
        from litgpt_ext.evaluate.metrics import rouge, sentence_bleu  # evaluate_generations' definitions

        for row in rows:
            row["bleu"] = sentence_bleu(row["generated"], [row["reference"]])
            scores = rouge(row["generated"], [row["reference"]])
            row["rouge1"], row["rougeL"] = scores["rouge1"], scores["rougeL"]
        for key in ("bleu", "rouge1", "rougeL"):
            means[f"val_{key}"] = sum(r[key] for r in rows) / len(rows)
    with atomic_path(out_file) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["index"])
        writer.writeheader()
        writer.writerows(rows)
    return means
