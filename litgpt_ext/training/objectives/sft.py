"""Supervised finetuning: next-token cross-entropy on answer tokens only.

``loss = mean_{t : label_t != ignore} -log p(label_t | tokens_<t)`` — prompt and padding positions carry
``ignore_index`` labels and never reach the LM head (see :func:`answer_logps`), so padding is never trained as EOS.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from litgpt_ext.data.batches import pad_collate
from litgpt_ext.training.objectives.base import Objective, answer_logps


def answer_cross_entropy(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions in ``batch["answer_index"]`` (see :func:`pad_collate`)."""
    index = batch["answer_index"]
    targets = batch["labels"][:, 1:].reshape(-1).index_select(0, index)
    return -answer_logps(model, batch["input_ids"][:, :-1], index, targets).token_logps.mean()


class SFTObjective(Objective):
    """Answer-only next-token prediction (LoRA or full finetuning; the loop decides which weights train)."""

    name = "sft"

    def __init__(self, pad_id: int = 0, ignore_index: int = -100, max_seq_length: int | None = None) -> None:
        self.pad_id, self.ignore_index, self.max_seq_length = pad_id, ignore_index, max_seq_length

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        return pad_collate(samples, self.pad_id, self.ignore_index, self.max_seq_length)

    def compute(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = answer_cross_entropy(model, batch)
        return loss, {}

    def derived_val_metrics(self, means: dict[str, float]) -> dict[str, float]:
        return {"val_ppl": math.exp(min(means["val_loss"], 50.0))}
