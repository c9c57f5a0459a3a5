"""Chosen/rejected batches, shared by DPO and ORPO: one forward over both answers, the LM head on answer tokens only.

A batch of B pairs is 2B rows — the B chosen sequences (prompt + chosen answer), then the B rejected ones — right
padded, so both answers of every pair go through the model in one forward. Only the positions whose next token is
an answer token reach the LM head (:func:`~litgpt_ext.training.objectives.base.answer_logps`); an objective may
add the chosen rows' prompt positions (ORPO's NLL over prompt and response, as TRL computes it). Per-token
log-probabilities are then summed per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from litgpt_ext.data.batches import pair_collate
from litgpt_ext.training.objectives.base import Objective, answer_logps, strip_eos


@dataclass
class PairForward:
    """What one forward over a pair batch gives an objective."""

    token_logps: torch.Tensor
    """``(N,)`` log-probability of the next token at each selected position."""
    mean_logits: torch.Tensor
    """``(N,)`` vocab-mean logit at each selected position (detached)."""
    answer_logps: torch.Tensor
    """``(2B,)`` summed log-probabilities of each row's answer tokens."""
    answer_tokens: torch.Tensor
    """``(2B,)`` answer tokens per row."""
    extra_mean_logits: torch.Tensor | None = None
    """Vocab-mean logits of the ``extra_rows`` (see :func:`~litgpt_ext.training.objectives.base.answer_logps`)."""


def pair_forward(model: nn.Module, batch: dict, extra_rows=None) -> PairForward:
    """Run the model once over the 2B rows of ``batch`` (see :func:`pair_collate`)."""
    head = answer_logps(model, batch["input_ids"][:, :-1], batch["flat"], batch["targets"], extra_rows)
    token_logps = head.token_logps
    rows = batch["input_ids"].size(0)
    summed = token_logps.new_zeros(rows).index_add(0, batch["row"], token_logps * batch["is_answer"])
    return PairForward(token_logps, head.mean_logits, summed, batch["answer_tokens"], head.extra_mean_logits)


def row_means(hidden: torch.Tensor, mask: torch.Tensor, halves: int = 2) -> torch.Tensor:
    """Mean hidden state over the masked positions of each half of the rows: ``(halves, C)``.

    The head is linear, so the head applied to this mean equals the mean of the logits over those positions —
    TRL's ``logits/*`` metrics for every position, from ``halves`` head rows instead of ``T x vocab`` logits."""
    weights = mask.to(hidden.dtype)
    sums = torch.einsum("btc,bt->bc", hidden, weights).reshape(halves, -1, hidden.size(-1)).sum(1)
    counts = weights.reshape(halves, -1).sum(1).clamp(min=1).unsqueeze(1)
    return sums / counts


class PairObjective(Objective):
    """What DPO and ORPO share: the pair batch, token counting, plots, and the chosen answer as the reference text."""

    chosen_prompt = False
    """Whether the chosen rows' prompt positions reach the LM head too."""
    plots = {
        "loss.png": ("loss", ("loss", "val_loss")),
        "rewards.png": ("reward", ("rewards/chosen", "rewards/rejected", "val_rewards/chosen", "val_rewards/rejected")),
        "margins.png": ("reward margin (chosen - rejected)", ("rewards/margins", "val_rewards/margins")),
        "accuracy.png": ("reward accuracy (chosen > rejected)", ("rewards/accuracies", "val_rewards/accuracies")),
    }

    def __init__(self, beta: float = 0.1, pad_id: int = 0) -> None:
        self.beta, self.pad_id = beta, pad_id

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        return pair_collate(samples, self.pad_id, self.chosen_prompt)

    def batch_size(self, batch: dict) -> int:
        return int(batch["pairs"])

    def prompt_and_reference(self, sample: dict, eos_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        return sample["prompt_ids"], strip_eos(sample["chosen_ids"], eos_id)

    def reward_metrics(
        self, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, chosen_logps, rejected_logps
    ) -> dict[str, torch.Tensor]:
        """TRL's names and definitions (means over the pairs of the batch)."""
        return {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": chosen_logps.detach().mean(),
            "logps/rejected": rejected_logps.detach().mean(),
        }
