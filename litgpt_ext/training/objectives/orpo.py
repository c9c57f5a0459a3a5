"""Odds Ratio Preference Optimization (Hong et al., 2024, https://arxiv.org/abs/2403.07691): reference-free.

With length-averaged answer log-probs ``l_c = log P(y_c|x) / |y_c|`` and ``l_r`` (eqs. 4 and 7 in log form)::

    log_odds = (l_c - l_r) - (log(1 - e^{l_c}) - log(1 - e^{l_r}))
    L = NLL(y_c) - β · mean(log σ(log_odds))

``nll_on``: ``prompt_and_response`` computes the NLL over every token of the chosen sequence, as TRL's
``ORPOTrainer`` does; ``response`` over the chosen answer only, as the paper writes it. ``log(1 - e^x)`` is computed
the numerically stable way (``log1mexp``, branching at -ln 2), as TRL does.

Metrics follow TRL: ``rewards/chosen = β l_c`` (mean over the pairs), ``rewards/rejected``, ``rewards/accuracies``,
``rewards/margins``, ``logps/*`` (the length-averaged log-probs), ``logits/*`` (the mean logit over every position
of the chosen / rejected rows but the last — TRL's definition without its padding positions, computed from the
mean hidden state, see :func:`~litgpt_ext.training.objectives.pairs.row_means`), ``nll_loss``, ``log_odds_ratio``
(mean log σ(log_odds)) and ``log_odds_chosen`` (mean log_odds).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from litgpt_ext.training.objectives.pairs import PairObjective, pair_forward, row_means

NllOn = Literal["prompt_and_response", "response"]


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0`` without cancellation."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def odds_ratio(chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor) -> torch.Tensor:
    """ORPO's log odds ratio of the chosen over the rejected answer, per pair."""
    c, r = chosen_mean_logps.float(), rejected_mean_logps.float()
    return (c - r) - (log1mexp(c) - log1mexp(r))


class ORPOObjective(PairObjective):
    name = "orpo"

    def __init__(self, beta: float = 0.1, nll_on: NllOn = "prompt_and_response", pad_id: int = 0) -> None:
        super().__init__(beta, pad_id)
        self.nll_on = nll_on
        self.chosen_prompt = nll_on == "prompt_and_response"

    def config(self) -> dict:
        return {"beta": self.beta, "nll_on": self.nll_on, "reference": None}

    def compute(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = int(batch["pairs"])
        out = pair_forward(model, batch, extra_rows=lambda hidden: row_means(hidden, batch["context"]))
        mean_logps = out.answer_logps / out.answer_tokens.clamp(min=1)
        chosen, rejected = mean_logps[:n], mean_logps[n:]
        log_odds = odds_ratio(chosen, rejected)
        ratio = F.logsigmoid(log_odds)
        nll_positions = batch["row"] < n
        if self.nll_on == "response":
            nll_positions = nll_positions & batch["is_answer"]
        nll = -(out.token_logps * nll_positions).sum() / nll_positions.sum().clamp(min=1)
        loss = nll - self.beta * ratio.mean()
        with torch.no_grad():
            metrics = self.reward_metrics(self.beta * chosen.detach(), self.beta * rejected.detach(), chosen, rejected)
            mean_logits = out.extra_mean_logits
            metrics["logits/chosen"], metrics["logits/rejected"] = mean_logits[0], mean_logits[1]
            metrics["nll_loss"] = nll.detach()
            metrics["log_odds_ratio"] = ratio.detach().mean()
            metrics["log_odds_chosen"] = log_odds.detach().mean()
        return loss, metrics
