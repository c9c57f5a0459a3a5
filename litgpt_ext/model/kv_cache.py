"""A KV cache whose rows are *slots*: a prompt owns one slot from its prefill until it finishes, then the slot is
given to the next prompt. ``(slots, n_query_groups, capacity, head_size)`` per layer, where the capacity (positions
per slot) grows with the longest prompt + answer admitted so far, up to the model's context: a model with an 8,192-token
context and 32 slots would otherwise allocate its whole 12 GB cache (SmolLM2-135M) to answer 100-token prompts.

What litgpt sizes by the context besides the cache grows with it too (:class:`SlotCaches`): the causal mask —
litgpt's is ``context²`` booleans, 16 GiB for a 131,072-token model (Llama 3.x) before the first token — and the
rope tables. A run's memory depends on the lengths it admits, not on the context the model could take.

It plugs into litgpt's attention unchanged (a ``litgpt.model.KVCache`` subclass): the engine sets ``rows`` before a
forward — ``None`` for a decode step over the first B slots (B = the step's batch: the engine keeps its running rows
packed at the bottom), or the slot indices of the rows being prefilled. A prefill starts at
position 0, so its attention needs only the keys and values it just computed: they are stored into the slots and
returned as they are, without reading the cache back. Stale entries left by a slot's previous owner are never read: a
row at position p attends to positions <= p only, and positions 0..p were all written by the current owner (prefill
writes the prompt, every decode step writes its own position first).
"""

from __future__ import annotations

import torch
from litgpt.model import KVCache

from litgpt_ext.model.recorder import Patches


class SlotKVCache(KVCache):
    def __init__(self, slots: int, n_query_groups: int, max_seq_length: int, head_size: int, device, dtype):
        shape = (slots, n_query_groups, max_seq_length, head_size)
        super().__init__(shape, shape, device=device, dtype=dtype)
        self.rows: torch.Tensor | None = None
        self.start = 0
        """Where a prefill's positions begin: past a prefix whose keys and values are in the slots already (the
        prefix cache's), which the prefill attends over together with its own."""
        self.register_buffer("slots_arange", torch.arange(slots, device=device), persistent=False)

    def forward(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rows is None:  # a decode step over the first k.size(0) slots (the engine packs running rows there)
            return self._write_step(input_pos, k, v)
        width, start = k.size(-2), self.start  # a prefill: positions start..start+width-1 of the rows admitted
        self.k[self.rows, :, start : start + width] = k.to(self.k.dtype)
        self.v[self.rows, :, start : start + width] = v.to(self.v.dtype)
        if not start:
            return k, v  # nothing before it: attention needs only what it just computed
        return self.k[self.rows, :, : start + width], self.v[self.rows, :, : start + width]

    def _write_step(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """One position per row: row i's ``(groups, hs)`` goes to slot i at ``input_pos[i]``, as one ``index_put_``
        into the whole buffer. (litgpt's ``batched_index_copy_`` loops over rows, and under ``torch.compile`` its
        in-place write into a *view* of the buffer becomes a copy of the whole cache at every step.)"""
        n = k.size(0)
        slots, positions = self.slots_arange[:n], input_pos.view(n)
        self.k[slots, :, positions] = k[:, :, 0].to(self.k.dtype)  # (a no-op unless autocast computed k, v)
        self.v[slots, :, positions] = v[:, :, 0].to(self.v.dtype)
        return self.k[:n], self.v[:n]

    @property
    def capacity(self) -> int:
        return self.k.size(2)

    def grow(self, capacity: int) -> None:
        """At least ``capacity`` positions per slot, what was cached kept."""
        if capacity <= self.capacity:
            return
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:2], capacity, old.size(3)))
            new[:, :, : old.size(2)] = old
            setattr(self, name, new)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot ``src``'s first ``length`` positions into slot ``dst`` (the engine packing its rows)."""
        self.k[dst, :, :length] = self.k[src, :, :length]
        self.v[dst, :, :length] = self.v[src, :, :length]


def sliding_window_mask(length: int, window: int, device) -> torch.Tensor:
    """``(1, 1, S, S)`` boolean: position i attends to j when i - window < j <= i (litgpt's ring-buffer semantics)."""
    i = torch.arange(length, device=device).unsqueeze(1)
    j = torch.arange(length, device=device).unsqueeze(0)
    return ((j <= i) & (j > i - window)).view(1, 1, length, length)


def masked_block(block, window: int | None, additive: bool, patches: Patches) -> None:
    """Give ``block`` a forward that adjusts the causal mask it is given (``(B or 1, 1, T, K)`` booleans) before its
    own forward runs: ``window`` keeps only the last ``window`` positions of each query, itself included (litgpt's
    sliding window); ``additive`` turns the mask into 0 / -inf scores for litgpt's softcapped attention, which adds
    the mask to its scores (a boolean mask would add 1 and 0 and mask nothing: litgpt's own KV-cache generation of
    Gemma 2 attends to the whole cache, future zeros included). Recorded in ``patches``."""
    forward = type(block).forward.__get__(block)

    def adjusted(x, cos, sin, mask=None, input_pos=None, input_pos_maxp1=None):
        if mask is not None and input_pos is not None:
            if window is not None:
                keys = torch.arange(mask.size(-1), device=mask.device)
                rows = input_pos if input_pos.dim() == 2 else input_pos.unsqueeze(0)  # (B or 1, T)
                mask = mask & (keys > rows.unsqueeze(-1) - window).unsqueeze(1)
            if additive:
                mask = torch.zeros(mask.shape, dtype=x.dtype, device=mask.device).masked_fill_(
                    ~mask, torch.finfo(x.dtype).min
                )
        return forward(x, cos, sin, mask, input_pos, input_pos_maxp1)

    patches.set(block, "forward", adjusted)


class SlotCaches:
    """Every attention block's :class:`SlotKVCache`, and what litgpt sizes with them: the model's mask cache and its
    rope tables (``max_seq_length``). :meth:`grow` grows all of them together; nothing is ever larger than the
    capacity the engine asked for (see the module docstring). Everything set is recorded in ``patches``."""

    def __init__(self, model, slots: int, capacity: int, context: int, device, dtype, patches: Patches) -> None:
        from litgpt.model import build_mask_cache

        self.model, self.context, self.device, self.patches = model, context, device, patches
        self._build_mask_cache = build_mask_cache
        # litgpt enforces a sliding window only through its ring-buffer cache; slots keep whole sequences, so the
        # window goes into the mask instead: the model's mask when every layer slides (Mistral), else — Gemma 2 / 3
        # mix windowed and global layers — the causal mask for all and each windowed block narrowing it to its
        # window (:func:`masked_block`)
        sliding = [block.attn.apply_sliding_window_attention for block in model.transformer.h]
        window = model.config.sliding_window_size
        self.window = window if any(sliding) and window and window < context and all(sliding) else None
        windows = [None] * len(sliding)
        if any(sliding) and window and window < context and not all(sliding):
            windows = [window if slides else None for slides in sliding]
        additive = model.config.attention_logit_softcapping is not None
        for block, own in zip(model.transformer.h, windows, strict=True):
            if own is not None or additive:
                masked_block(block, own, additive, patches)
        capacity = min(capacity, context)
        self.caches: list[SlotKVCache] = []
        for block in model.transformer.h:
            cfg = block.attn.config
            cache = SlotKVCache(slots, cfg.n_query_groups, capacity, cfg.head_size, device, dtype)
            patches.set(block.attn, "kv_cache", cache)
            self.caches.append(cache)
        self._size_model(capacity)

    @property
    def capacity(self) -> int:
        return self.caches[0].capacity

    def _size_model(self, length: int) -> None:
        """litgpt's length limit, rope tables and mask for positions ``0..length-1``: the mask is built for exactly
        these; the limit and the rope tables (built once, by litgpt, when the model was made) only grow, if ever."""
        model = self.model
        if model.max_seq_length < length:
            self.patches.set(model, "_max_seq_length", length)  # (not the setter: it rebuilds the rope tables)
        if model.cos.size(0) < length:  # litgpt's tables at this length, in the dtype the model holds them in
            cos, sin = model.rope_cache(device=self.device)
            self.patches.set(model, "cos", cos.to(model.cos.dtype))
            self.patches.set(model, "sin", sin.to(model.sin.dtype))
        if self.window is not None:
            mask = sliding_window_mask(length, self.window, self.device)
        else:
            mask = self._build_mask_cache(length, self.device)
        self.patches.set(self.model, "mask_cache", mask)

    def grow(self, capacity: int) -> None:
        """At least ``capacity`` positions per slot (within the context), what was cached kept."""
        capacity = min(capacity, self.context)
        if capacity <= self.capacity:
            return
        for cache in self.caches:
            cache.grow(capacity)
        self._size_model(capacity)

    def move(self, src: int, dst: int, length: int) -> None:
        for cache in self.caches:
            cache.move(src, dst, length)

    def set_rows(self, rows: torch.Tensor | None, start: int = 0) -> None:
        for cache in self.caches:
            cache.rows, cache.start = rows, start

    def write_prefix(self, slot: int, blocks: list[torch.Tensor]) -> None:
        """Positions ``0..`` of ``slot`` from a prefix cache's blocks, each ``(layers, 2, groups, n, head_size)``."""
        if not blocks:
            return
        prefix = torch.cat(blocks, dim=3)
        for layer, cache in enumerate(self.caches):
            cache.k[slot, :, : prefix.size(3)] = prefix[layer, 0]
            cache.v[slot, :, : prefix.size(3)] = prefix[layer, 1]

    def read(self, slot: int, start: int, end: int) -> torch.Tensor:
        """``slot``'s keys and values at positions ``start..end-1``, ``(layers, 2, groups, end - start, head_size)``."""
        return torch.stack([torch.stack((c.k[slot, :, start:end], c.v[slot, :, start:end])) for c in self.caches])
