"""Argument groups of the training loop, in litgpt's dataclass style (``--eval.interval 50``).

``TrainArgs`` is litgpt's own plus length grouping; ``EvalArgs`` extends litgpt's with generation-based evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from litgpt.args import EvalArgs as LitEvalArgs
from litgpt.args import TrainArgs as LitTrainArgs

__all__ = ["TrainArgs", "EvalArgs", "CheckpointArgs"]


@dataclass
class TrainArgs(LitTrainArgs):
    """Training-related arguments (litgpt's, plus length grouping)."""

    group_by_length: bool = False
    """Put samples of similar length in the same micro-batch, as Hugging Face's ``group_by_length`` does: each
    epoch's shuffled order is cut into mega-batches of 50 micro-batches, each sorted by length (longest first),
    so less padding is computed while the order of the mega-batches stays random. Changes which samples share a
    micro-batch, not what is learned from each."""


@dataclass
class EvalArgs(LitEvalArgs):
    """Evaluation-related arguments (litgpt's, plus generation of validation samples)."""

    generate_samples: int = 0
    """Generate answers (greedy) for this many validation samples at each evaluation; written to out_dir/eval/."""
    text_metrics: bool = False
    """Score those generations against the references with BLEU and ROUGE (torchmetrics), per sample in a CSV."""
    test: bool = False
    """After training, answer the data's test split with the final checkpoint (greedy, batched through
    generate_batch's engine, up to max_new_tokens) and score it as evaluate_generations does, into out_dir/test/."""


@dataclass
class CheckpointArgs:
    """What to keep besides the periodic ``step-*`` checkpoints."""

    monitor: str | None = None
    """Validation metric that picks the best checkpoint (default: the objective's, e.g. val_loss)."""
    mode: Literal["min", "max"] | None = None
    """Whether a lower or higher monitored value is better (default: the objective's)."""
    save_best: bool = True
    """Keep a copy of the best checkpoint in out_dir/best (updated after each evaluation)."""
    keep_last: int | None = None
    """Keep only this many most recent step-* checkpoints (None keeps all)."""
