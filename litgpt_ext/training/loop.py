"""The one training loop. Every method (SFT, DPO, ORPO, reward heads) is an :class:`Objective` handed to :func:`fit`.

``fit`` owns what methods share: resumable data order, gradient accumulation, warmup + cosine LR, gradient
clipping, evaluation, periodic / best / final checkpoints, exact ``--resume``, loggers, progress and the final
report. It knows nothing about what a loss means; the objective knows nothing about checkpoints.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.strategies import FSDPStrategy
from torch.utils.data import DataLoader
from tqdm import tqdm

from litgpt_ext.errors import ResumableStop
from litgpt_ext.io import JsonlAppender, atomic_write_json, atomic_write_text
from litgpt_ext.model.heads import unwrap
from litgpt_ext.training.args import CheckpointArgs, EvalArgs, TrainArgs
from litgpt_ext.training.checkpoint import STATE_FILE, CheckpointWriter, prune_step_dirs, set_rng_state
from litgpt_ext.training.evaluation import generation_eval, validate
from litgpt_ext.training.objectives.base import Objective, OwnModules, StepHooks
from litgpt_ext.training.report import format_report, performance_report, plot_metrics
from litgpt_ext.training.sampler import ResumableBatchSampler
from litgpt_ext.training.schedule import warmup_cosine


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


def _loader(dataset: list, sampler: ResumableBatchSampler, objective: Objective) -> DataLoader:
    # A private generator: creating an iterator must not draw from the global RNG, or a resumed run's dropout
    # masks would differ from the uninterrupted run's.
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=objective.collate, generator=torch.Generator())


def sample_lengths(dataset: Sequence, objective: Objective) -> list[int]:
    """Each sample's length (what its micro-batch is padded to), for ``--train.group_by_length``."""
    if hasattr(dataset, "lengths"):
        return [int(x) for x in dataset.lengths()]
    return [objective.sample_length(sample) for sample in dataset]


def _is_better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def fit(
    fabric: L.Fabric,
    model: torch.nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    train_dataset: Sequence,
    val_dataset: Sequence,
    writer: CheckpointWriter,
    out_dir: Path,
    train: TrainArgs,
    eval: EvalArgs,
    checkpoint: CheckpointArgs,
    seed: int,
    resume_dir: Path | None = None,
    tokenizer=None,
) -> dict:
    """Train ``model`` with ``objective``; returns the performance report. See the module docstring."""
    t_fit = time.perf_counter()
    out_dir = Path(out_dir)
    accum = train.gradient_accumulation_iters(fabric.world_size, 1)
    train_sampler = ResumableBatchSampler(
        len(train_dataset),
        train.micro_batch_size,
        seed,
        fabric.global_rank,
        fabric.world_size,
        lengths=sample_lengths(train_dataset, objective) if getattr(train, "group_by_length", False) else None,
    )
    val_sampler = ResumableBatchSampler(
        len(val_dataset), train.micro_batch_size, seed, fabric.global_rank, fabric.world_size, shuffle=False
    )
    train_loader, val_loader = fabric.setup_dataloaders(
        _loader(train_dataset, train_sampler, objective),
        _loader(val_dataset, val_sampler, objective),
        use_distributed_sampler=False,
    )
    batches_per_epoch = len(train_sampler)
    plan = plan_steps(train, len(train_dataset), batches_per_epoch, accum, fabric.world_size)
    total_steps, warmup_steps = plan.total, plan.warmup
    scheduler = warmup_cosine(optimizer, warmup_steps, total_steps, train.min_lr)
    monitor = checkpoint.monitor or objective.monitor
    mode = checkpoint.mode or objective.monitor_mode

    gpt = unwrap(model)
    longest = max(_longest(train_dataset, objective), _longest(val_dataset, objective))
    gpt.max_seq_length = min(longest, train.max_seq_length or longest, gpt.config.block_size)

    progress = Progress()
    metrics_file = out_dir / "metrics.jsonl"
    if resume_dir is not None:
        progress = _restore(fabric, model, optimizer, scheduler, resume_dir, writer.lora, objective)
        if fabric.global_rank == 0:
            _truncate_metrics(metrics_file, progress.step)
        fabric.print(f"Resumed from {resume_dir} at step {progress.step} (micro-batch {progress.iter})")
    log = JsonlAppender(metrics_file, fsync=False) if fabric.global_rank == 0 else None

    fabric.print(
        f"Training {objective.name}: {len(train_dataset):,} train / {len(val_dataset):,} val samples, "
        f"{batches_per_epoch} micro-batches of {train.micro_batch_size} per epoch and rank, {accum} per step, "
        f"max length {gpt.max_seq_length}"
    )
    fabric.print(plan.describe())

    def evaluate(step: int) -> dict[str, float]:
        results = validate(fabric, model, objective, val_loader, eval.max_iters, step)
        can_generate = not (isinstance(fabric.strategy, FSDPStrategy) and fabric.world_size > 1)
        if eval.generate_samples and tokenizer is not None and can_generate:
            if fabric.global_rank == 0:
                count = min(eval.generate_samples, len(val_dataset))
                samples = [objective.prompt_and_reference(val_dataset[i], tokenizer.eos_id) for i in range(count)]
                results |= generation_eval(
                    fabric,
                    model,
                    [s for s in samples if s is not None],
                    tokenizer,
                    eval.max_new_tokens or 50,
                    out_dir / "eval" / f"step-{step:06d}.csv",
                    eval.text_metrics,
                )
            fabric.barrier()
        return results

    last_rows: dict[str, dict] = {}

    def save_step() -> Path:
        """A resumable checkpoint of the last finished step."""
        where = out_dir / f"step-{progress.step:06d}"
        state = {"optimizer": optimizer, "scheduler": scheduler, "progress": progress.__dict__}
        writer.write(fabric, model, where, training_state=state)
        return where

    def record(row: dict, kind: str) -> None:
        fabric.log_dict(row, step=row["step"])
        last_rows[kind] = row
        if log is not None:
            log.write(row)

    def after_eval(step: int, results: dict[str, float]) -> None:
        record({"step": step, **results}, "val")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items())
        fabric.print(f"step {step}: {shown}")
        value = results.get(monitor)
        if checkpoint.save_best and value is not None and _is_better(value, progress.best_value, mode):
            progress.best_value, progress.best_step = value, step
            writer.write(fabric, model, out_dir / "best")
            if fabric.global_rank == 0:
                atomic_write_json(out_dir / "best" / "best.json", {"step": step, monitor: value, "mode": mode})

    if eval.initial_validation and progress.step == 0:
        after_eval(0, evaluate(0))

    def micro_batches():
        while True:
            epoch, position = divmod(progress.iter, batches_per_epoch)
            train_sampler.set_position(epoch, position)
            yield from train_loader

    stream = micro_batches()
    bar = tqdm(
        total=total_steps,
        initial=progress.step,
        desc=objective.name,
        disable=fabric.global_rank != 0,
        dynamic_ncols=True,
        unit="step",
    )
    t_start, tokens_at_start = time.perf_counter(), progress.tokens
    max_time = train.max_time or float("inf")
    step_loss = torch.zeros((), device=fabric.device)
    step_metrics: dict[str, torch.Tensor] = {}
    step_tokens = torch.zeros((), device=fabric.device, dtype=torch.long)
    model.train()

    hooks = objective if isinstance(objective, StepHooks) else None
    try:
        last_row, step_batches = time.perf_counter(), []
        while progress.step < total_steps and time.perf_counter() - t_start < max_time:
            if not step_batches:  # the step's micro-batches, as the objective wants them (see StepHooks.on_step)
                step_batches = [next(stream) for _ in range(accum)]
                if hooks is not None:
                    step_batches = hooks.on_step(model, step_batches, progress.iter)
            batch = step_batches.pop(0)
            progress.iter += 1
            accumulating = progress.iter % accum != 0
            with fabric.no_backward_sync(model, enabled=accumulating):
                loss, metrics = objective.compute(model, batch)
                fabric.backward(loss / accum)
            step_loss += loss.detach() / accum
            for key, value in metrics.items():
                step_metrics[key] = step_metrics.get(key, 0.0) + value.detach().float() / accum
            step_tokens += objective.batch_tokens(batch)
            if accumulating:
                continue

            if train.max_norm:
                fabric.clip_gradients(model, optimizer, max_norm=train.max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            progress.step += 1
            bar.update(1)

            logging = progress.step % train.log_interval == 0 or progress.step == total_steps
            if logging or (train.save_interval and progress.step % train.save_interval == 0):
                progress.tokens += int(step_tokens) * fabric.world_size  # one device sync per row or checkpoint
                step_tokens.zero_()
            if logging:
                elapsed = time.perf_counter() - t_start
                row = {
                    "step": progress.step,
                    "iter": progress.iter,
                    "epoch": progress.iter / batches_per_epoch,
                    "loss": float(step_loss),
                    **{k: float(v) for k, v in step_metrics.items()},
                    "learning_rate": scheduler.get_last_lr()[0],
                    "tokens": progress.tokens,
                    "tokens_per_sec": (progress.tokens - tokens_at_start) / max(elapsed, 1e-9),
                    **(hooks.step_stats(time.perf_counter() - last_row) if hooks is not None else {}),
                }
                last_row = time.perf_counter()
                record(row, "train")
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_sec']:,.0f}", refresh=False)
            step_loss.zero_()
            step_metrics.clear()

            if progress.step % eval.interval == 0 and progress.step < total_steps:
                after_eval(progress.step, evaluate(progress.step))
            if train.save_interval and progress.step % train.save_interval == 0:
                save_step()
                if fabric.global_rank == 0:
                    prune_step_dirs(out_dir, checkpoint.keep_last)
    except ResumableStop as stop:
        bar.close()
        progress.iter = progress.step * accum  # the unfinished step's micro-batches are redone on resume
        where = save_step()
        if log is not None:
            log.close()
        raise ResumableStop(
            f"{stop}; saved {where} (step {progress.step}): rerun with --resume auto to continue"
        ) from None
    bar.close()
    seconds = time.perf_counter() - t_start

    if eval.final_validation:
        after_eval(progress.step, evaluate(progress.step))
    if log is not None:
        log.close()
    finish_loggers(fabric)
    writer.write(fabric, model, out_dir / "final", merge_lora=True)

    report = performance_report(
        out_dir,
        seconds,
        progress.step,
        progress.tokens - tokens_at_start,
        fabric.device,
        hooks.report(seconds) if hooks is not None else {},
    )
    fabric.print(format_report(report))
    if fabric.global_rank == 0:
        pngs = [
            plot_metrics(metrics_file, out_dir / name, keys, ylabel) for name, (ylabel, keys) in objective.plots.items()
        ]
        atomic_write_json(
            out_dir / f"{objective.name}_metadata.json",
            {
                "model": str(writer.source_dir),
                "model_name": gpt.config.name,
                "method": objective.name,
                "method_config": objective.config(),
                "training_config": {"train": asdict(train), "eval": asdict(eval), "checkpoint": asdict(checkpoint)},
                "final_train_metrics": last_rows.get("train"),
                "final_val_metrics": last_rows.get("val"),
                "wall_seconds": round(time.perf_counter() - t_fit, 3),
                "performance": report,
            },
        )
        shown = ", ".join(str(p) for p in pngs if p)
        fabric.print(f"Final checkpoint: {out_dir / 'final'}" + (f" | plots: {shown}" if shown else ""))
    return report


def finish_loggers(fabric: L.Fabric) -> None:
    """End the loggers' runs when training ends: MLflow ends its run when finalized, and a wandb run would otherwise
    stay open until the process exits (its summary unwritten, and a second training in the same process logging
    into it)."""
    for logger in fabric.loggers:
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def _longest(dataset, objective: Objective) -> int:
    if hasattr(dataset, "lengths"):  # packed data knows its lengths without touching a million samples
        longest = int(dataset.lengths().max()) if len(dataset) else 0
    else:
        longest = max((objective.sample_length(sample) for sample in dataset), default=0)
    return longest + (objective.length_growth() if isinstance(objective, StepHooks) else 0)


def _restore(fabric, model, optimizer, scheduler, resume_dir: Path, lora: bool, objective: Objective) -> Progress:
    if lora:
        fabric.load(resume_dir / "lit_model.pth.lora", {"model": model}, strict=False)
    else:
        fabric.load_raw(resume_dir / "lit_model.pth", model, strict=not isinstance(objective, OwnModules))
    if isinstance(objective, OwnModules):
        objective.load_extras(model, resume_dir)
    remainder = fabric.load(resume_dir / STATE_FILE, {"optimizer": optimizer, "scheduler": scheduler})
    progress = Progress(**remainder["progress"])
    rng_file = resume_dir / f"rng-rank{fabric.global_rank}.pth"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return progress


def _truncate_metrics(metrics_file: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be logged again)."""
    if not metrics_file.is_file():
        return
    rows = [line for line in metrics_file.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line)["step"] <= step]
    atomic_write_text(metrics_file, "".join(line + "\n" for line in kept))
