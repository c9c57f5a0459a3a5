"""``OrmData``: labelled candidates for an outcome reward model, as a litgpt DataModule.

Rows come from a JSON list, JSONL or CSV: the labelled text-to-SQL rows ``distill_sql_label`` writes
(``{"question", "schema", "sql", "label", "question_id", ...}``) or any ``{"prompt", "response", "label"}`` rows.
Each row is rendered through the ORM prompt template (``--orm_prompt``; fields from the row) and tokenized with the
student's tokenizer; over ``max_seq_length`` the *start* is cut (BOS kept), because the end — the candidate and the
question the head answers — is what is scored. ``label`` must be 0/1 (``true``/``false`` accepted).

For the pairwise (Bradley-Terry) loss the training rows become (positive, negative) pairs of the same group
(``question_id``, else the prompt text): every combination, at most ``max_pairs_per_group`` per group (seeded).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from litgpt_ext.data.batches import GroupedRowData, orm_collate
from litgpt_ext.data.encode import batch_encode, keep_end
from litgpt_ext.data.records import iter_rows
from litgpt_ext.errors import UserError

SQL_PROMPT = "Question: {question}\nSQL: {sql}\nIs the SQL correct?"
TEXT_PROMPT = "{prompt}\n\nAnswer: {response}\n\nIs the answer correct?"


def default_prompt(row: dict) -> str:
    """The ORM prompt for a row's shape: the text-to-SQL one for labelled SQL rows, else prompt/response."""
    return SQL_PROMPT if "sql" in row else TEXT_PROMPT


def render_orm_prompt(template: str | None, row: dict, path: Path, where: str) -> str:
    """The text a reward model scores for ``row`` (``template`` None: the default for the row's shape)."""
    try:
        return (template or default_prompt(row)).format(**{k: "" if v is None else v for k, v in row.items()})
    except KeyError as err:
        raise UserError("missing (used by the ORM prompt)", path, where, str(err.args[0])) from None
    except (IndexError, ValueError) as err:
        raise UserError(f"bad ORM prompt template: {err}", field="orm_prompt") from None


def parse_label(value, path: Path, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return int(value.strip().lower() in ("1", "true"))
    raise UserError(f"expected 0/1, got {value!r}", path, where, "label")


@dataclass
class OrmData(GroupedRowData):
    """Labelled (prompt, candidate) rows for finetune_orm (see the module docstring)."""

    collate = staticmethod(orm_collate)

    label_column: str = "label"
    """Column holding the 0/1 label."""
    max_pairs_per_group: int = 16
    """Pairwise loss: at most this many (positive, negative) pairs per group."""

    max_seq_length: int | None = field(default=None, init=False, repr=False)
    orm_prompt: str | None = field(default=None, init=False, repr=False)
    prompts_used: set = field(default_factory=set, init=False, repr=False)
    """The templates the rows were rendered with (the defaults differ by row shape)."""
    pairwise: bool = field(default=False, init=False, repr=False)

    def connect(
        self,
        tokenizer=None,
        batch_size: int = 1,
        max_seq_length: int | None = None,
        orm_prompt: str | None = None,
        pairwise: bool = False,
        **kwargs,
    ) -> None:
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.max_seq_length = None if max_seq_length in (None, -1) else max_seq_length
        self.orm_prompt, self.pairwise = orm_prompt, pairwise

    def read(self, path: Path) -> list[dict]:
        rows = []
        for where, row in iter_rows(path):
            if self.label_column not in row:
                raise UserError(f"missing column (columns: {', '.join(map(str, row))})", path, where, self.label_column)
            text = render_orm_prompt(self.orm_prompt, row, path, where)
            self.prompts_used.add(self.orm_prompt or default_prompt(row))
            group = row.get(self.group_column)
            rows.append(
                {
                    "text": text,
                    "label": parse_label(row[self.label_column], path, where),
                    "group": str(group) if group not in (None, "") else text.split("\n")[0],
                    "id": str(row.get("id", f"{path.name}:{where}")),
                }
            )
        return rows

    def setup(self, stage: str = "") -> None:
        train, val = self.train_and_val_rows()
        train_samples, val_samples = self._encode(train), self._encode(val)
        self.stats = {
            "train": len(train_samples),
            "val": len(val_samples),
            "train_positive": sum(s["label"] for s in train_samples),
            "val_positive": sum(s["label"] for s in val_samples),
        }
        self.train_dataset = self._pairs(train_samples) if self.pairwise else train_samples
        self.val_dataset = val_samples
        if self.pairwise:
            self.stats["train_pairs"] = len(self.train_dataset)
            if not self.train_dataset:
                raise UserError("no group has both a positive and a negative row: nothing to pair", path=self.path)

    def _encode(self, rows: list[dict]) -> list[dict]:
        ids = batch_encode(self.tokenizer, [r["text"] for r in rows], bos=None)
        limit = self.max_seq_length
        samples, cut = [], 0
        for row, tokens in zip(rows, ids, strict=True):
            if limit and len(tokens) > limit:
                tokens = keep_end(tokens, limit, self.tokenizer.bos_id)
                cut += 1
            samples.append(
                {
                    "id": row["id"],
                    "input_ids": torch.tensor(tokens, dtype=torch.long),
                    "label": row["label"],
                    "group": row["group"],
                }
            )
        self.stats["truncated"] = self.stats.get("truncated", 0) + cut
        return samples

    def _pairs(self, samples: list[dict]) -> list[dict]:
        groups: dict[str, tuple[list, list]] = {}
        for s in samples:
            groups.setdefault(s["group"], ([], []))[1 - s["label"]].append(s)
        rng = random.Random(self.seed)
        pairs = []
        for name in sorted(groups):
            pos, neg = groups[name]
            combos = [(p, n) for p in pos for n in neg]
            if len(combos) > self.max_pairs_per_group:
                combos = rng.sample(combos, self.max_pairs_per_group)
            pairs += [{"pair": True, "pos": p, "neg": n, "group": name} for p, n in combos]
        return pairs
