"""``litgpt-ext orm_score``: score every row of a JSONL file with a trained reward model, in batches.

Input, sharding and output are ``generate_batch``'s: the file is streamed (never loaded whole), ``--shard I/N`` (or
the SLURM array variables) takes every N-th line, each output line is the input row plus ``"score"`` (and ``_line``
for ``generate_merge``), appended and fsync'd per batch, and a rerun skips ids already scored. Rows are read a window
at a time and sorted by token length inside it, so each batch holds similar lengths and little padding; only the
last token of each row reaches the reward head.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from litgpt.tokenizer import Tokenizer
from tqdm import tqdm

from litgpt_ext.data.encode import batch_encode, keep_end
from litgpt_ext.data.orm import render_orm_prompt
from litgpt_ext.errors import UserError, require
from litgpt_ext.generate.command import DTYPES, shard_output
from litgpt_ext.generate.inputs import PromptRecord, parse_shard, read_prompts
from litgpt_ext.io import JsonlAppender, read_jsonl_repairing
from litgpt_ext.reward.model import load_orm, score_rows
from litgpt_ext.training.objectives.orm import orm_collate


def score_batch(model, objective, samples: list[dict], device) -> list[float]:
    batch = orm_collate(samples)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return score_rows(model, objective, batch).float().tolist()


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
    checkpoint_dir = Path(checkpoint_dir)
    input, output = Path(require(input, "input")), Path(require(output, "output"))
    if not input.is_file():
        raise UserError("file not found", path=input, field="input")
    if batch_size < 1:
        raise UserError(f"must be >= 1, got {batch_size}", field="batch_size")
    if window is not None and window < batch_size:
        raise UserError(f"must be >= batch_size ({batch_size}), got {window}", field="window")
    if precision not in DTYPES:
        raise UserError(f"use one of {sorted(DTYPES)}", field="precision")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, objective = load_orm(checkpoint_dir, dev, DTYPES[precision])
    tokenizer = Tokenizer(checkpoint_dir)
    limit = min(max_seq_length or model.config.block_size, model.config.block_size)
    this_shard = parse_shard(shard)
    out_path = shard_output(output, this_shard)
    done = {str(r["id"]) for r in read_jsonl_repairing(out_path)}

    def render(record: dict, line: int) -> str:
        return render_orm_prompt(objective.orm_prompt, record, input, f"line {line}")

    writer = JsonlAppender(out_path)
    bar = tqdm(desc="orm_score", unit="row", dynamic_ncols=True)
    stats = {"rows": 0, "errors": 0, "tokens": 0}
    t0 = time.perf_counter()

    def flush(items: list[PromptRecord]) -> None:
        ids = batch_encode(tokenizer, [item.text for item in items], bos=None)
        ids = [keep_end(i, limit, tokenizer.bos_id) for i in ids]
        order = sorted(range(len(items)), key=lambda k: len(ids[k]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            samples = [{"input_ids": torch.tensor(ids[k]), "label": 0, "group": ""} for k in chunk]
            for k, score in zip(chunk, score_batch(model, objective, samples, dev), strict=True):
                writer.write({**items[k].record, "id": items[k].id, "score": round(score, 6), "_line": items[k].line})
            stats["rows"] += len(chunk)
            stats["tokens"] += sum(len(ids[k]) for k in chunk)
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
