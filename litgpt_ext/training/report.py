"""What a person reads after training: a performance report and a PNG of the loss curves."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch

from litgpt_ext.io import atomic_path, atomic_write_json


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def performance_report(
    out_dir: Path, seconds: float, steps: int, tokens: int, device: torch.device, extra: dict | None = None
) -> dict:
    report = {
        "training_seconds": round(seconds, 3),
        "optimizer_steps": steps,
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "memory_kind": "cuda_allocated" if device.type == "cuda" else "process_max_rss",
        **(extra or {}),
    }
    atomic_write_json(out_dir / "performance.json", report)
    return report


def format_report(report: dict) -> str:
    return (
        f"Training: {report['optimizer_steps']} steps, {report['tokens']:,} tokens in {report['training_seconds']:.1f}s"
        f" ({report['tokens_per_second'] or 0:,.0f} tokens/s), peak memory {report['peak_memory_mb']:,.0f} MB"
        f" ({report['memory_kind']})"
    )


def plot_metrics(
    metrics_file: Path, png: Path, keys: tuple[str, ...] = ("loss", "val_loss"), ylabel: str = "loss"
) -> Path | None:
    """Plot each metric in ``keys`` against the optimizer step from ``metrics.jsonl`` (train lines solid, ``val_``
    lines dashed with markers). Nothing is written when none of the keys was logged."""
    if not metrics_file.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = {k: {} for k in keys}
    for line in metrics_file.read_text().splitlines():
        row = json.loads(line)
        for key in keys:
            if key in row:
                series[key][row["step"]] = row[key]  # a rerun's later value for a step wins
    if not any(series.values()):
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in series.items():
        if points:
            steps = sorted(points)
            val = key.startswith("val_")
            marker = "o" if val or len(steps) < 30 else None
            ax.plot(steps, [points[s] for s in steps], linestyle="--" if val else "-", marker=marker, label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return png
