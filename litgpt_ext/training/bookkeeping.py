"""What a run writes while it trains: metric rows (loggers, ``metrics.jsonl``, the progress bar), validation and the
best checkpoint it picks, and the resumable ``step-*`` checkpoints.

Every decision here is taken alike on every rank: validation metrics are reduced over the ranks, and what only rank
0 computes (``--eval.generate_samples``' BLEU / ROUGE) is broadcast before anyone compares it with the best so far —
so a checkpoint that every rank must help write is written by all of them or by none.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.fabric.strategies import FSDPStrategy

from litgpt_ext.io import JsonlAppender, atomic_write_json, atomic_write_text
from litgpt_ext.training.checkpoint import prune_step_dirs
from litgpt_ext.training.evaluation import generation_eval, validate
from litgpt_ext.training.plan import FitPlan, Progress, RunData


def _is_better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def truncate_metrics(metrics_file: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be logged again)."""
    if not metrics_file.is_file():
        return
    rows = [line for line in metrics_file.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line)["step"] <= step]
    atomic_write_text(metrics_file, "".join(line + "\n" for line in kept))


class Bookkeeping:
    """Rows, validation, best and step checkpoints of one run (see the module docstring)."""

    def __init__(self, fabric: L.Fabric, model, plan: FitPlan, data: RunData, progress: Progress, training_state):
        self.fabric, self.model, self.plan, self.data, self.progress = fabric, model, plan, data, progress
        self.training_state = training_state
        """``{"optimizer": ..., "scheduler": ...}``: saved in every step checkpoint with the progress."""
        self.monitor = plan.checkpoint.monitor or plan.objective.monitor
        self.mode = plan.checkpoint.mode or plan.objective.monitor_mode
        self.metrics_file = plan.out_dir / "metrics.jsonl"
        self.last_rows: dict[str, dict] = {}
        self.log: JsonlAppender | None = None

    def open(self) -> None:
        """Start ``metrics.jsonl`` (rank 0), after a resume has cut it back to the step it continues from."""
        if self.fabric.global_rank == 0:
            self.log = JsonlAppender(self.metrics_file, fsync=False)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def record(self, row: dict, kind: str) -> None:
        self.fabric.log_dict(row, step=row["step"])
        self.last_rows[kind] = row
        if self.log is not None:
            self.log.write(row)

    # -- validation ---------------------------------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        """The objective's validation metrics (reduced over ranks) and, with ``--eval.generate_samples``, text metrics
        of greedy answers generated on rank 0 and broadcast, so every rank holds the same results."""
        fabric, plan = self.fabric, self.plan
        results = validate(fabric, self.model, plan.objective, self.data.val_loader, plan.eval.max_iters, step)
        can_generate = not (isinstance(fabric.strategy, FSDPStrategy) and fabric.world_size > 1)
        if plan.eval.generate_samples and plan.tokenizer is not None and can_generate:
            generated: dict[str, float] = {}
            if fabric.global_rank == 0:
                count = min(plan.eval.generate_samples, len(plan.val_data))
                eos = plan.tokenizer.eos_id
                samples = [plan.objective.prompt_and_reference(plan.val_data[i], eos) for i in range(count)]
                generated = generation_eval(
                    fabric,
                    self.model,
                    [s for s in samples if s is not None],
                    plan.tokenizer,
                    plan.eval.max_new_tokens or 50,
                    plan.out_dir / "eval" / f"step-{step:06d}.csv",
                    plan.eval.text_metrics,
                )
            results |= fabric.broadcast(generated, src=0) if fabric.world_size > 1 else generated
        return results

    def validate_and_keep_best(self, step: int) -> None:
        """Validate, log the row, and keep ``best/`` when the monitored metric improved (the same call on every
        rank)."""
        results = self.evaluate(step)
        self.record({"step": step, **results}, "val")
        self.fabric.print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        value = results.get(self.monitor)
        progress = self.progress
        if self.plan.checkpoint.save_best and value is not None and _is_better(value, progress.best_value, self.mode):
            progress.best_value, progress.best_step = value, step
            best = self.plan.out_dir / "best"
            self.plan.writer.write(self.fabric, self.model, best)
            if self.fabric.global_rank == 0:
                atomic_write_json(best / "best.json", {"step": step, self.monitor: value, "mode": self.mode})

    # -- step checkpoints ---------------------------------------------------------------------------------------------
    def save_step(self) -> Path:
        """A resumable checkpoint of the last finished step."""
        where = self.plan.out_dir / f"step-{self.progress.step:06d}"
        state = {**self.training_state, "progress": self.progress.__dict__}
        self.plan.writer.write(self.fabric, self.model, where, training_state=state)
        return where

    def save_and_prune(self) -> None:
        self.save_step()
        if self.fabric.global_rank == 0:
            prune_step_dirs(self.plan.out_dir, self.plan.checkpoint.keep_last)


def step_row(progress: Progress, data: RunData, means: dict[str, float], learning_rate: float, tokens_per_sec: float,
             extra: dict[str, float]) -> dict:  # fmt: skip
    """One training row of ``metrics.jsonl`` and the loggers."""
    return {
        "step": progress.step,
        "iter": progress.iter,
        "epoch": progress.iter / data.batches_per_epoch,
        **means,
        "learning_rate": learning_rate,
        "tokens": progress.tokens,
        "tokens_per_sec": tokens_per_sec,
        **extra,
    }
