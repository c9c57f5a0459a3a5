"""Reward-model validation metrics over a whole validation set (torchmetrics), and the ROC / score-histogram PNGs."""

from __future__ import annotations

from pathlib import Path

import torch


def orm_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """accuracy, AUROC, precision / recall / F1 at 0.5, and the mean score of positives and of negatives."""
    from torchmetrics.functional.classification import (
        binary_accuracy,
        binary_auroc,
        binary_f1_score,
        binary_precision,
        binary_recall,
    )

    scores, labels = scores.float().cpu(), labels.long().cpu()
    both = bool((labels == 1).any() and (labels == 0).any())
    return {
        "val_accuracy": float(binary_accuracy(scores, labels)),
        "val_auroc": float(binary_auroc(scores, labels)) if both else float("nan"),
        "val_precision": float(binary_precision(scores, labels)),
        "val_recall": float(binary_recall(scores, labels)),
        "val_f1": float(binary_f1_score(scores, labels)),
        "val_score_pos": float(scores[labels == 1].mean()) if (labels == 1).any() else float("nan"),
        "val_score_neg": float(scores[labels == 0].mean()) if (labels == 0).any() else float("nan"),
    }


def orm_plots(scores: torch.Tensor, labels: torch.Tensor, directory: Path, step: int) -> list[Path]:
    """``roc-step-N.png`` (with the AUROC) and ``scores-step-N.png`` (score histograms of positives and negatives)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    from litgpt_ext.io import atomic_path

    scores, labels = scores.float().cpu(), labels.long().cpu()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if (labels == 1).any() and (labels == 0).any():
        fpr, tpr, _ = binary_roc(scores, labels)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"AUROC {float(binary_auroc(scores, labels)):.3f}")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"ROC, step {step}")
        ax.legend(loc="lower right")
        path = directory / f"roc-step-{step:06d}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = torch.linspace(0, 1, 21).numpy()
    for value, name in ((1, "positives"), (0, "negatives")):
        chosen = scores[labels == value].numpy()
        if len(chosen):
            ax.hist(chosen, bins=bins, alpha=0.6, label=f"{name} ({len(chosen)})")
    ax.set_xlabel("score")
    ax.set_ylabel("rows")
    ax.set_title(f"scores, step {step}")
    ax.legend()
    path = directory / f"scores-step-{step:06d}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [*written, path]
