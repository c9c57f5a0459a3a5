"""Process-reward-model validation metrics over a whole validation set: step accuracy and AUROC, the first-error
accuracy (ProcessBench), and the outcome AUROC of each candidate's aggregated score."""

from __future__ import annotations

import torch

from litgpt_ext.evaluate.step_scores import aggregate, first_wrong


def split_rows(values: torch.Tensor, rows: torch.Tensor) -> list[list[float]]:
    """Per-row lists of step values, rows in order of appearance (``rows``: one row key per step, steps of a row
    contiguous and in order)."""
    out: list[list[float]] = []
    last = None
    for value, row in zip(values.tolist(), rows.tolist(), strict=True):
        if row != last:
            out.append([])
            last = row
        out[-1].append(value)
    return out


def prm_metrics(scores: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, how: str = "min") -> dict[str, float]:
    from torchmetrics.functional.classification import binary_accuracy, binary_auroc

    scores, labels = scores.float().cpu(), labels.float().cpu()
    hard = (labels >= 0.5).long()
    both = bool((hard == 1).any() and (hard == 0).any())
    per_scores, per_labels = split_rows(scores, rows.cpu()), split_rows(labels, rows.cpu())
    first_ok = [first_wrong(s) == first_wrong(lab) for s, lab in zip(per_scores, per_labels, strict=True)]
    outcome = torch.tensor([aggregate(s, how) for s in per_scores])
    outcome_labels = torch.tensor([int(min(lab) >= 0.5) for lab in per_labels])
    outcome_both = bool((outcome_labels == 1).any() and (outcome_labels == 0).any())
    return {
        "val_step_accuracy": float(binary_accuracy(scores, hard)),
        "val_step_auroc": float(binary_auroc(scores, hard)) if both else float("nan"),
        "val_first_error_accuracy": sum(first_ok) / max(len(first_ok), 1),
        "val_outcome_auroc": float(binary_auroc(outcome, outcome_labels)) if outcome_both else float("nan"),
        "val_score_pos": float(scores[hard == 1].mean()) if (hard == 1).any() else float("nan"),
        "val_score_neg": float(scores[hard == 0].mean()) if (hard == 0).any() else float("nan"),
    }
