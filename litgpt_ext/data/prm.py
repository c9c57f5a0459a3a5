"""``PrmData``: step-labelled rows for a process reward model (TRL's "stepwise supervision" format), as a litgpt
DataModule, and the one step tokenization that training and ``prm_score`` share.

A row: ``{"prompt": str, "completions": [step, ...], "labels": [bool | 0/1, ...], "question_id"?}`` (JSON list,
JSONL or a directory with train.* / val.*; ``distill_sql_label --target prm`` writes them). Tokens, as TRL's
``PRMTrainer`` builds them: ``[BOS] prompt step_1 sep step_2 sep ... step_n`` — the prompt, each step and the
separator tokenized **separately** and concatenated (no separator after the last step); the label of step k sits
at the last token of step k. Tokenizing pieces (rather than the joined text) keeps every step's end on a token
boundary whatever the separator, so a step position is never shared with the separator or the next step.

Over ``max_seq_length`` the prompt loses its start (BOS kept); if the steps alone still do not fit, the steps past
the limit are dropped with their labels (counted in ``stats["steps_dropped"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from litgpt_ext.data.batches import GroupedRowData, prm_collate
from litgpt_ext.data.encode import batch_encode, keep_end
from litgpt_ext.data.records import iter_rows
from litgpt_ext.errors import UserError


@dataclass
class StepTokens:
    input_ids: list[int]
    positions: list[int]
    """Index in ``input_ids`` of the last token of each kept step."""
    dropped: int = 0
    """Steps cut off by the length limit (the last ones)."""


def parse_steps(row: dict, path: Path, where: str) -> tuple[str, list[str]]:
    prompt, steps = row.get("prompt"), row.get("completions")
    if not isinstance(prompt, str):
        raise UserError(f"expected a string, got {type(prompt).__name__}", path, where, "prompt")
    if not isinstance(steps, list) or not steps:
        raise UserError("expected a non-empty list of step strings", path, where, "completions")
    for k, step in enumerate(steps):
        if not isinstance(step, str) or not step.strip():
            raise UserError(f"step {k + 1} is empty or not a string", path, where, "completions")
    return prompt, steps


def parse_step_labels(row: dict, n_steps: int, path: Path, where: str, soft: bool) -> list[float]:
    labels = row.get("labels")
    if not isinstance(labels, list):
        raise UserError(f"expected a list of booleans, got {type(labels).__name__}", path, where, "labels")
    if len(labels) != n_steps:
        raise UserError(f"{len(labels)} labels for {n_steps} steps", path, where, "labels")
    out = []
    for k, value in enumerate(labels):
        if isinstance(value, bool) or value in (0, 1) and isinstance(value, int):
            out.append(float(value))
        elif soft and isinstance(value, float) and 0.0 <= value <= 1.0:
            out.append(value)
        else:
            hint = "" if soft else " (fractions need --data.soft_labels true)"
            raise UserError(f"label {k + 1} is {value!r}, expected a boolean or 0/1{hint}", path, where, "labels")
    return out


def encode_steps(
    tokenizer, rows: list[tuple[str, list[str]]], separator: str, max_seq_length: int | None
) -> list[StepTokens]:
    """Token ids and step-end positions of ``(prompt, steps)`` rows (see the module docstring), in one batched
    tokenizer call."""
    sep = batch_encode(tokenizer, [separator], bos=False)[0] if separator else []
    prompts = batch_encode(tokenizer, [p for p, _ in rows], bos=None)
    flat = batch_encode(tokenizer, [s for _, steps in rows for s in steps], bos=False)
    out, at = [], 0
    for (_, steps), prompt in zip(rows, prompts, strict=True):
        pieces = flat[at : at + len(steps)]
        at += len(steps)
        body, ends = [], []
        for k, piece in enumerate(pieces):
            body += piece
            ends.append(len(body) - 1)
            if k + 1 < len(pieces):
                body += sep
        limit, dropped = max_seq_length, 0
        if limit and len(prompt) + len(body) > limit:
            head = 1 if tokenizer.bos_id is not None and prompt[:1] == [tokenizer.bos_id] else 0
            prompt = keep_end(prompt, min(len(prompt), max(limit - len(body), head)), tokenizer.bos_id)
            if len(prompt) + len(body) > limit:
                fits = [e for e in ends if len(prompt) + e < limit]
                dropped = len(ends) - len(fits)
                body, ends = (body[: fits[-1] + 1] if fits else []), fits
        out.append(StepTokens(prompt + body, [len(prompt) + e for e in ends], dropped))
    return out


@dataclass
class PrmData(GroupedRowData):
    """Stepwise-labelled rows for finetune_prm (see the module docstring)."""

    collate = staticmethod(prm_collate)

    soft_labels: bool = False
    """Accept fractional labels in [0, 1] (Monte-Carlo ``--mc soft``); the loss uses them as target probabilities."""

    max_seq_length: int | None = field(default=None, init=False, repr=False)
    step_separator: str = field(default="\n", init=False, repr=False)
    """Text between two steps (finetune_prm's ``--step_separator``)."""

    def connect(
        self, tokenizer=None, batch_size: int = 1, max_seq_length: int | None = None, step_separator: str = "\n", **kw
    ) -> None:
        self.tokenizer, self.batch_size, self.step_separator = tokenizer, batch_size, step_separator
        self.max_seq_length = None if max_seq_length in (None, -1) else max_seq_length

    def read(self, path: Path) -> list[dict]:
        rows = []
        for where, row in iter_rows(path):
            prompt, steps = parse_steps(row, path, where)
            labels = parse_step_labels(row, len(steps), path, where, self.soft_labels)
            group = row.get(self.group_column)
            rows.append(
                {
                    "prompt": prompt,
                    "steps": steps,
                    "labels": labels,
                    "group": str(group) if group not in (None, "") else prompt,
                    "id": str(row.get("id", f"{path.name}:{where}")),
                }
            )
        if not rows:
            raise UserError("no rows", path=path)
        return rows

    def setup(self, stage: str = "") -> None:
        if not self.step_separator:
            raise UserError("must not be empty (steps would run together)", field="step_separator")
        train, val = self.train_and_val_rows()
        self.train_dataset, self.val_dataset = self._encode(train), self._encode(val)
        steps = [len(s["step_labels"]) for s in self.train_dataset]
        self.stats.update(
            train=len(self.train_dataset),
            val=len(self.val_dataset),
            train_steps=sum(steps),
            train_positive_steps=sum(float(s["step_labels"].sum()) for s in self.train_dataset),
        )

    def _encode(self, rows: list[dict]) -> list[dict]:
        encoded = encode_steps(
            self.tokenizer, [(r["prompt"], r["steps"]) for r in rows], self.step_separator, self.max_seq_length
        )
        samples = []
        for row, tokens in zip(rows, encoded, strict=True):
            self.stats["steps_dropped"] = self.stats.get("steps_dropped", 0) + tokens.dropped
            if not tokens.positions:
                continue
            kept = len(tokens.positions)
            samples.append(
                {
                    "id": row["id"],
                    "input_ids": torch.tensor(tokens.input_ids, dtype=torch.long),
                    "positions": torch.tensor(tokens.positions, dtype=torch.long),
                    "step_labels": torch.tensor(row["labels"][:kept], dtype=torch.float32),
                    "group": row["group"],
                }
            )
        return samples
