"""``prune_scores.png``: what the scores looked like and what was kept — the block scores, and each block's
attention-head scores — where a person would rather look than read the JSON."""

from __future__ import annotations

from pathlib import Path

from litgpt_ext.model.importance import Scores


def plot_scores(scores: Scores, kept: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if scores.heads is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    layers = range(len(scores.block))
    chosen = set(kept.get("blocks", layers))
    colors = ["tab:blue" if i in chosen else "tab:gray" for i in layers]
    ax.bar(list(layers), scores.block.tolist(), color=colors)
    ax.set_xlabel("block")
    ax.set_ylabel("score (blue: kept, gray: dropped)")
    ax.set_title("block scores")
    if scores.heads is not None:
        ax = axes[0][1]
        image = ax.imshow(scores.heads.T.numpy(), aspect="auto", cmap="viridis", origin="lower")
        ax.set_xlabel("block")
        ax.set_ylabel("query head")
        ax.set_title("attention head output norms")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
