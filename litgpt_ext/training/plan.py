"""What a training run is given, and what it plans before its first step.

:class:`FitPlan` is everything :func:`~litgpt_ext.training.loop.fit` needs besides the model and its optimizer — the
finetune launcher prepares (and validates) it before any process starts. :func:`prepare_data` turns it into the
run's loaders, in an order that a resumed run continues exactly, and its :class:`StepPlan`: how many optimizer steps
it takes, with how much warm-up, and why.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from litgpt_ext.training.args import CheckpointArgs, EvalArgs, TrainArgs
from litgpt_ext.training.checkpoint import CheckpointWriter
from litgpt_ext.training.objectives.base import Objective, StepHooks
from litgpt_ext.training.sampler import ResumableBatchSampler


@dataclass
class FitPlan:
    """A training run's inputs: the method, the data, where and how it writes, and how long it trains."""

    objective: Objective
    train_data: Sequence
    val_data: Sequence
    tokenizer: object
    """litgpt's ``Tokenizer`` of the model (``--eval.generate_samples`` decodes with it)."""
    writer: CheckpointWriter
    out_dir: Path
    train: TrainArgs
    eval: EvalArgs
    checkpoint: CheckpointArgs
    seed: int
    resume_dir: Path | None = None
    """A ``step-*`` directory to continue from (``--resume``)."""
    replaced_forwards: list[str] = field(default_factory=list)
    """The litgpt module classes whose forward the run replaced (:mod:`litgpt_ext.model.patches`), for the metadata."""


@dataclass
class Progress:
    """Everything that must survive a restart, besides weights, optimizer, scheduler and RNG."""

    step: int = 0
    iter: int = 0
    tokens: int = 0
    best_value: float | None = None
    best_step: int | None = None


MAX_WARMUP_FRACTION = 0.1
"""Warm-up is capped at this fraction of the run: a warm-up set for a larger dataset (50 steps on a 12-step run)
would otherwise never let the learning rate reach its peak, and the run would train next to nothing."""


@dataclass
class StepPlan:
    """How many optimizer steps a run takes and why (printed at start: runs that end early must say so)."""

    total: int
    warmup: int
    why: str

    def describe(self) -> str:
        return f"{self.total} steps: {self.why}"


def plan_steps(train: TrainArgs, samples: int, batches_per_epoch: int, accum: int, world: int = 1) -> StepPlan:
    """Total optimizer steps from ``--train.epochs`` / ``--train.max_steps`` (the first to end decides), and the
    warm-up from ``lr_warmup_steps`` / ``lr_warmup_fraction`` (of an epoch, as litgpt), capped at
    :data:`MAX_WARMUP_FRACTION` of the run."""
    steps_per_epoch = max(1, batches_per_epoch // accum)
    per_step = train.micro_batch_size * accum * world
    epoch_note = f"{steps_per_epoch} per epoch: {samples:,} samples, {per_step} per step"
    by_epochs = (train.epochs or 0) * steps_per_epoch or None
    if not train.max_steps and not by_epochs:
        raise ValueError("set --train.epochs or --train.max_steps")
    if by_epochs and (not train.max_steps or by_epochs < train.max_steps):
        total = by_epochs
        why = f"--train.epochs {train.epochs} x {epoch_note}"
        if train.max_steps:
            why = f"--train.epochs {train.epochs} ends before --train.max_steps {train.max_steps} ({epoch_note})"
    else:
        total = train.max_steps
        why = f"--train.max_steps {train.max_steps} ({epoch_note})"
        if by_epochs:
            why = f"--train.max_steps {train.max_steps} ends before --train.epochs {train.epochs} ({epoch_note})"
    if train.lr_warmup_fraction:
        asked, flag = math.ceil(train.lr_warmup_fraction * steps_per_epoch), "--train.lr_warmup_fraction"
    else:
        asked, flag = train.lr_warmup_steps or 0, "--train.lr_warmup_steps"
    cap = math.ceil(MAX_WARMUP_FRACTION * total)
    warmup = min(asked, cap)
    if warmup < asked:
        why += f"; warm-up {asked} ({flag}) capped to {warmup}, {MAX_WARMUP_FRACTION:.0%} of the run"
    else:
        why += f"; {warmup} warm-up"
    if train.max_time:
        why += f"; stops early after --train.max_time {train.max_time:g} s"
    return StepPlan(total, warmup, why)


def sample_lengths(dataset: Sequence, objective: Objective) -> list[int]:
    """Each sample's length (what its micro-batch is padded to), for ``--train.group_by_length``."""
    if hasattr(dataset, "lengths"):
        return [int(x) for x in dataset.lengths()]
    return [objective.sample_length(sample) for sample in dataset]


def longest_sample(dataset: Sequence, objective: Objective) -> int:
    """The longest row a sample of ``dataset`` becomes during training (sampled answers included)."""
    if hasattr(dataset, "lengths"):  # packed data knows its lengths without touching a million samples
        longest = int(dataset.lengths().max()) if len(dataset) else 0
    else:
        longest = max((objective.sample_length(sample) for sample in dataset), default=0)
    return longest + (objective.length_growth() if isinstance(objective, StepHooks) else 0)


def _loader(dataset: Sequence, sampler: ResumableBatchSampler, objective: Objective) -> DataLoader:
    # A private generator: creating an iterator must not draw from the global RNG, or a resumed run's dropout
    # masks would differ from the uninterrupted run's.
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=objective.collate, generator=torch.Generator())


@dataclass
class RunData:
    """A run's loaders (per rank), how many micro-batches make a step, and its step plan."""

    train_sampler: ResumableBatchSampler
    train_loader: DataLoader
    val_loader: DataLoader
    batches_per_epoch: int
    accum: int
    steps: StepPlan

    def micro_batches(self, progress: Progress) -> Iterator[dict]:
        """Training micro-batches forever, starting at micro-batch ``progress.iter`` of the run (read each time an
        epoch starts, so a resumed run continues where the interrupted one stopped)."""
        while True:
            epoch, position = divmod(progress.iter, self.batches_per_epoch)
            self.train_sampler.set_position(epoch, position)
            yield from self.train_loader


def prepare_data(fabric: L.Fabric, plan: FitPlan) -> RunData:
    """Each rank's loaders over ``plan``'s datasets (shuffled by the seed, grouped by length when asked) and the
    step plan they give."""
    train, objective = plan.train, plan.objective
    accum = train.gradient_accumulation_iters(fabric.world_size, 1)
    lengths = sample_lengths(plan.train_data, objective) if train.group_by_length else None
    rank, world = fabric.global_rank, fabric.world_size
    train_sampler = ResumableBatchSampler(len(plan.train_data), train.micro_batch_size, plan.seed, rank, world,
                                          lengths=lengths)  # fmt: skip
    val_sampler = ResumableBatchSampler(len(plan.val_data), train.micro_batch_size, plan.seed, rank, world,
                                        shuffle=False)  # fmt: skip
    train_loader, val_loader = fabric.setup_dataloaders(
        _loader(plan.train_data, train_sampler, objective),
        _loader(plan.val_data, val_sampler, objective),
        use_distributed_sampler=False,
    )
    batches = len(train_sampler)
    steps = plan_steps(train, len(plan.train_data), batches, accum, world)
    return RunData(train_sampler, train_loader, val_loader, batches, accum, steps)
