"""Running a litgpt ``GPT`` with another module in place of its LM head, for one call.

litgpt's forward always ends in ``lm_head`` over every position; the training objectives and the generator need it on
a few positions only (the answer tokens, the last prompt token), and computing the rest is most of a prefill's cost at
a large vocabulary. Swapping the head keeps litgpt's forward — rope, masks, KV cache — as it is.

litgpt applies a model's final logit softcapping (Gemma-2: ``cap · tanh(logits / cap)``) to whatever the head
returns. A stand-in head returns losses or hidden rows, not logits, so :func:`swapped_head` turns litgpt's capping off
for the call, and the stand-ins compute their logits through :func:`output_head`, which caps them itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from litgpt_ext.model.recorder import Patches, fast_paths


@contextmanager
def swapped_head(gpt: nn.Module, head: nn.Module) -> Iterator[None]:
    """``gpt.lm_head`` is ``head`` inside the block, the original again after it (also when the call fails); litgpt's
    final logit softcapping is off meanwhile (the stand-in caps the logits it computes: :func:`output_head`). Both
    changes go through a :class:`~litgpt_ext.model.recorder.Patches` log, as every change of this package does."""
    patches = Patches()
    try:
        patches.set(gpt, "lm_head", head)
        patches.set(gpt.config, "final_logit_softcapping", None)
        yield
    finally:
        patches.restore()


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


def unwrap(model: nn.Module) -> nn.Module:
    """The litgpt ``GPT`` inside Fabric/DDP/FSDP wrappers. (Fabric's wrapper forwards attribute reads to the model,
    so "has an lm_head" does not tell them apart; its ``named_modules`` carry a prefix the state dict does not.)"""
    from lightning.fabric.wrappers import _FabricModule

    while True:
        if isinstance(model, _FabricModule):
            model = model._original_module
        elif not hasattr(model, "lm_head") and hasattr(model, "module"):
            model = model.module
        else:
            return model


def rows_at(hidden: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """The ``(N, C)`` hidden rows of a ``(B, T, C)`` tensor at the row-major positions ``flat`` — or the rows as they
    are when the last block already kept only those (:func:`rows_only_last_block` returns ``(1, N, C)``). The two
    cannot be confused: ``flat`` holds distinct sorted positions, so ``B·T == N`` means every position, in order."""
    rows = hidden.reshape(-1, hidden.size(-1))
    return rows if rows.size(0) == flat.numel() else rows.index_select(0, flat)


class _RowsOnlyLastBlock(nn.Module):
    """Stands in for the last transformer block during one forward: attention at every position (its keys and values
    feed every later query), then the residual stream and the MLP — three quarters of a block's work — only at the
    positions a head reads. Exact: nothing else reaches the loss. Returns those rows as ``(1, N, C)``."""

    def __init__(self, block: nn.Module, flat: torch.Tensor) -> None:
        super().__init__()
        self.block, self.flat = block, flat

    def forward(self, x, cos, sin, mask=None, input_pos=None, input_pos_maxp1=None) -> torch.Tensor:
        return last_block_rows(self.block, x, cos, sin, self.flat, mask, input_pos, input_pos_maxp1).unsqueeze(0)


@contextlib.contextmanager
def rows_only_last_block(gpt: nn.Module, flat: torch.Tensor | None):
    """:class:`_RowsOnlyLastBlock` in place of ``gpt``'s last block inside the block (when it is a litgpt
    ``Block`` and there are positions to select); the model is unchanged after it, also when the call fails."""
    from litgpt.model import Block

    blocks = gpt.transformer.h
    if not fast_paths(gpt).last_block_rows or flat is None or not isinstance(blocks[-1], Block):
        yield
        return
    patches = Patches()
    try:
        patches.set(blocks, str(len(blocks) - 1), _RowsOnlyLastBlock(blocks[-1], flat))
        yield
    finally:
        patches.restore()


def forward_with_head(model: nn.Module, head: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """``model(input_ids)`` (through its Fabric/DDP wrapper, so hooks and gradient sync behave as usual) with ``head``
    standing in for the LM head during the call: the objectives' way to run a head on selected positions only. The
    last block works only at the head's positions (``head.flat``; :func:`rows_only_last_block`) unless the head
    reads more rows (``head.extra_rows``)."""
    gpt = unwrap(model)
    # a head that also reads other rows of the hidden states (ORPO's per-row means) needs the full last block
    flat = None if getattr(head, "extra_rows", None) is not None else getattr(head, "flat", None)
    with swapped_head(gpt, head), rows_only_last_block(gpt, flat):
        return model(input_ids)


class _OnPositions(nn.Module):
    """Stands in for ``lm_head`` during one forward: applies ``fn`` to the hidden rows at ``flat`` only."""

    def __init__(self, flat: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.flat, self.fn = flat, fn

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fn(rows_at(hidden, self.flat))


def on_positions(
    model: nn.Module, input_ids: torch.Tensor, flat: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``fn(final hidden states at the row-major positions flat)`` from one forward of ``model`` (through its
    Fabric/DDP wrapper); the LM head does not run unless ``fn`` calls it. Reward heads use it on the last token."""
    return forward_with_head(model, _OnPositions(flat, fn), input_ids)
