"""Keys and values of prompt prefixes, computed once and reused: a task's system prompt and instructions, a database
schema shared by every question about it.

A prompt is cut into blocks of :data:`BLOCK` tokens; a full block is stored under a key that chains the keys of
the blocks before it with its own tokens, so a block is found only after the very same prefix (vLLM's and
nano-vllm's scheme). Each entry holds the block's keys and values for every layer, ``(layers, 2, groups, BLOCK,
head_size)``; the entries are kept least recently used first and evicted beyond a memory cap. A lookup never
returns the whole prompt: its last token is always computed, for the logits that pick the first new token.

A row's keys and values at a position depend only on the tokens up to it, so a prefix's entries are what any prompt
starting with those tokens would compute; the engine copies them into the row's slot and prefills only the rest
(:class:`~litgpt_ext.model.kv_cache.SlotKVCache` attends over both).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

BLOCK = 16
"""Tokens per cached block."""


@dataclass
class PrefixStats:
    lookups: int = 0
    hits: int = 0
    """Rows that reused at least one block."""
    tokens_reused: int = 0
    tokens_computed: int = 0
    """Prompt tokens prefilled (what was not reused)."""
    evictions: int = 0
    blocks: int = 0
    bytes: int = 0

    def as_dict(self) -> dict:
        total = self.tokens_reused + self.tokens_computed
        return {"lookups": self.lookups, "hits": self.hits, "hit_rate": round(self.hits / max(self.lookups, 1), 4),
                "prompt_tokens_reused": self.tokens_reused, "prompt_tokens_computed": self.tokens_computed,
                "reused_share": round(self.tokens_reused / max(total, 1), 4), "evictions": self.evictions,
                "blocks": self.blocks, "bytes": self.bytes}  # fmt: skip


class PrefixCache:
    """Blocks of keys and values by prefix (see the module docstring), within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[int, tuple[tuple[int, ...], torch.Tensor]] = OrderedDict()
        self.stats = PrefixStats()

    @staticmethod
    def keys(prompt: list[int], blocks: int) -> list[int]:
        """The chained keys of the prompt's first ``blocks`` full blocks."""
        out, key = [], 0
        for b in range(blocks):
            key = hash((key, tuple(prompt[b * BLOCK : (b + 1) * BLOCK])))
            out.append(key)
        return out

    def next_missing(self, prompt: list[int]) -> int | None:
        """The key of the first block a lookup would not find (None: every usable block is stored); counts nothing."""
        for key in self.keys(prompt, (len(prompt) - 1) // BLOCK):
            if key not in self.entries:
                return key
        return None

    def match(self, prompt: list[int]) -> tuple[int, list[torch.Tensor]]:
        """(tokens reused, their blocks in order): the longest stored prefix of full blocks, short of the whole
        prompt (its last token is always computed)."""
        self.stats.lookups += 1
        usable = (len(prompt) - 1) // BLOCK
        found, used = [], []
        for b, key in enumerate(self.keys(prompt, usable)):
            entry = self.entries.get(key)
            if entry is None or entry[0] != tuple(prompt[b * BLOCK : (b + 1) * BLOCK]):  # (a hash collision: a miss)
                break
            found.append(entry[1])
            used.append(key)
        self._touch(used)
        self.stats.hits += bool(found)
        self.stats.tokens_reused += len(found) * BLOCK
        self.stats.tokens_computed += len(prompt) - len(found) * BLOCK
        return len(found) * BLOCK, found

    def store(self, prompt: list[int], start_block: int, read) -> None:
        """Keep the prompt's full blocks from ``start_block`` on; ``read(start, end)`` gives the row's keys and values
        at those positions, ``(layers, 2, groups, end - start, head_size)``."""
        full = len(prompt) // BLOCK
        keys = self.keys(prompt, full)
        for b in range(start_block, full):
            if keys[b] in self.entries:
                self.entries.move_to_end(keys[b])
                continue
            block = read(b * BLOCK, (b + 1) * BLOCK).clone()
            self.entries[keys[b]] = (tuple(prompt[b * BLOCK : (b + 1) * BLOCK]), block)
            self.stats.blocks += 1
            self.stats.bytes += block.numel() * block.element_size()
        self._touch(keys)
        while self.stats.bytes > self.max_bytes and self.entries:
            _, (_, old) = self.entries.popitem(last=False)
            self.stats.blocks -= 1
            self.stats.bytes -= old.numel() * old.element_size()
            self.stats.evictions += 1

    def _touch(self, keys: list[int]) -> None:
        """Mark a chain's blocks used, its first the most recently: eviction takes a chain from its end, never
        leaving later blocks that no lookup can reach."""
        for key in reversed(keys):
            if key in self.entries:
                self.entries.move_to_end(key)
