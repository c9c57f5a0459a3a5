"""The LM head on selected positions, block by block: the one stand-in head every per-token objective builds on.

A small model's largest tensors in a training step are its logits (positions × vocabulary, then their log-softmax and
its gradient). :class:`BlockwiseHead` stands in for ``lm_head`` during one forward
(:func:`~litgpt_ext.model.heads.forward_with_head`): it takes the hidden rows at the positions that carry a loss,
turns at most :data:`HEAD_CHUNK_ELEMENTS` logits into per-position values at a time (:meth:`BlockwiseHead.block`:
a log-probability, a KD loss), and keeps nothing of size vocab for the backward:

* a **frozen** head (LoRA without ``lora_head``, ``--freeze_other``) goes through :class:`_FrozenHeadBlocks`, which
  computes each block's gradient with respect to the hidden rows while its logits exist — one ``N × hidden`` tensor
  for the backward and no second head matmul;
* a **trainable** head runs each block under activation checkpointing: the block's logits are recomputed in the
  backward (one more head matmul per block) instead of held.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from litgpt_ext.model.heads import rows_at

HEAD_CHUNK_ELEMENTS = 2**21
"""Largest ``rows x vocab`` logits block the head materialises at once on a CPU (8 MiB in fp32: a block stays in
cache)."""
GPU_HEAD_CHUNK_ELEMENTS = 2**26
"""The same on a GPU (256 MiB in fp32). Each block reads the whole head weight again: at the CPU's budget a
128k-token vocabulary gets 16 rows per block, and Llama-3.2-1B's 4 x 1,024 answer tokens would read its 0.5 GB head
256 times a micro-batch (~270 GB of memory traffic with the gradient's product); here 512 rows, 8 times."""


def block_rows(vocab: int, device: torch.device) -> int:
    """Rows of logits per block on ``device`` (see the budgets above)."""
    budget = GPU_HEAD_CHUNK_ELEMENTS if device.type == "cuda" else HEAD_CHUNK_ELEMENTS
    return max(1, budget // vocab)


def frozen_linear(head: nn.Module) -> nn.Linear | None:
    """The plain ``nn.Linear`` behind ``head`` when none of its parameters trains (litgpt's LoRA head with r=0
    included), else None."""
    linear = head
    if not isinstance(linear, nn.Linear) and getattr(head, "r", None) == 0 and isinstance(head.linear, nn.Linear):
        linear = head.linear
    if type(linear) is not nn.Linear or any(p.requires_grad for p in head.parameters()):
        return None
    return linear


class _FrozenHeadBlocks(torch.autograd.Function):
    """``head.block`` through a frozen linear head, block by block, with the backward done in the forward.

    A position's value depends on its own hidden row only, so its gradient is one row vector ``Wᵀ ∂v/∂z`` (z: the
    position's logits), computed while the block's logits exist; the backward just scales each row by its upstream
    gradient. ``∂v/∂z`` comes from :meth:`BlockwiseHead.block_with_grad` (autograd on the block's logits unless a
    head knows it in closed form). The arithmetic is autograd's: logits in float32, the product with ``W`` in
    ``W``'s dtype."""

    @staticmethod
    def forward(ctx, rows, weight, bias, head, spans):
        values, grads = [], []
        for start, end in spans:
            with torch.no_grad():
                logits = F.linear(rows[start:end], weight, bias).float()
            value, grad_logits = head.block_with_grad(logits, start)
            values.append(value)
            grads.append((grad_logits.to(weight.dtype) @ weight).to(rows.dtype))
        ctx.save_for_backward(torch.cat(grads) if grads else rows.new_zeros(rows.shape))
        return torch.cat(values) if values else rows.new_zeros(0)

    @staticmethod
    def backward(ctx, grad_values):
        (grad_rows,) = ctx.saved_tensors
        return grad_values.unsqueeze(1).to(grad_rows.dtype) * grad_rows, None, None, None, None


class BlockwiseHead(nn.Module):
    """Stands in for ``lm_head`` for one forward: ``(N,)`` values of the hidden rows at the row-major positions
    ``flat``, computed block by block by :meth:`block`. Per-position side outputs a block records with
    :meth:`keep` are in :attr:`kept` after the forward (concatenated over blocks, detached).

    ``fused_frozen`` routes a frozen head through :class:`_FrozenHeadBlocks` (off: plain autograd, for comparing)."""

    def __init__(self, head: nn.Module, vocab: int, flat: torch.Tensor, fused_frozen: bool = True) -> None:
        super().__init__()
        self.head, self.vocab, self.flat, self.fused_frozen = head, vocab, flat, fused_frozen
        self.kept: dict[str, torch.Tensor] = {}
        self._parts: dict[str, list[torch.Tensor]] | None = None

    def spans(self, n: int, step: int) -> list[tuple[int, int]]:
        """The ``(start, end)`` blocks of the ``n`` rows, at most ``step`` each. A head whose values couple
        neighbouring rows (cross-tokenizer spans) cuts only between its groups; the frozen-head path stays exact
        for it because the loss sums the values (every value's upstream gradient is the same)."""
        return [(start, min(start + step, n)) for start in range(0, n, step)]

    def block(self, logits: torch.Tensor, start: int) -> torch.Tensor:
        """``(n,)`` values (differentiable in ``logits``) of the positions ``start:start+n``; ``logits`` ``(n, vocab)``
        float32."""
        raise NotImplementedError

    def block_with_grad(self, logits: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`block`'s values and their gradient with respect to ``logits`` (by autograd; a subclass may give it in
        closed form)."""
        logits.requires_grad_(True)
        with torch.enable_grad():
            value = self.block(logits, start)
            (grad,) = torch.autograd.grad(value.sum(), logits)
        return value.detach(), grad

    def keep(self, **values: torch.Tensor) -> None:
        """Record per-position side outputs (metrics) of the current block. Only during the forward: a checkpointed
        block that runs again in the backward does not record twice."""
        if self._parts is not None:
            for key, value in values.items():
                self._parts.setdefault(key, []).append(value.detach())

    def _block_of_rows(self, rows: torch.Tensor, start: int) -> torch.Tensor:
        return self.block(self.head(rows).float(), start)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = rows_at(hidden, self.flat)
        step = block_rows(self.vocab, rows.device)
        training = torch.is_grad_enabled() and rows.requires_grad
        linear = frozen_linear(self.head) if training and self.fused_frozen else None
        spans = self.spans(rows.size(0), step)
        self._parts = {}
        try:
            if linear is not None:
                values = _FrozenHeadBlocks.apply(rows, linear.weight, linear.bias, self, spans)
            else:
                chunks = []
                for start, end in spans:
                    block = rows[start:end]
                    if training and len(spans) > 1:
                        chunks.append(checkpoint(self._block_of_rows, block, start, use_reentrant=False))
                    else:
                        chunks.append(self._block_of_rows(block, start))
                values = torch.cat(chunks) if chunks else rows.new_zeros(0, requires_grad=rows.requires_grad)
            self.kept = {key: torch.cat(parts) for key, parts in self._parts.items()}
        finally:
            self._parts = None
        return values
