"""A KV cache whose rows are *slots*: a prompt owns one slot from its prefill until it finishes, then the slot is
given to the next prompt. ``(slots, n_query_groups, capacity, head_size)`` per layer, where the capacity (positions
per slot) grows with the longest prompt + answer admitted so far, up to the model's context: a model with an 8,192-token
context and 32 slots would otherwise allocate its whole 12 GB cache (SmolLM2-135M) to answer 100-token prompts.

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
        self.register_buffer("slots_arange", torch.arange(slots, device=device), persistent=False)

    def forward(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rows is None:  # a decode step over the first k.size(0) slots (the engine packs running rows there)
            return self._write_step(input_pos, k, v)
        width = k.size(-2)  # a prefill: positions 0..width-1 of the rows being admitted
        self.k[self.rows, :, :width] = k
        self.v[self.rows, :, :width] = v
        return k, v

    def _write_step(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """One position per row: row i's ``(groups, hs)`` goes to slot i at ``input_pos[i]``, as one ``index_put_``
        into the whole buffer. (litgpt's ``batched_index_copy_`` loops over rows, and under ``torch.compile`` its
        in-place write into a *view* of the buffer becomes a copy of the whole cache at every step.)"""
        n = k.size(0)
        slots, positions = self.slots_arange[:n], input_pos.view(n)
        self.k[slots, :, positions] = k[:, :, 0]
        self.v[slots, :, positions] = v[:, :, 0]
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


def sliding_window_mask(max_seq_length: int, window: int, device) -> torch.Tensor:
    """``(1, 1, S, S)`` boolean: position i attends to j when i - window < j <= i (litgpt's ring-buffer semantics)."""
    i = torch.arange(max_seq_length, device=device).unsqueeze(1)
    j = torch.arange(max_seq_length, device=device).unsqueeze(0)
    return ((j <= i) & (j > i - window)).view(1, 1, max_seq_length, max_seq_length)


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


def install_slot_cache(
    model, slots: int, capacity: int, context: int, device, dtype, patches: Patches
) -> list[SlotKVCache]:
    """Give every attention block a slot cache of ``capacity`` positions per slot (see :meth:`SlotKVCache.grow`),
    and the model its rope and mask caches over ``context`` positions (the longest sequence a row can reach).

    litgpt enforces a sliding window only through its ring-buffer cache; slots keep whole sequences, so the window
    goes into the mask instead: the model's mask when every layer slides (Mistral), else — Gemma 2 / 3 mix windowed
    and global layers — the causal mask for all and each windowed block narrowing it to its window
    (:func:`masked_block`). Everything set is recorded in ``patches``.
    """
    from litgpt.model import build_mask_cache

    patches.set(model, "max_seq_length", context)
    sliding = [block.attn.apply_sliding_window_attention for block in model.transformer.h]
    window = model.config.sliding_window_size
    windows = [None] * len(sliding)
    if any(sliding) and window and window < context and all(sliding):
        patches.set(model, "mask_cache", sliding_window_mask(context, window, device))
    else:
        patches.set(model, "mask_cache", build_mask_cache(context, device))
        if any(sliding) and window and window < context:
            windows = [window if slides else None for slides in sliding]
    additive = model.config.attention_logit_softcapping is not None
    for block, own in zip(model.transformer.h, windows, strict=True):
        if own is not None or additive:
            masked_block(block, own, additive, patches)
    caches = []
    for block in model.transformer.h:
        cfg = block.attn.config
        cache = SlotKVCache(slots, cfg.n_query_groups, min(capacity, context), cfg.head_size, device, dtype)
        patches.set(block.attn, "kv_cache", cache)
        caches.append(cache)
    return caches
