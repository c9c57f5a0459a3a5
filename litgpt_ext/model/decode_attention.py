"""A decode step for grouped-query attention that does not copy the KV cache.

litgpt's attention expands keys and values to one head per query head (``repeat_interleave``) before attending; in a
decode step that copies the whole cached span of every slot, in every layer, at every step — most of the step's
time at a few hundred cached positions. With one query position per row, the query heads that share a key/value
head can instead be laid out as that group's "query positions": ``(B, heads, 1, hs) -> (B, groups, heads/groups,
hs)`` attends over the group's own keys, with no copy, and gives the same result. A prefill (many positions through
the slot caches) goes to :func:`~litgpt_ext.model.prefill_attention.prefill_attention`; everything else keeps
litgpt's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from litgpt.model import CausalSelfAttention

from litgpt_ext.model.fast_attention import rotated_qkv, scale
from litgpt_ext.model.prefill_attention import prefill_attention
from litgpt_ext.model.recorder import Patches


def grouped_decode_applies(config) -> bool:
    """True for models whose decode step this module takes over: grouped (not multi-query: litgpt already
    broadcasts a single key/value head) query attention without q/k norms, logit softcapping or interleaved rope."""
    return (
        1 < config.n_query_groups < config.n_head
        and not config.norm_qk
        and config.attention_logit_softcapping is None
        and not getattr(config, "rope_interleave", False)
    )


def install_grouped_decode(model, patches: Patches | None = None) -> bool:
    """Route every attention block's one-position calls through :func:`_grouped_forward`; False if not applicable."""
    from litgpt_ext.model.guards import ATTENTION_METHODS, computes_as

    patches = patches if patches is not None else Patches()  # none given: the change stays
    if not grouped_decode_applies(model.config):
        return False
    if not all(computes_as(block.attn, CausalSelfAttention, ATTENTION_METHODS) for block in model.transformer.h):
        return False  # a subclass's own attention (an adapter's) is kept as it is
    for block in model.transformer.h:
        patches.set(block.attn, "forward", types.MethodType(_grouped_forward, block.attn))
    return True


def _grouped_forward(
    self: CausalSelfAttention,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor | None = None,
    input_pos: torch.Tensor | None = None,
    input_pos_maxp1: int | None = None,
) -> torch.Tensor:
    B, T, _ = x.shape
    if input_pos is None or mask is None:
        return CausalSelfAttention.forward(self, x, cos, sin, mask, input_pos, input_pos_maxp1)
    if T != 1:  # a prefill
        return prefill_attention(self, x, cos, sin, mask, input_pos, input_pos_maxp1)
    hs, heads, groups = self.config.head_size, self.config.n_head, self.config.n_query_groups
    q, k, v = rotated_qkv(self, x, cos, sin)
    k, v = self.kv_cache(input_pos, k, v)
    if input_pos_maxp1 is not None:
        k, v = k[..., :input_pos_maxp1, :], v[..., :input_pos_maxp1, :]
    mask = mask[..., : k.size(-2)]
    q = q.reshape(B, groups, heads // groups, hs)  # a group's query heads as its query positions
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale(self))  # (B, groups, heads/groups, hs)
    return self.proj(y.reshape(B, 1, heads * hs))
