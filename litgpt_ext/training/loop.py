"""The one training loop. Every method (SFT, DPO, ORPO, reward heads, distillation) is an :class:`Objective` handed to
:func:`fit` inside a :class:`~litgpt_ext.training.plan.FitPlan`.

``fit`` owns what methods share, in four stages, each in its own module:

1. the data and the step plan (:mod:`.plan`): resumable data order, how many steps, warm-up;
2. the steps (here): micro-batches through the objective, gradient accumulation (:mod:`.accumulator`), clipping,
   warmup + cosine LR;
3. what the run writes as it goes (:mod:`.bookkeeping`): metric rows, validation and the best checkpoint, resumable
   step checkpoints, exact ``--resume``;
4. the finish (here): final validation, the final checkpoint, the performance report, plots and metadata.

It knows nothing about what a loss means; the objective knows nothing about checkpoints.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import lightning as L
import torch
from tqdm import tqdm

from litgpt_ext.errors import ResumableStop
from litgpt_ext.io import atomic_write_json
from litgpt_ext.model.heads import unwrap
from litgpt_ext.training.accumulator import StepAccumulator
from litgpt_ext.training.bookkeeping import Bookkeeping, step_row, truncate_metrics
from litgpt_ext.training.checkpoint import restore
from litgpt_ext.training.objectives.base import OwnModules, StepHooks
from litgpt_ext.training.plan import FitPlan, Progress, RunData, longest_sample, prepare_data
from litgpt_ext.training.ranks import compute_on_every_rank
from litgpt_ext.training.report import format_report, performance_report, plot_metrics
from litgpt_ext.training.schedule import warmup_cosine

__all__ = ["fit", "finish_loggers"]


def fit(fabric: L.Fabric, model: torch.nn.Module, optimizer: torch.optim.Optimizer, plan: FitPlan) -> dict:
    """Train ``model`` with ``plan.objective``; returns the performance report. See the module docstring."""
    t_fit = time.perf_counter()
    data = prepare_data(fabric, plan)
    scheduler = warmup_cosine(optimizer, data.steps.warmup, data.steps.total, plan.train.min_lr)
    gpt = unwrap(model)
    longest = max(longest_sample(plan.train_data, plan.objective), longest_sample(plan.val_data, plan.objective))
    gpt.max_seq_length = min(longest, plan.train.max_seq_length or longest, gpt.config.block_size)

    progress = Progress()
    books = Bookkeeping(fabric, model, plan, data, progress, {"optimizer": optimizer, "scheduler": scheduler})
    if plan.resume_dir is not None:
        own = plan.objective if isinstance(plan.objective, OwnModules) else None
        saved = restore(fabric, model, optimizer, scheduler, plan.resume_dir, plan.writer.lora, own)
        progress.__dict__.update(saved)
        if fabric.global_rank == 0:
            truncate_metrics(books.metrics_file, progress.step)
        fabric.print(f"Resumed from {plan.resume_dir} at step {progress.step} (micro-batch {progress.iter})")
    books.open()
    fabric.print(
        f"Training {plan.objective.name}: {len(plan.train_data):,} train / {len(plan.val_data):,} val samples, "
        f"{data.batches_per_epoch} micro-batches of {plan.train.micro_batch_size} per epoch and rank, {data.accum} "
        f"per step, max length {gpt.max_seq_length}"
    )
    fabric.print(data.steps.describe())
    if plan.eval.initial_validation and progress.step == 0:
        books.validate_and_keep_best(0)

    t_start, tokens_at_start = time.perf_counter(), progress.tokens
    try:
        _steps(fabric, model, optimizer, scheduler, plan, data, progress, books)
    except ResumableStop as stop:
        progress.iter = progress.step * data.accum  # the unfinished step's micro-batches are redone on resume
        where = books.save_step()
        books.close()
        raise ResumableStop(
            f"{stop}; saved {where} (step {progress.step}): rerun with --resume auto to continue"
        ) from None
    return _finish(fabric, model, plan, progress, books, time.perf_counter() - t_start, tokens_at_start, t_fit)


def _steps(fabric, model, optimizer, scheduler, plan: FitPlan, data: RunData, progress: Progress, books: Bookkeeping):
    """Optimizer steps until the plan's total (or ``--train.max_time``): each step ``accum`` micro-batches through
    the objective, then clip, step, schedule; log, validate and checkpoint at their intervals."""
    objective, train = plan.objective, plan.train
    hooks = objective if isinstance(objective, StepHooks) else None
    stream = data.micro_batches(progress)
    step = StepAccumulator(fabric.device, data.accum)
    bar = tqdm(total=data.steps.total, initial=progress.step, desc=objective.name, unit="step", dynamic_ncols=True,
               disable=fabric.global_rank != 0)  # fmt: skip
    t_start, tokens_at_start = time.perf_counter(), progress.tokens
    max_time = train.max_time or float("inf")
    model.train()
    last_row, step_batches = time.perf_counter(), []
    try:
        while progress.step < data.steps.total and time.perf_counter() - t_start < max_time:
            if not step_batches:  # the step's micro-batches, as the objective wants them (see StepHooks.on_step)
                step_batches = [next(stream) for _ in range(data.accum)]
                if hooks is not None:
                    step_batches = hooks.on_step(model, step_batches, progress.iter)
            batch = step_batches.pop(0)
            progress.iter += 1
            accumulating = progress.iter % data.accum != 0
            with fabric.no_backward_sync(model, enabled=accumulating):
                loss, metrics = compute_on_every_rank(fabric, objective, model, batch)
                fabric.backward(loss / data.accum)
            step.add(loss, metrics, objective.batch_tokens(batch))
            if accumulating:
                continue

            if train.max_norm:
                fabric.clip_gradients(model, optimizer, max_norm=train.max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            progress.step += 1
            bar.update(1)

            logging = progress.step % train.log_interval == 0 or progress.step == data.steps.total
            saving = bool(train.save_interval) and progress.step % train.save_interval == 0
            if logging or saving:
                progress.tokens += step.take_tokens() * fabric.world_size  # one device sync per row or checkpoint
            if logging:
                elapsed = time.perf_counter() - t_start
                extra = hooks.step_stats(time.perf_counter() - last_row) if hooks is not None else {}
                row = step_row(progress, data, step.means(), scheduler.get_last_lr()[0],
                               (progress.tokens - tokens_at_start) / max(elapsed, 1e-9), extra)  # fmt: skip
                last_row = time.perf_counter()
                books.record(row, "train")
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_sec']:,.0f}", refresh=False)
            step.next_step()
            if progress.step % plan.eval.interval == 0 and progress.step < data.steps.total:
                books.validate_and_keep_best(progress.step)
            if saving:
                books.save_and_prune()
    finally:
        bar.close()


def _finish(fabric, model, plan: FitPlan, progress: Progress, books: Bookkeeping, seconds: float, tokens_at_start: int,
            t_fit: float) -> dict:  # fmt: skip
    """Final validation, the final checkpoint (LoRA merged), the performance report, the plots and the metadata."""
    if plan.eval.final_validation:
        books.validate_and_keep_best(progress.step)
    books.close()
    finish_loggers(fabric)
    plan.writer.write(fabric, model, plan.out_dir / "final", merge_lora=True)
    hooks = plan.objective if isinstance(plan.objective, StepHooks) else None
    extra = hooks.report(seconds) if hooks is not None else {}
    report = performance_report(plan.out_dir, seconds, progress.step, progress.tokens - tokens_at_start,
                                fabric.device, extra)  # fmt: skip
    fabric.print(format_report(report))
    if fabric.global_rank == 0:
        objective = plan.objective
        pngs = [plot_metrics(books.metrics_file, plan.out_dir / name, keys, ylabel)
                for name, (ylabel, keys) in objective.plots.items()]  # fmt: skip
        atomic_write_json(
            plan.out_dir / f"{objective.name}_metadata.json",
            {
                "model": str(plan.writer.source_dir),
                "model_name": unwrap(model).config.name,
                "method": objective.name,
                "method_config": objective.config(),
                "replaced_forwards": plan.replaced_forwards,
                "training_config": {
                    "train": asdict(plan.train),
                    "eval": asdict(plan.eval),
                    "checkpoint": asdict(plan.checkpoint),
                },  # fmt: skip
                "final_train_metrics": books.last_rows.get("train"),
                "final_val_metrics": books.last_rows.get("val"),
                "wall_seconds": round(time.perf_counter() - t_fit, 3),
                "performance": report,
            },
        )
        shown = ", ".join(str(p) for p in pngs if p)
        fabric.print(f"Final checkpoint: {plan.out_dir / 'final'}" + (f" | plots: {shown}" if shown else ""))
    return report


def finish_loggers(fabric: L.Fabric) -> None:
    """End the loggers' runs when training ends: MLflow ends its run when finalized, and a wandb run would otherwise
    stay open until the process exits (its summary unwritten, and a second training in the same process logging
    into it)."""
    for logger in fabric.loggers:
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()
