"""``PreferenceData``: chosen/rejected pairs for DPO and ORPO, as a litgpt DataModule.

``--data pairs.jsonl`` (or ``--data PreferenceData --data.path P``) where P is a JSON list, JSONL or CSV of
``{"prompt", "chosen", "rejected"}`` rows (+ optional ``"system"``, ``"input"``, ``"id"``), or a directory with
``train.*`` and ``val.*``. TRL's conversational rows work as they are: an explicit prompt (``prompt`` a list of
messages, ``chosen`` / ``rejected`` a list with the assistant's turn, or its text) and the implicit-prompt form
(no ``prompt``; ``chosen`` and ``rejected`` whole conversations whose shared first turns are the prompt, as in
TRL's own preference datasets). Columns can be renamed (``--data.prompt_column question``). Without validation rows a
fraction is split off per row key (the ``id``, else the row's text), so the split does not move when rows are added.

Tokenization (as TRL does it, in litgpt's idiom): the prompt goes through the student's prompt style (with the
system prompt and litgpt's ``input`` field where present) and litgpt's BOS rule; each response is tokenized on its
own and ends with EOS. ``max_prompt_length`` keeps BOS and the prompt's *end* (the part that cues the answer);
``max_length`` then cuts responses (which lose their EOS). A pair whose prompt alone fills ``max_length`` cannot be
trained on and is dropped, and so is a pair whose two answers are equal — both counted and reported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from litgpt.prompts import PromptStyle

from litgpt_ext.chat_template import ChatTemplateStyle
from litgpt_ext.data.batches import RowData, pair_collate
from litgpt_ext.data.chat import parse_turns
from litgpt_ext.data.chat_encode import located, renderer_for
from litgpt_ext.data.encode import batch_encode, keep_end, with_eos
from litgpt_ext.data.records import iter_rows, text_field
from litgpt_ext.data.split import split_by_key, table_files
from litgpt_ext.errors import UserError
from litgpt_ext.prompts import apply_style


@dataclass
class Pair:
    """One preference row, as text."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    system: str | None = None
    input: str = ""
    has_id: bool = False
    messages: list[dict] | None = None
    """The prompt as turns (a conversational row); None for a text prompt."""
    where: str = ""

    @property
    def key(self) -> str:
        """What the validation split is decided by: the row's own id, else its text (never its position)."""
        return self.id if self.has_id else "\x00".join((self.prompt, self.input, self.chosen, self.rejected))

    def prompt_turns(self) -> list[dict]:
        """The prompt as turns (a text prompt is a user turn, after the system turn when there is one)."""
        if self.messages is not None:
            return self.messages
        text = f"{self.prompt}\n\n{self.input}" if self.input else self.prompt
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user", "content": text}]


def _turn_ids(renderer, pair: Pair) -> tuple[list[int], list[int], list[int]]:
    turns = pair.prompt_turns()
    return renderer.prompt_ids(turns), renderer.reply_ids(turns, pair.chosen), renderer.reply_ids(turns, pair.rejected)


def _completion(value, path, where: str, field: str) -> str:
    """A conversational completion: the assistant's text, or a list holding its one turn."""
    if isinstance(value, str):
        if not value.strip():
            raise UserError("empty", path=path, line=where, field=field)
        return value
    turns = parse_turns(value, path, where, field)
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        roles = ", ".join(t["role"] for t in turns)
        raise UserError(f"expected one assistant turn, got {len(turns)} ({roles})", path=path, line=where, field=field)
    if not turns[0]["content"].strip():
        raise UserError("empty", path=path, line=where, field=f"{field}[0].content")
    return turns[0]["content"]


def conversational_pair(row: dict, columns: tuple[str, str, str], path, where: str) -> tuple[list[dict], str, str]:
    """``(prompt turns, chosen, rejected)`` of a TRL conversational row, explicit or implicit prompt."""
    prompt_col, chosen_col, rejected_col = columns
    if prompt_col in row and row[prompt_col] is not None:
        prompt = parse_turns(row[prompt_col], path, where, prompt_col)
        return (
            prompt,
            _completion(row[chosen_col], path, where, chosen_col),
            _completion(row[rejected_col], path, where, rejected_col),
        )
    chosen = parse_turns(row[chosen_col], path, where, chosen_col)
    rejected = parse_turns(row[rejected_col], path, where, rejected_col)
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise UserError(
            f"no shared prompt: {chosen_col} and {rejected_col} differ from their first turn (give a {prompt_col})",
            path=path,
            line=where,
        )
    return (
        chosen[:shared],
        _completion(chosen[shared:], path, where, f"{chosen_col}[{shared}:]"),
        _completion(rejected[shared:], path, where, f"{rejected_col}[{shared}:]"),
    )


class PairSamples(Sequence):
    """Tokenized pairs: ``{"id", "prompt_ids", "chosen_ids", "rejected_ids"}`` (+ ``ref_logps`` once a reference
    has been precomputed, see :mod:`litgpt_ext.training.reference`)."""

    def __init__(self, samples: list[dict]) -> None:
        self.samples = samples
        self.ref_logps: torch.Tensor | None = None
        """``(n, 2)`` reference log-probs of (chosen, rejected), attached before training when precomputed."""

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        sample = self.samples[i]
        return sample if self.ref_logps is None else {**sample, "ref_logps": self.ref_logps[i]}

    def lengths(self) -> torch.Tensor:
        """Longest row of each pair (prompt + the longer answer): what the loop sizes the model's context by."""
        return torch.tensor(
            [len(s["prompt_ids"]) + max(len(s["chosen_ids"]), len(s["rejected_ids"])) for s in self.samples]
        )

    def fingerprint(self) -> str:
        """A hash of every token of every pair, in order (keys precomputed reference log-probs)."""
        h = hashlib.sha256()
        for s in self.samples:
            for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
                h.update(s[key].to(torch.int64).numpy().tobytes())
                h.update(b"|")
        return h.hexdigest()


@dataclass
class PreferenceData(RowData):
    """Chosen/rejected preference pairs from JSON, JSONL or CSV (see the module docstring)."""

    collate = staticmethod(pair_collate)

    path: Path = Path("data")
    """A .json (list of rows) / .jsonl / .csv file, or a directory with train.* and optionally val.*."""
    val_path: Path | None = None
    """A separate validation file (default: val.* of the directory, else a split of the training rows)."""
    prompt_column: str = "prompt"
    """Column (field) holding the prompt."""
    chosen_column: str = "chosen"
    """Column holding the preferred answer."""
    rejected_column: str = "rejected"
    """Column holding the dispreferred answer."""
    system_column: str = "system"
    """Optional column with a system prompt (applied by the prompt style, else put before the prompt)."""
    input_column: str = "input"
    """Optional column with litgpt's ``input`` (the prompt style's input section)."""
    id_column: str = "id"
    """Optional column with a stable row id (default: the row's position, e.g. ``train.csv:line 7``)."""
    val_split_fraction: float = 0.05
    """Fraction of rows split off for validation when there is no validation file (by row key, seeded)."""
    seed: int = 42
    """Seed of that split."""

    prompt_style: PromptStyle | None = field(default=None, init=False, repr=False)
    max_prompt_length: int | None = field(default=None, init=False, repr=False)
    max_length: int | None = field(default=None, init=False, repr=False)

    def connect(
        self,
        tokenizer=None,
        batch_size: int = 1,
        max_seq_length: int | None = None,
        prompt_style: PromptStyle | None = None,
        max_prompt_length: int | None = None,
        **kwargs,
    ) -> None:
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.max_length = None if max_seq_length in (None, -1) else max_seq_length
        self.prompt_style = prompt_style or self.prompt_style or PromptStyle()
        self.max_prompt_length = max_prompt_length

    # -- reading ---------------------------------------------------------------------------------------------------
    def read_pairs(self, path: Path) -> list[Pair]:
        """Every row of ``path`` as a :class:`Pair`; a bad row is a one-line ``path:row: field: problem`` error."""
        pairs = []
        columns = (self.prompt_column, self.chosen_column, self.rejected_column)
        for where, row in iter_rows(path):
            if isinstance(row.get(self.chosen_column), list) or isinstance(row.get(self.prompt_column), list):
                pairs.append(self._conversational(row, columns, path, where))
                continue
            for column in columns:
                if column not in row:
                    raise UserError(f"missing column (columns: {', '.join(map(str, row))})", path, where, column)
            system = text_field(row, self.system_column, path, where, required=False, allow_empty=True) or None
            ident = row.get(self.id_column)
            pairs.append(
                Pair(
                    id=f"{path.name}:{where}" if ident in (None, "") else str(ident),
                    prompt=text_field(row, self.prompt_column, path, where),
                    chosen=text_field(row, self.chosen_column, path, where),
                    rejected=text_field(row, self.rejected_column, path, where),
                    system=system,
                    input=text_field(row, self.input_column, path, where, required=False, allow_empty=True),
                    has_id=ident not in (None, ""),
                )
            )
        return pairs

    def _conversational(self, row: dict, columns: tuple[str, str, str], path: Path, where: str) -> Pair:
        for column in columns[1:]:
            if column not in row:
                raise UserError(f"missing column (columns: {', '.join(map(str, row))})", path, where, column)
        messages, chosen, rejected = conversational_pair(row, columns, path, where)
        ident = row.get(self.id_column)
        text = "\x00".join(f"{m['role']}:{m['content']}" for m in messages)
        return Pair(
            id=f"{path.name}:{where}" if ident in (None, "") else str(ident),
            prompt=text,
            chosen=chosen,
            rejected=rejected,
            has_id=ident not in (None, ""),
            messages=messages,
            where=f"{path}:{where}",
        )

    def setup(self, stage: str = "") -> None:
        if self.tokenizer is None:
            raise RuntimeError("PreferenceData.connect(tokenizer=...) must be called before setup()")
        train_file, val_file = table_files(self.path)
        val_file = Path(self.val_path) if self.val_path is not None else val_file
        train = self._drop_equal(self.read_pairs(train_file), "train")
        if val_file is not None:
            val = self._drop_equal(self.read_pairs(val_file), "val")
        else:
            train, val = split_by_key(train, lambda p: p.key, self.seed, self.val_split_fraction)
            if not val and len(train) > 1:  # tiny data: at least one validation pair
                val, train = train[-1:], train[:-1]
        self.train_dataset = self._encode(train, "train")
        self.val_dataset = self._encode(val, "val")
        if not len(self.train_dataset):
            raise UserError("no training pairs left (see the counts above)", path=self.path)
        if not len(self.val_dataset):
            raise UserError("no validation pairs left (see the counts above)", path=val_file or self.path)

    def _drop_equal(self, pairs: list[Pair], split: str) -> list[Pair]:
        kept = [p for p in pairs if p.chosen.strip() != p.rejected.strip()]
        self.stats[f"{split}_equal_dropped"] = len(pairs) - len(kept)
        if len(kept) < len(pairs):
            print(f"{split}: dropped {len(pairs) - len(kept):,} pair(s) whose chosen and rejected answers are equal")
        return kept

    def _tokenize(self, pairs: list[Pair]) -> tuple[list, list, list]:
        """Prompt, chosen and rejected ids (the responses with their end: EOS or the template's end of turn).

        Text prompts under a litgpt style are batch-encoded (litgpt's BOS rule, EOS after each answer); turns,
        and everything under a chat template, go through :mod:`litgpt_ext.data.chat_encode`."""
        tok, style = self.tokenizer, self.prompt_style
        by_turns = isinstance(style, ChatTemplateStyle)
        plain = [i for i, p in enumerate(pairs) if not by_turns and p.messages is None]
        prompts, chosen, rejected = [None] * len(pairs), [None] * len(pairs), [None] * len(pairs)
        if plain:
            texts = [apply_style(style, pairs[i].prompt, pairs[i].input, pairs[i].system) for i in plain]
            for i, ids in zip(plain, batch_encode(tok, texts, bos=None)):
                prompts[i] = ids
            for out, attr in ((chosen, "chosen"), (rejected, "rejected")):
                for i, ids in zip(plain, batch_encode(tok, [getattr(pairs[i], attr) for i in plain], bos=False)):
                    out[i] = with_eos(ids, tok.eos_id)
        renderer = renderer_for(style, tok)
        for i, pair in enumerate(pairs):
            if prompts[i] is not None:
                continue
            prompts[i], chosen[i], rejected[i] = located(
                partial(_turn_ids, renderer, pair), None, pair.where or pair.id
            )
        return prompts, chosen, rejected

    def _encode(self, pairs: list[Pair], split: str) -> PairSamples:
        prompts, chosen, rejected = self._tokenize(pairs)
        samples, too_long = [], 0
        counts = {"prompt_truncated": 0, "response_truncated": 0}
        for pair, p_ids, c_ids, r_ids in zip(pairs, prompts, chosen, rejected, strict=True):
            p_ids = self._cut_prompt(p_ids, counts)
            if self.max_length and len(p_ids) >= self.max_length:
                too_long += 1
                continue
            responses = [self._cut_response(ids, len(p_ids), counts) for ids in (c_ids, r_ids)]
            samples.append(
                {
                    "id": pair.id,
                    "prompt_ids": torch.tensor(p_ids, dtype=torch.long),
                    "chosen_ids": responses[0],
                    "rejected_ids": responses[1],
                }
            )
        if too_long:
            print(f"{split}: dropped {too_long:,} pair(s) whose prompt alone fills --max_length {self.max_length}")
        self.stats.update(
            {
                split: len(samples),
                f"{split}_too_long_dropped": too_long,
                **{f"{split}_{k}": v for k, v in counts.items()},
            }
        )
        return PairSamples(samples)

    def _cut_prompt(self, ids: list[int], counts: dict) -> list[int]:
        limit = self.max_prompt_length
        if not limit or len(ids) <= limit:
            return ids
        counts["prompt_truncated"] += 1
        return keep_end(ids, limit, self.tokenizer.bos_id)

    def _cut_response(self, ids: list[int], prompt_len: int, counts: dict) -> torch.Tensor:
        if self.max_length and prompt_len + len(ids) > self.max_length:
            counts["response_truncated"] += 1
            ids = ids[: self.max_length - prompt_len]
        return torch.tensor(ids, dtype=torch.long)

    # -- litgpt compatibility: plain dataloaders (the training loop builds its own, resumable ones) ------------
