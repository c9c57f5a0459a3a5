"""The token sequences pruning scores a model on: plain text, rows of text, or any data ``finetune_sft`` reads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from litgpt.data import DataModule

from litgpt_ext.errors import UserError, require

TEXT_FIELDS = ("text", "prompt")
"""Fields of a JSONL row that are taken as calibration text, in this order (other rows go through ``SFTData``)."""


def calibration_samples(
    data: DataModule | Path | str | None, tokenizer, checkpoint_dir: Path, count: int, max_seq_length: int
) -> list[torch.Tensor]:
    """Up to ``count`` token sequences of at most ``max_seq_length`` tokens, in the teacher's tokenizer."""
    data = require(data, "data")
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise UserError("no such file or directory", path=path, field="data")
        if path.suffix == ".txt":
            return _text_pieces(path.read_text(encoding="utf-8"), tokenizer, count, max_seq_length, path)
        if path.suffix == ".jsonl" and _text_rows(path):
            return _text_rows_samples(path, tokenizer, count, max_seq_length)
    return _datamodule_samples(data, tokenizer, checkpoint_dir, count, max_seq_length)


def _text_pieces(text: str, tokenizer, count: int, max_seq_length: int, path: Path) -> list[torch.Tensor]:
    ids = tokenizer.encode(text, bos=False).tolist()
    body = max_seq_length - 1
    pieces = [ids[i : i + body] for i in range(0, len(ids), body)][:count]
    if not pieces or len(pieces[0]) < 2:
        raise UserError("has no text to score on", path=path, field="data")
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    return [torch.tensor(bos + piece) for piece in pieces if len(piece) > 1]


def _text_rows(path: Path) -> bool:
    with path.open(encoding="utf-8") as fh:
        first = next((line for line in fh if line.strip()), "")
    try:
        row = json.loads(first)
    except ValueError:
        raise UserError("line 1 is not JSON", path=path, field="data") from None
    return isinstance(row, dict) and any(isinstance(row.get(f), str) for f in TEXT_FIELDS) and "output" not in row


def _text_rows_samples(path: Path, tokenizer, count: int, max_seq_length: int) -> list[torch.Tensor]:
    samples = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError("not JSON", path=path, line=line_no, field="data") from None
            text = next((row[f] for f in TEXT_FIELDS if isinstance(row, dict) and isinstance(row.get(f), str)), None)
            if text is None:
                raise UserError(f"needs a string field {' or '.join(TEXT_FIELDS)}", path=path, line=line_no)
            ids = tokenizer.encode(text, bos=True)[:max_seq_length]
            if len(ids) > 1:
                samples.append(ids)
            if len(samples) == count:
                break
    if not samples:
        raise UserError("has no text to score on", path=path, field="data")
    return samples


def _datamodule_samples(data, tokenizer, checkpoint_dir: Path, count: int, max_seq_length: int) -> list[torch.Tensor]:
    from litgpt_ext.data.modules import datasets_of, ready_data, resolve_data

    module = ready_data(resolve_data(data), tokenizer, checkpoint_dir, 1, max_seq_length)
    train, _ = datasets_of(module)
    samples = []
    for i in range(min(count, len(train))):
        ids = train[i]["input_ids"][:max_seq_length]
        if len(ids) > 1:
            samples.append(ids)
    if not samples:
        raise UserError("has no training samples to score on", field="data")
    return samples
