"""Running a litgpt ``GPT`` with another module in place of its LM head, for one call.

litgpt's forward always ends in ``lm_head`` over every position; the training objectives and the generator need it on
a few positions only (the answer tokens, the last prompt token), and computing the rest is most of a prefill's cost at
a large vocabulary. Swapping the head keeps litgpt's forward — rope, masks, KV cache — as it is.

litgpt applies a model's final logit softcapping (Gemma-2: ``cap · tanh(logits / cap)``) to whatever the head
returns. A stand-in head returns losses or hidden rows, not logits, so :func:`swapped_head` turns litgpt's capping off
for the call, and the stand-ins compute their logits through :func:`output_head`, which caps them itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def swapped_head(gpt: nn.Module, head: nn.Module) -> Iterator[None]:
    """``gpt.lm_head`` is ``head`` inside the block, the original again after it (also when the call fails); litgpt's
    final logit softcapping is off meanwhile (the stand-in caps the logits it computes: :func:`output_head`)."""
    original, cap = gpt.lm_head, gpt.config.final_logit_softcapping
    gpt.lm_head = head
    gpt.config.final_logit_softcapping = None
    try:
        yield
    finally:
        gpt.lm_head = original
        gpt.config.final_logit_softcapping = cap


class SoftcappedHead(nn.Module):
    """The LM head followed by litgpt's final logit softcapping, as one module (a stand-in head calls it on rows)."""

    def __init__(self, head: nn.Module, cap: float) -> None:
        super().__init__()
        self.head, self.cap = head, cap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from litgpt.model import do_softcapping

        return do_softcapping(self.head(x), self.cap)


def output_head(gpt: nn.Module) -> nn.Module:
    """What turns ``gpt``'s final hidden rows into the logits its own forward returns: ``lm_head``, capped where the
    config softcaps the final logits. Take it before the head is swapped out."""
    cap = gpt.config.final_logit_softcapping
    return gpt.lm_head if cap is None else SoftcappedHead(gpt.lm_head, cap)


class LastPositionHead(nn.Module):
    """The LM head on every position, or — while ``positions`` is set — on one position per row:
    ``(B, T, C)`` hidden states -> ``(B, 1, vocab)`` logits at ``positions[b]``. The generator installs it once (a
    head swapped per call would make ``torch.compile`` recompile) and sets ``positions`` around a prefill."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.positions: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.positions is None:
            return self.head(x)
        rows = torch.arange(x.size(0), device=x.device)
        return self.head(x[rows, self.positions]).unsqueeze(1)


def last_block_rows(block: nn.Module, x, cos, sin, flat, mask=None, input_pos=None, input_pos_maxp1=None):
    """A litgpt ``Block``'s output at the row-major positions ``flat`` only, as ``(N, C)`` rows: attention at every
    position (its keys and values feed every query), then the residual stream and the MLP — three quarters of a
    block's work — only at ``flat``. For the last block, whose other positions reach no head, this is exact."""
    config, width = block.config, x.size(-1)
    x_normed = block.norm_1(x)
    attention = block.post_attention_norm(block.attn(x_normed, cos, sin, mask, input_pos, input_pos_maxp1))
    rows = (attention + x).reshape(-1, width).index_select(0, flat)
    if config.parallel_residual:
        normed = x_normed if config.shared_attention_norm else block.norm_2(x)
        rows_normed = normed.reshape(-1, width).index_select(0, flat)
    else:
        rows_normed = block.norm_2(rows)
    # the MLP sees (1, N, C): an MoE layer (LLaMAMoE) unpacks B, T, C and routes each row on its own
    return block.post_mlp_norm(block.mlp(rows_normed.unsqueeze(0)).squeeze(0)) + rows
