"""Process reward models: a score in [0, 1] for every step of a candidate — "is the solution still right here?".

The ORM's heads (:mod:`litgpt_ext.training.objectives.orm`), applied at every step-end position instead of the last
token only (one forward; only those positions reach a head, and the LM head runs only there for ``yes_token``):

* ``yes_token`` / ``classifier``: two logits per step, ``loss = CE([l_neg, l_pos], y)`` with the label as the target
  probability of class 1 (a hard label is ordinary CE; a Monte-Carlo fraction is a soft target);
* ``scalar``: one logit per step, ``loss = BCE(sigmoid(s), y)``.

The loss is the mean over every step of the batch, each weighted by its class (``pos_weight``; ``auto`` =
negative steps / positive steps of the training rows): ``sum(w_i * l_i) / sum(w_i)``. Checkpoints hold the same
files as an ORM's (``orm_head.pth`` + ``orm_config.json``, which says ``"reward": "process"`` and the separator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from litgpt_ext.data.batches import prm_collate
from litgpt_ext.model.heads import on_positions, output_head, unwrap
from litgpt_ext.training.objectives.orm import ORMObjective, scores_from_logits


def step_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-step losses: soft-target CE for two logits, BCE-with-logits for one; ``labels`` are floats in [0, 1]."""
    logits, labels = logits.float(), labels.float()
    if logits.size(-1) == 2:
        logp = torch.log_softmax(logits, dim=-1)
        return -(labels * logp[:, 1] + (1 - labels) * logp[:, 0])
    return F.binary_cross_entropy_with_logits(logits[:, 0], labels, reduction="none")


class PRMObjective(ORMObjective):
    name = "prm"
    monitor = "val_step_auroc"
    monitor_mode = "max"
    plots = {
        "loss.png": ("loss", ("loss", "val_loss")),
        "auroc.png": ("AUROC / accuracy", ("val_step_auroc", "val_outcome_auroc", "val_first_error_accuracy")),
    }

    def __init__(self, head="classifier", pos_weight=1.0, yes_id=None, no_id=None, separator="\n", pad_id=0) -> None:
        super().__init__(head, "bce", pos_weight, yes_id, no_id, None, pad_id)
        self.separator = separator

    def connect_data(self, data) -> None:
        self.separator = getattr(data, "step_separator", self.separator)

    def setup(self, fabric, model, train_data, val_data, out_dir) -> None:
        from pathlib import Path

        self.out_dir = Path(out_dir)
        if self.auto_weight:
            labels = torch.cat([s["step_labels"] for s in train_data])
            positives = float(labels.sum())
            self.pos_weight = (len(labels) - positives) / positives if positives else 1.0
            fabric.print(f"--pos_weight auto: positive steps weighted {self.pos_weight:.3f} (negatives / positives)")

    def config(self) -> dict:
        cfg = super().config()
        cfg.update(reward="process", loss="cross_entropy" if cfg["num_labels"] == 2 else "bce",
                   step_separator=self.separator, aggregate="min")  # fmt: skip
        cfg.pop("orm_prompt", None)
        return cfg

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        return prm_collate(samples, self.pad_id)

    def batch_size(self, batch: dict) -> int:
        return len(batch["input_ids"])

    def sample_length(self, sample: dict) -> int:
        return len(sample["input_ids"])

    def class_weights(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels * self.pos_weight + (1 - labels)).to(labels.device)

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        gpt = unwrap(model)
        lm_head = output_head(gpt)
        return on_positions(model, batch["input_ids"], batch["flat"], lambda rows: self.head_logits(gpt, rows, lm_head))

    def compute(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(model, batch)
        labels = batch["step_labels"].float()
        weights = self.class_weights(labels)
        loss = (step_losses(logits, labels) * weights).sum() / weights.sum()
        scores = scores_from_logits(self.head, logits.detach())
        return loss, {"step_accuracy": ((scores > 0.5) == (labels >= 0.5)).float().mean()}

    def val_outputs(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.logits(model, batch)
        labels = batch["step_labels"].float()
        weights = self.class_weights(labels)
        return {
            "scores": scores_from_logits(self.head, logits),
            "labels": labels,
            "rows": batch["rows"],
            "losses": step_losses(logits, labels) * weights,
            "weights": weights,
        }

    def summarize_val(self, outputs: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        from litgpt_ext.training.orm_metrics import orm_plots
        from litgpt_ext.training.prm_metrics import prm_metrics

        loss = float(outputs["losses"].sum() / outputs["weights"].sum())
        metrics = {"val_loss": loss, **prm_metrics(outputs["scores"], outputs["labels"], outputs["rows"])}
        if self.out_dir is not None:
            orm_plots(outputs["scores"], (outputs["labels"] >= 0.5).long(), self.out_dir / "eval", step)
        return metrics
