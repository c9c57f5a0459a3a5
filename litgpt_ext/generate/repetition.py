"""Repetition controls with transformers' definitions, kept per row so they never depend on the batch.

* ``repetition_penalty`` (transformers' ``RepetitionPenaltyLogitsProcessor``, CTRL's rule): the logit of every token
  already in the row — prompt included, as in ``model.generate`` for decoder-only models — is divided by the penalty
  when positive and multiplied by it when negative.
* ``no_repeat_ngram_size`` (``NoRepeatNGramLogitsProcessor``): a token that would complete an n-gram already present
  in the row (prompt included) gets ``-inf``.

Each row keeps the set of its tokens and a map from every (n-1)-gram to the tokens that followed it, updated as it
grows, so a step costs what the rows' histories hold, not a rescan of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class History:
    """One row's tokens as the repetition controls need them."""

    n: int
    tail: list[int] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    followers: dict[tuple[int, ...], set[int]] = field(default_factory=dict)

    def add(self, token: int) -> None:
        self.seen.add(token)
        if self.n:
            self.tail.append(token)
            if len(self.tail) >= self.n:
                self.followers.setdefault(tuple(self.tail[-self.n : -1]), set()).add(token)
            del self.tail[: -self.n]

    def banned(self) -> set[int]:
        """Tokens that would repeat an n-gram (none until the row holds n-1 tokens)."""
        if not self.n or len(self.tail) < self.n - 1:
            return set()
        return self.followers.get(tuple(self.tail[len(self.tail) - self.n + 1 :]), set())


@dataclass(frozen=True)
class RepetitionControls:
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    @property
    def active(self) -> bool:
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0

    def history(self, prompt_ids: list[int]) -> History:
        h = History(self.no_repeat_ngram_size)
        for token in prompt_ids:
            h.add(token)
        return h

    def apply(self, logits: torch.Tensor, histories: list[History]) -> torch.Tensor:
        """``logits (rows, vocab)`` with both controls applied, row ``i`` by ``histories[i]`` (a new tensor)."""
        logits = logits.clone()
        if self.repetition_penalty != 1.0:
            rows, tokens = _pairs([h.seen for h in histories])
            if len(tokens):
                rows, tokens = rows.to(logits.device), tokens.to(logits.device)
                picked = logits[rows, tokens]
                penalty = self.repetition_penalty
                logits[rows, tokens] = torch.where(picked < 0, picked * penalty, picked / penalty)
        if self.no_repeat_ngram_size:
            rows, tokens = _pairs([h.banned() for h in histories])
            if len(tokens):
                logits[rows.to(logits.device), tokens.to(logits.device)] = float("-inf")
        return logits


def _pairs(sets: list[set[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [i for i, s in enumerate(sets) for _ in s]
    tokens = [t for s in sets for t in s]
    return torch.tensor(rows, dtype=torch.long), torch.tensor(tokens, dtype=torch.long)
