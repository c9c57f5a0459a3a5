"""The attention of a prefill (many positions of rows being admitted) in two causal halves.

litgpt attends every query position to every key position of the span, the future masked: half the scores of a
causal prefill are computed only to be thrown away, and PyTorch's CPU attention kernel takes no shortcut for them,
with a mask or with ``is_causal``. Here the queries are split in two halves, the first attending only to the keys
up to its own end: three quarters of the work, the same result (each query sees the same keys under the same mask;
measured on SmolLM2's shape, 8 x 500 tokens, 9 heads in 3 groups: 41-49 ms -> 34 ms per layer). It also skips the
concatenation of each rotated query and key with an empty unrotated tail. The keys may start before the queries
(a prefix the prefix cache filled in): the mask the model hands over is sliced as litgpt slices it, so a sliding
window narrowed into it (``kv_cache.masked_block``) holds too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from litgpt.model import CausalSelfAttention

from litgpt_ext.model.fast_attention import rotated_qkv, scale

HALVES_FROM = 256
"""Query positions from which the prefill attends in two halves (below it, one call costs less than two)."""


def prefill_attention(
    self: CausalSelfAttention,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor,
    input_pos: torch.Tensor,
    input_pos_maxp1: int | None,
) -> torch.Tensor:
    """litgpt's attention forward for a prefill through the slot caches (``x``: ``(B, T, C)`` at positions
    ``input_pos``), computed as the module docstring says."""
    B, T, _ = x.shape
    heads, groups = self.config.n_head, self.config.n_query_groups
    q, k, v = rotated_qkv(self, x, cos, sin)
    k, v = self.kv_cache(input_pos, k, v)  # (B, groups, S, hs): the prefix in the slots, then these positions
    if input_pos_maxp1 is not None:
        k, v = k[..., :input_pos_maxp1, :], v[..., :input_pos_maxp1, :]
    if groups != heads:  # (PyTorch's grouped attention is slower than the copy on CPU)
        k, v = k.repeat_interleave(heads // groups, dim=1), v.repeat_interleave(heads // groups, dim=1)
    keys = k.size(-2)
    mask = mask[..., :keys]
    before = keys - T  # key positions ahead of the first query (a reused prefix)
    cuts = [0, T // 2, T] if T >= HALVES_FROM else [0, T]
    parts = []
    for start, end in zip(cuts, cuts[1:]):
        reach = before + end  # the last key any of these queries may see, plus one
        parts.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :reach], v[:, :, :reach],
                                                    attn_mask=mask[..., start:end, :reach], scale=scale(self)))  # fmt: skip
    y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return self.proj(y.transpose(1, 2).reshape(B, T, heads * self.config.head_size))
