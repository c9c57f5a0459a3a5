"""Outcome reward models: a score in [0, 1] for "is this candidate correct?", from the last token's hidden state.

Heads (only the last non-padding position of each row reaches any of them):

* ``yes_token`` — the model stays a causal LM; its LM head's logits for the answer tokens `` No`` / `` Yes`` at the
  last prompt position are a 2-way classifier: ``loss = CE([l_no, l_yes], label)``,
  ``score = P(Yes) / (P(Yes) + P(No)) = softmax([l_no, l_yes])[1]``.
* ``classifier`` — a new bias-free ``Linear(hidden, 2)`` (HF's ``score`` layer), ``loss = CE``, ``score`` = P(class 1).
* ``scalar`` — a new bias-free ``Linear(hidden, 1)``: ``--loss bce`` (pointwise, ``score = sigmoid(s)``) or
  ``--loss pairwise`` (Bradley-Terry on (positive, negative) rows of the same question:
  ``loss = -log sigmoid(s_pos - s_neg)``).

``pos_weight`` weights the positive class (``auto``: negatives / positives of the training rows). The new heads start
small (std 1e-3), so the first scores are ~0.5 and the pretrained features are not drowned. They live on the GPT
module as ``orm_head`` (so optimizers, DDP and ``--resume`` see them) but are saved beside the weights
(``orm_head.pth`` + ``orm_config.json``), keeping ``lit_model.pth`` a plain litgpt checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from litgpt_ext.data.batches import orm_collate
from litgpt_ext.model.heads import on_positions, output_head, unwrap
from litgpt_ext.training.objectives.base import Objective, OwnModules

Head = Literal["yes_token", "classifier", "scalar"]
Loss = Literal["bce", "pairwise"]
HEAD_FILE, CONFIG_FILE = "orm_head.pth", "orm_config.json"


def pairwise_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: ``mean(-log sigmoid(s_pos - s_neg))``."""
    return -F.logsigmoid(pos - neg).mean()


def scores_from_logits(head: str, logits: torch.Tensor) -> torch.Tensor:
    """The probability that a candidate is correct, from a head's output (``(B, 2)`` or ``(B, 1)``)."""
    if logits.size(-1) == 2:
        return torch.softmax(logits.float(), dim=-1)[:, 1]
    return torch.sigmoid(logits.float()[:, 0])


class ORMObjective(OwnModules, Objective):
    name = "orm"
    monitor = "val_auroc"
    monitor_mode = "max"
    plots = {
        "loss.png": ("loss", ("loss", "val_loss")),
        "auroc.png": ("AUROC / accuracy", ("val_auroc", "val_accuracy")),
    }

    def __init__(
        self,
        head: Head = "classifier",
        loss: Loss = "bce",
        pos_weight: float | str = 1.0,
        yes_id: int | None = None,
        no_id: int | None = None,
        orm_prompt: str | None = None,
        pad_id: int = 0,
    ) -> None:
        if head == "yes_token" and (yes_id is None or no_id is None):
            raise ValueError("the yes_token head needs the token ids of ' Yes' and ' No'")
        self.head, self.loss = head, loss
        self.auto_weight = pos_weight == "auto"
        self.pos_weight = 1.0 if self.auto_weight else float(pos_weight)
        self.yes_id, self.no_id, self.orm_prompt, self.pad_id = yes_id, no_id, orm_prompt, pad_id
        self.out_dir: Path | None = None

    # -- model -------------------------------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> None:
        if self.head == "yes_token":
            return
        gpt = unwrap(model)
        if not any(p is gpt.transformer.wte.weight for p in gpt.lm_head.parameters()):
            # a new head reads the hidden state: the LM head (and its LoRA, with --lora_head) takes no part in the
            # loss, and a trainable parameter that gets no gradient stops DDP at its second step
            gpt.lm_head.requires_grad_(False)
        outputs = 2 if self.head == "classifier" else 1
        head = nn.Linear(gpt.config.n_embd, outputs, bias=False)
        nn.init.normal_(head.weight, std=1e-3)
        gpt.orm_head = head.to(next(gpt.parameters()).dtype)

    def connect_data(self, data) -> None:
        """The prompt written to ``orm_config.json`` is the one the rows were rendered with: the row shape's default
        when ``--orm_prompt`` was not given (one template for every row; mixed shapes keep it unset)."""
        used = getattr(data, "prompts_used", set())
        if self.orm_prompt is None and len(used) == 1:
            self.orm_prompt = next(iter(used))

    def setup(self, fabric, model, train_data, val_data, out_dir) -> None:
        self.out_dir = Path(out_dir)
        if self.auto_weight:
            labels = [s["label"] for s in train_data if "label" in s]
            positives = sum(labels)
            self.pos_weight = (len(labels) - positives) / positives if positives else 1.0
            fabric.print(f"--pos_weight auto: positives weighted {self.pos_weight:.3f} (negatives / positives)")

    def config(self) -> dict:
        return {
            "head": self.head,
            "loss": self.loss if self.head == "scalar" else "cross_entropy",
            "pos_weight": self.pos_weight,
            "orm_prompt": self.orm_prompt,
            "yes_id": self.yes_id,
            "no_id": self.no_id,
            "num_labels": {"yes_token": 2, "classifier": 2, "scalar": 1}[self.head],
        }

    # -- checkpoint files ----------------------------------------------------------------------------------------------
    own_prefixes = ("orm_head.",)

    def save_extras(self, model: nn.Module, directory: Path) -> None:
        gpt = unwrap(model)
        if hasattr(gpt, "orm_head"):
            torch.save({k: v.detach().cpu() for k, v in gpt.orm_head.state_dict().items()}, Path(directory) / HEAD_FILE)
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2))

    def load_extras(self, model: nn.Module, directory: Path) -> None:
        gpt = unwrap(model)
        if hasattr(gpt, "orm_head"):
            gpt.orm_head.load_state_dict(torch.load(Path(directory) / HEAD_FILE, weights_only=True, map_location="cpu"))

    # -- batches -----------------------------------------------------------------------------------------------------
    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        return orm_collate(samples, self.pad_id)

    def batch_size(self, batch: dict) -> int:
        return len(batch["labels"])

    def sample_length(self, sample: dict) -> int:
        if sample.get("pair"):
            return max(len(sample["pos"]["input_ids"]), len(sample["neg"]["input_ids"]))
        return len(sample["input_ids"])

    def prompt_and_reference(self, sample: dict, eos_id: int | None):
        return None

    def head_logits(self, gpt: nn.Module, rows: torch.Tensor, lm_head: nn.Module | None = None) -> torch.Tensor:
        """``(rows, 2)`` or ``(rows, 1)`` head outputs from final hidden rows (the LM head's [No, Yes] columns for
        ``yes_token``; pass ``lm_head`` while the model's own is swapped out)."""
        if self.head == "yes_token":
            return (lm_head or output_head(gpt))(rows)[:, [self.no_id, self.yes_id]]
        return gpt.orm_head(rows)

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """:meth:`head_logits` at each row's last token — one forward; only those rows reach any head."""
        gpt = unwrap(model)
        lm_head = output_head(gpt)
        return on_positions(model, batch["input_ids"], batch["last"], lambda rows: self.head_logits(gpt, rows, lm_head))

    def class_weights(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.where(labels == 1, self.pos_weight, 1.0).to(labels.device)

    def row_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-row losses, weighted by class (divide their sum by the weights' sum for the mean)."""
        if logits.size(-1) == 2:
            losses = F.cross_entropy(logits.float(), labels, reduction="none")
        else:
            losses = F.binary_cross_entropy_with_logits(logits.float()[:, 0], labels.float(), reduction="none")
        return losses * self.class_weights(labels)

    def compute(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(model, batch)
        labels = batch["labels"]
        pairs = int(batch["pairs"])
        if pairs:
            s = logits.float()[:, 0]
            loss = pairwise_loss(s[:pairs], s[pairs:])
            accuracy = (s[:pairs] > s[pairs:]).float().mean()
            return loss, {"pair_accuracy": accuracy.detach()}
        loss = self.row_losses(logits, labels).sum() / self.class_weights(labels).sum()
        scores = scores_from_logits(self.head, logits.detach())
        return loss, {"accuracy": ((scores > 0.5).long() == labels).float().mean()}

    # -- validation over the whole set ---------------------------------------------------------------------------------
    def val_outputs(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.logits(model, batch)
        return {
            "scores": scores_from_logits(self.head, logits),
            "logits": logits.float()[:, 0],  # the scalar head's score, for the pairwise validation loss
            "labels": batch["labels"],
            "groups": batch["groups"],
            "losses": self.row_losses(logits, batch["labels"]),
        }

    def summarize_val(self, outputs: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        from litgpt_ext.training.orm_metrics import orm_metrics, orm_plots

        scores, labels = outputs["scores"], outputs["labels"]
        if self.head == "scalar" and self.loss == "pairwise":
            loss = group_pairwise_loss(outputs["logits"], labels, outputs["groups"])
        else:
            loss = float(outputs["losses"].sum() / self.class_weights(labels).sum())
        metrics = {"val_loss": loss, **orm_metrics(scores, labels)}
        if self.out_dir is not None:
            orm_plots(scores, labels, self.out_dir / "eval", step)
        return metrics


def group_pairwise_loss(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> float:
    """Bradley-Terry loss over every (positive, negative) pair of the same group."""
    same = groups.unsqueeze(1) == groups.unsqueeze(0)
    mask = same & (labels.unsqueeze(1) == 1) & (labels.unsqueeze(0) == 0)
    if not mask.any():
        return float("nan")
    diff = logits.unsqueeze(1) - logits.unsqueeze(0)
    return float(-F.logsigmoid(diff[mask]).mean())
