"""``litgpt-ext orm_score`` / ``prm_score``: score every row of a JSONL file with a trained reward model, in batches.

Input, sharding and output are ``generate_batch``'s: the file is streamed (never loaded whole), ``--shard I/N`` (or
the SLURM array variables) takes every N-th line, each output line is the input row plus ``"score"`` (and ``_line``
for ``generate_merge``), appended and fsync'd per batch, and a rerun skips ids already scored. Rows are read a window
at a time and sorted by token length inside it, so each batch holds similar lengths and little padding; only the
last token of each row reaches the reward head (for a process reward model: the last token of each step).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from litgpt.tokenizer import Tokenizer
from tqdm import tqdm

from litgpt_ext.data.batches import orm_collate, prm_collate
from litgpt_ext.data.encode import batch_encode, keep_end
from litgpt_ext.data.orm import render_orm_prompt
from litgpt_ext.data.prm import encode_steps, parse_steps
from litgpt_ext.errors import UserError, require
from litgpt_ext.evaluate.step_scores import AGGREGATES, Aggregate, aggregate
from litgpt_ext.generate.command import shard_output
from litgpt_ext.generate.inputs import PromptRecord, parse_shard, read_prompts
from litgpt_ext.io import JsonlAppender, read_jsonl_repairing
from litgpt_ext.precision import compute_dtype
from litgpt_ext.reward.model import load_orm, score_rows


def score_batch(model, objective, samples: list[dict], device) -> list[float]:
    batch = orm_collate(samples)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return score_rows(model, objective, batch).float().tolist()


def score_step_batch(model, objective, samples: list[dict], device) -> list[list[float]]:
    """Each row's step scores: one forward, only the step ends reach the head."""
    batch = prm_collate(samples)
    flat = score_rows(model, objective, {"input_ids": batch["input_ids"].to(device), "last": batch["flat"].to(device)})
    out, at = [], 0
    for s in samples:
        out.append(flat[at : at + len(s["positions"])].float().tolist())
        at += len(s["positions"])
    return out


def orm_score(
    checkpoint_dir: Path,
    input: Path | None = None,
    output: Path | None = None,
    batch_size: int = 32,
    window: int | None = None,
    max_seq_length: int | None = None,
    precision: str = "32-true",
    device: str | None = None,
    shard: str | None = None,
    on_error: str = "record",
) -> None:
    """Add a reward-model ``score`` in [0, 1] to every row of a JSONL file (streamed, resumable, shardable).

    Args:
        checkpoint_dir: A finetune_orm checkpoint (``final/`` or ``best/``: litgpt weights + orm_config.json).
        input: JSONL rows with the fields the ORM prompt uses (e.g. distill_sql_label's ``question`` and ``sql``).
        output: JSONL output: each input row plus ``score``; a rerun skips ids already there.
        batch_size: Rows per forward.
        window: Rows read ahead and sorted by length before batching (default: 16 x batch_size).
        max_seq_length: Longer rows lose their start (BOS kept); default: the model's context.
        precision: bf16-true, 16-true or 32-true.
        device: ``cpu``, ``cuda``, ``cuda:1`` (default: cuda if available).
        shard: ``I/N`` to score every N-th line starting at line I+1 (default: SLURM array variables, if set).
        on_error: ``record`` writes an error line for a bad input row and continues; ``stop`` stops at it.
    """
    score_file("outcome", checkpoint_dir, input, output, batch_size, window, max_seq_length, precision, device,
               shard, on_error, None)  # fmt: skip


def prm_score(
    checkpoint_dir: Path,
    input: Path | None = None,
    output: Path | None = None,
    aggregate: Aggregate = "min",
    batch_size: int = 32,
    window: int | None = None,
    max_seq_length: int | None = None,
    precision: str = "32-true",
    device: str | None = None,
    shard: str | None = None,
    on_error: str = "record",
) -> None:
    """Add per-step scores (``step_scores``) and their aggregate (``score``) to every row of a JSONL file, with a
    process reward model (streamed, resumable, shardable, as orm_score).

    Args:
        checkpoint_dir: A finetune_prm checkpoint (``final/`` or ``best/``).
        input: JSONL of stepwise rows: ``prompt`` and ``completions`` (the steps; ``labels`` not needed), as
            distill_sql_label --target prm writes them (``--version eval`` for every candidate).
        output: JSONL output: each input row plus ``step_scores``, ``score`` and ``aggregate``; a rerun skips ids
            already there.
        aggregate: How ``score`` is made from the step scores: ``min`` (the weakest step), ``prod``, ``last`` or
            ``mean``; orm_rerank reports every aggregate from ``step_scores`` anyway.
        batch_size: Rows per forward.
        window: Rows read ahead and sorted by length before batching (default: 16 x batch_size).
        max_seq_length: Longer rows lose their prompt's start (BOS kept); a row whose steps alone do not fit is
            an error record. Default: the model's context.
        precision: bf16-true, 16-true or 32-true.
        device: ``cpu``, ``cuda``, ``cuda:1`` (default: cuda if available).
        shard: ``I/N`` to score every N-th line starting at line I+1 (default: SLURM array variables, if set).
        on_error: ``record`` writes an error line for a bad input row and continues; ``stop`` stops at it.
    """
    if aggregate not in AGGREGATES:
        raise UserError(f"use one of {', '.join(AGGREGATES)}", field="aggregate")
    score_file("process", checkpoint_dir, input, output, batch_size, window, max_seq_length, precision, device,
               shard, on_error, aggregate)  # fmt: skip


def score_file(
    kind, checkpoint_dir, input, output, batch_size, window, max_seq_length, precision, device, shard, on_error, how
) -> None:
    """The streaming, batching, sharding and resume both scoring commands share; ``kind`` says which model reads
    which rows (``outcome``: the ORM prompt, one score; ``process``: prompt + steps, a score per step)."""
    checkpoint_dir = Path(checkpoint_dir)
    input, output = Path(require(input, "input")), Path(require(output, "output"))
    if not input.is_file():
        raise UserError("file not found", path=input, field="input")
    if batch_size < 1:
        raise UserError(f"must be >= 1, got {batch_size}", field="batch_size")
    if window is not None and window < batch_size:
        raise UserError(f"must be >= batch_size ({batch_size}), got {window}", field="window")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, objective = load_orm(checkpoint_dir, dev, compute_dtype(precision), kind)
    tokenizer = Tokenizer(checkpoint_dir)
    limit = min(max_seq_length or model.config.block_size, model.config.block_size)
    this_shard = parse_shard(shard)
    out_path = shard_output(output, this_shard)
    done = {str(r["id"]) for r in read_jsonl_repairing(out_path)}
    separator = getattr(objective, "separator", "\n")

    def render(record: dict, line: int) -> str:
        if kind == "process":
            prompt, steps = parse_steps(record, input, f"line {line}")
            return prompt + separator.join(steps)
        return render_orm_prompt(objective.orm_prompt, record, input, f"line {line}")

    writer = JsonlAppender(out_path)
    bar = tqdm(desc=f"{'prm' if kind == 'process' else 'orm'}_score", unit="row", dynamic_ncols=True)
    stats = {"rows": 0, "errors": 0, "tokens": 0}
    t0 = time.perf_counter()

    def encode(items: list[PromptRecord]) -> list[dict | str]:
        """A sample per item, or the error message of a row that cannot be scored."""
        if kind == "outcome":
            ids = batch_encode(tokenizer, [item.text for item in items], bos=None)
            return [{"input_ids": torch.tensor(keep_end(i, limit, tokenizer.bos_id)), "label": 0, "group": ""}
                    for i in ids]  # fmt: skip
        rows = [parse_steps(item.record, input, f"line {item.line}") for item in items]
        samples = []
        for item, tokens in zip(items, encode_steps(tokenizer, rows, separator, limit), strict=True):
            if tokens.dropped:
                samples.append(f"{input}:line {item.line}: completions: the steps alone are longer than {limit} tokens")
                continue
            samples.append({"id": item.id, "input_ids": torch.tensor(tokens.input_ids),
                            "positions": torch.tensor(tokens.positions), "step_labels": torch.zeros(0)})  # fmt: skip
        return samples

    def flush(items: list[PromptRecord]) -> None:
        samples = encode(items)
        ok = []
        for k, sample in enumerate(samples):
            if isinstance(sample, str):
                if on_error == "stop":
                    raise UserError(sample)
                writer.write({"id": items[k].id, "_line": items[k].line, "error": sample})
                stats["errors"] += 1
            else:
                ok.append(k)
        order = sorted(ok, key=lambda k: len(samples[k]["input_ids"]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = [samples[k] for k in chunk]
            if kind == "outcome":
                results = [{"score": round(v, 6)} for v in score_batch(model, objective, batch, dev)]
            else:
                results = [{"step_scores": [round(v, 6) for v in steps], "score": round(aggregate(steps, how), 6),
                            "aggregate": how} for steps in score_step_batch(model, objective, batch, dev)]  # fmt: skip
            for k, result in zip(chunk, results, strict=True):
                writer.write({**items[k].record, "id": items[k].id, **result, "_line": items[k].line})
            stats["rows"] += len(chunk)
            stats["tokens"] += sum(len(samples[k]["input_ids"]) for k in chunk)
            bar.update(len(chunk))
            bar.set_postfix(rows_s=f"{stats['rows'] / (time.perf_counter() - t0):,.0f}", refresh=False)

    pending: list[PromptRecord] = []
    try:
        for item in read_prompts(input, render, this_shard, done, on_error):
            if isinstance(item, dict):  # a bad line: an error record, as generate_batch writes
                writer.write(item)
                stats["errors"] += 1
                continue
            pending.append(item)
            if len(pending) >= (window or 16 * batch_size):
                flush(pending)
                pending = []
        if pending:
            flush(pending)
    finally:
        writer.close()
        bar.close()
    elapsed = time.perf_counter() - t0
    print(
        f"{stats['rows']:,} rows scored in {elapsed:.1f}s ({stats['rows'] / max(elapsed, 1e-9):,.0f} rows/s, "
        f"{stats['tokens']:,} tokens), {stats['errors']} error records -> {out_path}"
    )
