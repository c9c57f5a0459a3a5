"""``litgpt-ext distill_tokenize``: litgpt JSON -> packed ``train.pt`` / ``val.pt`` with the student's tokenizer.

Tokenization is exactly what ``finetune_sft`` would do with the JSON (same prompt style, BOS/EOS rules, answer-only
labels and prompt-first truncation): both go through :func:`litgpt_ext.data.fast_encode.encode_packed`, which
batch-encodes with the backend's threads and tokenizes a prompt template's constant text once. The prompt style is written beside the data so training and later generation
use the same one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from litgpt.prompts import PromptStyle, save_prompt_style
from litgpt.tokenizer import Tokenizer

from litgpt_ext.checkpoint_files import tokenizer_record
from litgpt_ext.checks import at_least, check_checkpoint_dir, fit_to_context
from litgpt_ext.data.chat import CHAT_FORMATS, data_format, load_conversations
from litgpt_ext.data.chat_encode import encode_conversations, renderer_for
from litgpt_ext.data.fast_encode import encode_packed
from litgpt_ext.data.records import load_columns
from litgpt_ext.errors import UserError, require
from litgpt_ext.io import atomic_path, atomic_write_json
from litgpt_ext.prompts import data_style, resolve_prompt_style


def _percentiles(lengths: torch.Tensor) -> dict[str, int]:
    if not len(lengths):
        return {}
    q = torch.quantile(lengths.float(), torch.tensor([0.5, 0.9, 0.99]))
    return {"p50": int(q[0]), "p90": int(q[1]), "p99": int(q[2]), "max": int(lengths.max())}


def tokenize_split(
    source: Path,
    tokenizer: Tokenizer,
    style: PromptStyle,
    max_seq_length: int | None,
    mask_prompt: bool,
    ignore_index: int,
    chat: tuple[str, str] | None = None,
) -> tuple[dict, dict]:
    """Packed samples of one split file; ``chat`` = (format, train_on) for a chat file."""
    t0 = time.perf_counter()
    if chat is not None:
        conversations = load_conversations(source, chat[0])
        t1 = time.perf_counter()
        packed, stats = encode_conversations(
            renderer_for(style, tokenizer), conversations, source, max_seq_length, chat[1], ignore_index
        )
        return packed, _finish_stats(packed, stats, t0, t1)
    cols = load_columns(source)
    t1 = time.perf_counter()
    packed, stats = encode_packed(
        tokenizer,
        style,
        cols.instruction,
        cols.input,
        cols.output,
        max_seq_length=max_seq_length,
        mask_prompt=mask_prompt,
        ignore_index=ignore_index,
        ids=cols.id,
        source=source,
    )
    return packed, _finish_stats(packed, stats, t0, t1)


def _finish_stats(packed: dict, stats: dict, t0: float, t1: float) -> dict:
    lengths = packed["offsets"][1:] - packed["offsets"][:-1]
    stats.update(
        examples=len(lengths),
        **_percentiles(lengths),
        seconds={"read": round(t1 - t0, 3), "tokenize": round(time.perf_counter() - t1, 3)},
    )
    return stats


def distill_tokenize(
    data_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    out_dir: Path | None = None,
    prompt_style: str | None = None,
    max_seq_length: int | None = None,
    mask_prompt: bool = True,
    ignore_index: int = -100,
    format: str = "auto",
    train_on: str = "all_assistant",
) -> None:
    """Pre-tokenize train.json / val.json (or chat train.jsonl / val.jsonl) with the student's tokenizer into
    train.pt / val.pt.

    Args:
        data_dir: Directory with train.json (and val.json), as written by distill_convert; or train.jsonl (and
            val.jsonl) of chat rows, as ``distill_convert --format messages`` writes them.
        checkpoint_dir: The student checkpoint (its tokenizer, and its prompt_style.yaml if present).
        out_dir: Where train.pt / val.pt / prompt_style.yaml / tokenize_stats.json go (default: data_dir).
        prompt_style: litgpt prompt style name, ``chat_template`` (the checkpoint's Jinja template) or ``auto``:
            the checkpoint's prompt_style.yaml, else its chat template, else litgpt's style for the model's name,
            else alpaca (a base model). The choice and its reason are printed.
        max_seq_length: Truncate longer samples (prompt first, answer kept); also the length used in training.
            Default and upper bound: the student's context (``block_size``); a larger value is lowered with a
            warning.
        mask_prompt: Answer-only labels (prompt tokens ignored in the loss).
        ignore_index: Label value of ignored positions.
        format: ``auto`` (by the file's shape), ``alpaca``, ``messages`` (OpenAI) or ``sharegpt``.
        train_on: Chat data: ``all_assistant`` turns carry the loss, or only the ``last_assistant`` one.
    """
    data_dir, checkpoint_dir = Path(require(data_dir, "data_dir")), Path(require(checkpoint_dir, "checkpoint_dir"))
    out_dir = Path(out_dir) if out_dir else data_dir
    at_least("max_seq_length", max_seq_length, 2)
    check_checkpoint_dir(checkpoint_dir)
    max_seq_length = fit_to_context("max_seq_length", max_seq_length, checkpoint_dir)
    sources = {}
    for split in ("train", "val"):
        found = [data_dir / f"{split}{s}" for s in (".json", ".jsonl") if (data_dir / f"{split}{s}").is_file()]
        if len(found) > 1:
            raise UserError(f"both {split}.json and {split}.jsonl here: keep one", path=data_dir, field="data_dir")
        if found:
            sources[split] = found[0]
    if "train" not in sources:
        raise UserError("no train.json or train.jsonl here", path=data_dir, field="data_dir")
    kind = data_format(sources["train"], format)
    chat = (kind, train_on) if kind in CHAT_FORMATS else None
    tokenizer = Tokenizer(checkpoint_dir)
    # explicit name -> the checkpoint's prompt_style.yaml -> its chat template -> litgpt's style for its name ->
    # alpaca (SFTData's default for litgpt JSON), as finetune_sft would pick it
    style = resolve_prompt_style(prompt_style, checkpoint_dir, fallback=lambda: data_style("litgpt"))
    report = {"prompt_style": type(style).__name__, "max_seq_length": max_seq_length, "format": kind}
    t0 = time.perf_counter()
    for split, source in sources.items():
        packed, stats = tokenize_split(source, tokenizer, style, max_seq_length, mask_prompt, ignore_index, chat)
        packed["tokenizer"] = tokenizer_record(tokenizer, checkpoint_dir)
        t_write = time.perf_counter()
        with atomic_path(out_dir / f"{split}.pt") as tmp:
            torch.save(packed, tmp)
        stats["seconds"]["write"] = round(time.perf_counter() - t_write, 3)
        report[split] = stats
    report["seconds"] = round(time.perf_counter() - t0, 2)
    save_prompt_style(style, out_dir)
    atomic_write_json(out_dir / "tokenize_stats.json", report)
    for split in ("train", "val"):
        if split in report:
            s = report[split]
            cuts = (
                f"prompt truncated {s['prompt_truncated']:,}, answer truncated {s['response_truncated']:,}"
                if "prompt_truncated" in s
                else f"turns dropped {s['turns_dropped']:,}, reply truncated {s['reply_truncated']:,}, "
                f"conversations dropped {s['dropped']:,}"
            )
            print(
                f"{split}: {s['examples']:,} samples, length p50/p90/p99/max {s.get('p50')}/{s.get('p90')}/"
                f"{s.get('p99')}/{s.get('max')}, {cuts}"
            )
    print(f"tokenized in {report['seconds']}s -> {out_dir}/train.pt (prompt style {report['prompt_style']})")
