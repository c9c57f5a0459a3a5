"""litgpt's SwiGLU MLP (``LLaMAMLP``: ``proj(silu(fc_1(x)) * fc_2(x))``) keeping one activation fewer for backward.

Autograd keeps ``fc_1(x)`` for the SiLU's backward and both factors of the product for the multiply's: three
``(tokens, intermediate)`` tensors per layer, the largest activations of a small model (on the bench-sft shape,
5.5 MB each per layer and micro-batch). :class:`SiluMul` keeps the two inputs and recomputes ``silu(a)`` in backward
(one more elementwise pass), which lowers a step's peak memory by one such tensor per layer. Gradients are the same
(tested to float rounding). Without gradients (generation: the engine installs it too) the SiLU and the product are
computed in place, two passes over ``(tokens, intermediate)`` memory fewer.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from litgpt_ext.model.recorder import Patches


class SiluMul(torch.autograd.Function):
    """``silu(a) * b`` whose backward recomputes ``silu(a)`` instead of storing it."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return F.silu(a) * b

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        grad_a = torch.ops.aten.silu_backward(grad * b, a) if ctx.needs_input_grad[0] else None
        grad_b = grad * F.silu(a) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    a, b = self.fc_1(x), self.fc_2(x)
    if not torch.is_grad_enabled():  # (inference: a and b are this call's own, overwritten in place)
        return self.proj(F.silu(a, inplace=True).mul_(b))
    return self.proj(SiluMul.apply(a, b))


def lean_swiglu(model: nn.Module, patches: Patches | None = None) -> int:
    """Give every litgpt ``LLaMAMLP`` of ``model`` (whose forward is litgpt's) the forward above; returns how many."""
    from litgpt.model import LLaMAMLP

    from litgpt_ext.model.guards import computes_as

    patches = patches if patches is not None else Patches()  # none given: the change stays
    changed = 0
    for module in model.modules():
        if computes_as(module, LLaMAMLP):
            patches.set(module, "forward", types.MethodType(_forward, module))
            changed += 1
    return changed
