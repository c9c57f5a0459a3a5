"""How waiting rows enter the engine's slots: cache room for what they can reach, the prefix of each prompt that an
earlier prompt already computed (:mod:`litgpt_ext.model.prefix_cache`), and prefills of the rest, grouped so that
padding costs little.

A prefill group holds rows that reuse the same number of prefix tokens ``m`` and whose remaining lengths are within
:data:`PREFILL_PADDING` of the group's longest: right padding is computed like real tokens (a prefill is GEMM-bound).
The group runs from position ``m`` (one position vector, one causal mask), each row's slot holding the reused
positions ``0..m-1`` first; the LM head runs on each prompt's last token only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from litgpt_ext.generate.jobs import Job, Row
from litgpt_ext.model.prefix_cache import BLOCK

CACHE_STEP = 256
"""The KV cache grows in multiples of this many positions per slot."""
PREFILL_PADDING = 0.875
"""A prefill group holds prompts at least this fraction of its longest one's length: right padding is computed like
real tokens (a prefill is GEMM-bound), so 16 prompts of 200-500 tokens in one group waste 30 % of its work."""
COMPILED_CAPACITY = 2048
"""Positions per slot a ``--compile`` run starts with (all of a shorter context)."""


class Admission:
    """The :class:`~litgpt_ext.generate.engine.Engine`'s admission of rows (a mixin: it uses the engine's slots,
    caches, device state and sampler)."""

    def _reserve(self, rows: list[Row]) -> None:
        """Cache room for every position these rows can reach (prompt + max_new_tokens, within the context), grown
        in steps of at least half the current size so a stream of slowly longer prompts copies the cache rarely."""
        need = min(self.s.max_seq_length, max(len(r.job.prompt_ids) + r.job.max_new_tokens for r in rows))
        have = self.caches.capacity
        if need <= have:
            return
        self.caches.grow(min(self.s.max_seq_length, CACHE_STEP * -(-max(need, have + have // 2) // CACHE_STEP)))

    def _admit(self, free: list[int], window: list, emit: Callable[[Job], None]) -> None:
        import heapq

        admitted = []
        while free and window:
            _, _, row = heapq.heappop(window)
            admitted.append((free.pop(0), row))
        self._reserve([row for _, row in admitted])
        for wave in self._waves(admitted):
            self._prefill_wave(wave, emit)

    def _waves(self, admitted: list[tuple[int, Row]]):
        """Admitted rows in waves, each prefilled (and its blocks stored) before the next is formed: a row whose
        first block missing from the cache is also the first missing block of a row already in this wave waits for
        the next, and then reuses what that row stored. 32 prompts of 4 instruction blocks behind one system prompt,
        admitted at once, compute the system prompt once and each instruction block once (three waves), not 32 times."""
        if self.prefix is None:
            yield admitted
            return
        pending = admitted
        while pending:
            wave, later, claimed = [], [], set()
            for entry in pending:
                key = self.prefix.next_missing(entry[1].job.prompt_ids)
                if key is not None and key in claimed:
                    later.append(entry)
                else:
                    claimed.add(key)
                    wave.append(entry)
            yield wave
            pending = later

    def _prefill_wave(self, admitted: list[tuple[int, Row]], emit: Callable[[Job], None]) -> None:
        """Prefill rows grouped by the prefix tokens they reuse, each group's remainders within PREFILL_PADDING of
        its longest."""
        reused: dict[int, list[tuple[int, Row, list]]] = {}  # tokens reused -> its rows
        for slot, row in admitted:
            m, blocks = self.prefix.match(row.job.prompt_ids) if self.prefix is not None else (0, [])
            reused.setdefault(m, []).append((slot, row, blocks))
        for m, rows in reused.items():
            rows.sort(key=lambda entry: -len(entry[1].job.prompt_ids))
            start = 0
            while start < len(rows):
                width = len(rows[start][1].job.prompt_ids) - m
                limit = min(len(rows) - start, max(1, self.s.prefill_tokens // max(width, 1)))
                n = 1
                while n < limit and len(rows[start + n][1].job.prompt_ids) - m >= PREFILL_PADDING * width:
                    n += 1
                group = rows[start : start + n]
                for slot, row, _ in group:
                    self.slots[slot] = row
                logits, slots = self._prefill(group, m)
                pairs = [(slot, row) for slot, row, _ in group]
                self._advance(pairs, self._sample(logits, [row for _, row in pairs], slots), emit)
                start += n

    @torch.inference_mode()
    def _prefill(self, group: list[tuple[int, Row, list]], m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded prefill of new rows into their slots, from position ``m`` (the reused prefix's blocks copied
        in first). The slots' device state is set for their first sample: the position its token goes to, the row's
        key and minimum length, nothing drawn yet (all in one transfer). Returns the last positions' logits and the
        slots (on the device); the prompts' new full blocks go to the prefix cache."""
        lengths = [len(r.job.prompt_ids) for _, r, _ in group]
        width = max(lengths) - m
        idx = torch.zeros((len(group), width), dtype=torch.long)
        for i, (slot, r, blocks) in enumerate(group):
            idx[i, : lengths[i] - m] = torch.tensor(r.job.prompt_ids[m:])
            self.caches.write_prefix(slot, blocks)
        rows = [r for _, r, _ in group]  # one transfer: the slots, and their rows' lengths, keys and minimum lengths
        slots, positions, keys, min_new = self.to_device(
            [[slot for slot, _, _ in group], lengths, [r.key for r in rows], [r.sampling.min_new_tokens for r in rows]]
        )
        self.positions[slots], self.keys[slots], self.min_new[slots], self.drawn[slots] = positions, keys, min_new, 0
        self.caches.set_rows(slots, m)
        self.head.positions = positions - 1 - m
        try:
            pos = torch.arange(m, m + width, device=self.device)
            logits = self.model(idx.to(self.device), input_pos=pos, input_pos_maxp1=m + width)[:, 0]
        finally:
            self.caches.set_rows(None)
            self.head.positions = None
        if self.prefix is not None:
            for slot, row, _ in group:
                self.prefix.store(row.job.prompt_ids, m // BLOCK, lambda a, b, slot=slot: self.caches.read(slot, a, b))
        return logits, slots
