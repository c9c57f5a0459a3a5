"""Validation: objective metrics over the validation set, and optional generation scored with BLEU / ROUGE."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from torch import nn

from litgpt_ext.io import atomic_path
from litgpt_ext.training.objectives.base import Objective, unwrap


@torch.no_grad()
def validate(fabric: L.Fabric, model: nn.Module, objective: Objective, loader, max_iters: int) -> dict[str, float]:
    """Mean of the objective's loss and metrics over up to ``max_iters`` validation batches (all ranks)."""
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for k, batch in enumerate(loader):
        if k >= max_iters:
            break
        loss, metrics = objective.compute(model, batch)
        for key, value in {"loss": loss, **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
        count += 1
    model.train()
    means = {}
    for key, total in sums.items():
        value = fabric.all_reduce(torch.as_tensor(total / max(count, 1), device=fabric.device), reduce_op="mean")
        means[f"val_{key}"] = float(value)
    means.update(objective.derived_val_metrics(means))
    return means


def split_prompt_reference(sample: dict, ignore_index: int, eos_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt = tokens before the first supervised label; reference = the supervised tokens without EOS."""
    supervised = (sample["labels"] != ignore_index).nonzero()
    start = int(supervised[0]) if len(supervised) else len(sample["input_ids"])
    reference = sample["input_ids"][start:]
    if eos_id is not None and len(reference) and int(reference[-1]) == eos_id:
        reference = reference[:-1]
    return sample["input_ids"][:start], reference


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
    generated = out[len(prompt) :]
    if eos_id is not None and len(generated) and int(generated[-1]) == eos_id:
        generated = generated[:-1]
    return generated


def generation_eval(
    fabric: L.Fabric,
    model: nn.Module,
    samples: list[dict],
    tokenizer,
    max_new_tokens: int,
    out_file: Path,
    text_metrics: bool,
    ignore_index: int = -100,
) -> dict[str, float]:
    """Generate answers for ``samples`` (rank 0), write them (and BLEU/ROUGE per sample) to ``out_file`` CSV."""
    rows = []
    for i, sample in enumerate(samples):
        prompt, reference = split_prompt_reference(sample, ignore_index, tokenizer.eos_id)
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
        from torchmetrics.text import BLEUScore
        from torchmetrics.text.rouge import ROUGEScore

        bleu, rouge = BLEUScore(smooth=True), ROUGEScore(rouge_keys=("rouge1", "rougeL"))
        for row in rows:
            row["bleu"] = float(bleu([row["generated"]], [[row["reference"]]]))
            scores = rouge(row["generated"], row["reference"])
            row["rouge1"] = float(scores["rouge1_fmeasure"])
            row["rougeL"] = float(scores["rougeL_fmeasure"])
        for key in ("bleu", "rouge1", "rougeL"):
            means[f"val_{key}"] = sum(r[key] for r in rows) / len(rows)
    with atomic_path(out_file) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["index"])
        writer.writeheader()
        writer.writerows(rows)
    return means
