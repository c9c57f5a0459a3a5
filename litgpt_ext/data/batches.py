"""How samples become batches: padding, answer positions, pairs and reward rows, next to the data they collate.

The DataModules hand these to their loaders and the objectives to the training loop; both import them from here, so
data never imports training."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from litgpt.data import DataModule
from torch import nn
from torch.utils.data import DataLoader


def flat_positions(mask: torch.Tensor) -> torch.Tensor:
    """Row-major indices of the ``True`` entries of a ``(B, T)`` mask. Call it in ``collate`` (on the CPU): on a GPU,
    ``nonzero`` waits for the device, which must not happen once per micro-batch."""
    return mask.reshape(-1).nonzero().squeeze(1)


def pad_collate(
    samples: list[dict], pad_id: int = 0, ignore_index: int = -100, max_seq_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` with ``pad_id`` and ``labels`` with ``ignore_index``; keep true ``lengths`` and the
    flat positions whose next token is supervised (``answer_index``, computed here on the CPU)."""
    ids = [s["input_ids"][:max_seq_length] if max_seq_length else s["input_ids"] for s in samples]
    labels = [s["labels"][: len(i)] for s, i in zip(samples, ids, strict=True)]
    padded_labels = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=ignore_index)
    return {
        "input_ids": nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id),
        "labels": padded_labels,
        "lengths": torch.tensor([len(i) for i in ids], dtype=torch.long),
        "answer_index": flat_positions(padded_labels[:, 1:] != ignore_index),
    }


def pair_collate(samples: list[dict], pad_id: int = 0, chosen_prompt: bool = False) -> dict[str, torch.Tensor]:
    """Stack chosen rows then rejected rows; find (on the CPU) the flat positions the LM head must see.

    Position ``t`` of a row predicts token ``t + 1``; it is an *answer* position when that token is part of the
    answer. ``chosen_prompt`` also selects the chosen rows' prompt positions (every position but the last).
    """
    n = len(samples)
    prompts = [s["prompt_ids"] for s in samples] * 2
    answers = [s["chosen_ids"] for s in samples] + [s["rejected_ids"] for s in samples]
    rows = [torch.cat([p, a]) for p, a in zip(prompts, answers, strict=True)]
    input_ids = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    prompt_lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    t = torch.arange(input_ids.size(1) - 1).unsqueeze(0)
    context = t < (lengths - 1).unsqueeze(1)  # every position that has a next token in its row
    answer = context & (t >= (prompt_lengths - 1).unsqueeze(1))
    select = answer.clone()
    if chosen_prompt:
        select[:n] = context[:n]
    flat = flat_positions(select)
    width = input_ids.size(1) - 1
    batch = {
        "input_ids": input_ids,
        "lengths": lengths,
        "pairs": torch.tensor(n),
        "flat": flat,
        "targets": input_ids[:, 1:].reshape(-1).index_select(0, flat),
        "row": torch.div(flat, width, rounding_mode="floor"),
        "is_answer": answer.reshape(-1).index_select(0, flat),
        "answer_tokens": torch.tensor([len(a) for a in answers], dtype=torch.float32),
        "context": context,
    }
    if "ref_logps" in samples[0]:
        batch["ref_logps"] = torch.stack([s["ref_logps"] for s in samples])
    return batch


def orm_collate(samples: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Rows (or pairs: positives then negatives, 2B rows), right-padded; ``last`` = flat index of each row's last
    token (computed here, on the CPU)."""
    if samples and samples[0].get("pair"):
        rows = [s["pos"] for s in samples] + [s["neg"] for s in samples]
    else:
        rows = samples
    ids = [r["input_ids"] for r in rows]
    input_ids = nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "lengths": lengths,
        "last": torch.arange(len(rows)) * input_ids.size(1) + lengths - 1,
        "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
        "groups": torch.tensor([zlib.crc32(r["group"].encode()) for r in rows], dtype=torch.long),
        "pairs": torch.tensor(len(samples) if samples and samples[0].get("pair") else 0),
    }


def prm_collate(samples: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded rows; ``flat`` = row-major index of every step end (row by row, steps in order), with its
    label and its row's key (``rows``, unique per sample id, for per-row metrics over a whole validation set)."""
    ids = [s["input_ids"] for s in samples]
    input_ids = nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id)
    T = input_ids.size(1)
    flat = torch.cat([s["positions"] + b * T for b, s in enumerate(samples)])
    keys = [zlib.crc32(s["id"].encode()) for s in samples]
    return {
        "input_ids": input_ids,
        "lengths": torch.tensor([len(i) for i in ids], dtype=torch.long),
        "flat": flat,
        "step_labels": torch.cat([s["step_labels"] for s in samples]),
        "rows": torch.cat([torch.full((len(s["positions"]),), k, dtype=torch.long) for s, k in zip(samples, keys)]),
    }


@dataclass
class RowData(DataModule):
    """Base of this package's file-backed DataModules: the state they fill while connected and set up, and their
    loaders — ``train_dataset`` / ``val_dataset`` samples collated by the subclass's ``collate`` (one of the
    functions above, as a ``staticmethod``), ``batch_size`` at a time, training batches shuffled."""

    tokenizer: object = field(default=None, init=False, repr=False)
    batch_size: int = field(default=1, init=False, repr=False)
    train_dataset: Sequence = field(default_factory=list, init=False, repr=False)
    val_dataset: Sequence = field(default_factory=list, init=False, repr=False)
    stats: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__()
        self.path = Path(self.path)

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, collate_fn=type(self).collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)


@dataclass
class GroupedRowData(RowData):
    """A :class:`RowData` of rows grouped by question (reward models' candidates): the validation split takes whole
    groups, so no question is on both sides."""

    path: Path = Path("data")
    """A file of rows (the formats: the class's docstring), or a directory with train.* (+ val.*)."""
    val_path: Path | None = None
    """A separate validation file (default: val.* of the directory, else a split of the training rows by group)."""
    group_column: str = "question_id"
    """Column grouping the rows of one question (validation split, pairwise loss); default: the prompt text."""
    val_split_fraction: float = 0.1
    """Fraction of groups split off for validation when there is no validation file (seeded, stable)."""
    seed: int = 42
    """Seed of the split (and of the ORM's pair sampling)."""

    def read(self, path: Path) -> list[dict]:
        """The rows of one file, each with its ``group``."""
        raise NotImplementedError

    def train_and_val_rows(self) -> tuple[list[dict], list[dict]]:
        """The training and validation rows: from their files, or the validation groups split off the training
        rows; one line naming the empty side if either is empty."""
        from litgpt_ext.data.split import split_by_key, table_files
        from litgpt_ext.errors import UserError

        if self.tokenizer is None:
            raise RuntimeError(f"{type(self).__name__}.connect(tokenizer=...) must be called before setup()")
        train_file, val_file = table_files(self.path)
        val_file = Path(self.val_path) if self.val_path is not None else val_file
        train = self.read(train_file)
        if val_file is not None:
            val = self.read(val_file)
        else:
            train, val = split_by_key(train, lambda r: r["group"], self.seed, self.val_split_fraction)
        if not train or not val:
            raise UserError(f"no {'training' if not train else 'validation'} rows", path=self.path)
        return train, val
