"""Direct Preference Optimization (Rafailov et al., 2023, https://arxiv.org/abs/2305.18290) and its variants.

With the summed answer log-probs of the policy ``π`` and the reference ``π_ref``::

    Δ = (log π(y_c|x) - log π_ref(y_c|x)) - (log π(y_r|x) - log π_ref(y_r|x))

* ``sigmoid`` (DPO, eq. 7) with conservative-DPO label smoothing ε (Mitchell, 2023):
  ``L = -(1 - ε) log σ(β Δ) - ε log σ(-β Δ)``;
* ``hinge`` (SLiC-HF, Zhao et al., 2023): ``L = max(0, 1 - β Δ)``;
* ``ipo`` (Azar et al., 2023, eq. 17), with the log-ratios averaged per answer token as TRL does:
  ``L = (Δ̄ - 1 / (2β))²``;
* ``rpo_alpha`` α adds the NLL of the chosen answer (RPO, Pang et al., 2024): ``L + α · NLL(y_c)``.

Metrics follow TRL's ``DPOTrainer``: ``rewards/chosen = β (log π(y_c|x) - log π_ref(y_c|x))`` (mean over the pairs),
``rewards/rejected``, ``rewards/accuracies`` (chosen reward > rejected reward), ``rewards/margins``, ``logps/*``
(summed answer log-probs), ``logits/*`` (mean logit over the answer tokens) and ``nll_loss`` (mean NLL over the
chosen answer tokens). Where the reference log-probs come from is :mod:`litgpt_ext.training.reference`'s job.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from litgpt_ext.training.objectives.pairs import PairObjective, pair_forward

LossType = Literal["sigmoid", "ipo", "hinge"]


def dpo_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    loss_type: LossType = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair losses from the policy-minus-reference log-ratios (see the module docstring for the formulas)."""
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":
        mean_delta = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / rejected_tokens.clamp(min=1)
        return (mean_delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown loss_type {loss_type!r}")


class DPOObjective(PairObjective):
    name = "dpo"

    def __init__(
        self,
        reference,
        beta: float = 0.1,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        rpo_alpha: float = 0.0,
        pad_id: int = 0,
    ) -> None:
        super().__init__(beta, pad_id)
        self.reference = reference
        """A :class:`~litgpt_ext.training.reference.Reference`: gives the reference log-probs of a batch."""
        self.loss_type, self.label_smoothing, self.rpo_alpha = loss_type, label_smoothing, rpo_alpha

    def setup(self, fabric, model, train_data, val_data, out_dir) -> None:
        self.reference.setup(fabric, model, {"train": train_data, "val": val_data}, self.collate, out_dir)

    def config(self) -> dict:
        return {
            "beta": self.beta,
            "loss_type": self.loss_type,
            "label_smoothing": self.label_smoothing,
            "rpo_alpha": self.rpo_alpha,
            "reference": self.reference.describe(),
        }

    def compute(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = int(batch["pairs"])
        out = pair_forward(model, batch)
        ref = self.reference.logps(model, batch)
        logps, tokens = out.answer_logps, out.answer_tokens
        chosen_ratio, rejected_ratio = logps[:n] - ref[:, 0], logps[n:] - ref[:, 1]
        losses = dpo_losses(
            chosen_ratio, rejected_ratio, self.beta, self.loss_type, self.label_smoothing, tokens[:n], tokens[n:]
        )
        chosen_answer = batch["is_answer"] & (batch["row"] < n)
        nll = -(out.token_logps * chosen_answer).sum() / chosen_answer.sum().clamp(min=1)
        loss = losses.mean() + (self.rpo_alpha * nll if self.rpo_alpha else 0.0)
        with torch.no_grad():
            mean_logits = out.mean_logits
            rejected_answer = batch["is_answer"] & (batch["row"] >= n)
            metrics = self.reward_metrics(
                self.beta * chosen_ratio.detach(), self.beta * rejected_ratio.detach(), logps[:n], logps[n:]
            )
            metrics["logits/chosen"] = (mean_logits * chosen_answer).sum() / chosen_answer.sum().clamp(min=1)
            metrics["logits/rejected"] = (mean_logits * rejected_answer).sum() / rejected_answer.sum().clamp(min=1)
            metrics["nll_loss"] = nll.detach()
        return loss, metrics
