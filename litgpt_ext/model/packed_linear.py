"""Decode-step matmuls on CPU with weights packed once for the slot batch.

A decode step multiplies a few dozen rows (one per running slot) by every weight matrix. At that size PyTorch's CPU
GEMM spends most of its time re-packing the *weight* into MKL's internal layout on every call: measured on this
project's 2-core machine, a (32 x 512) @ (512 x 2048) product takes 0.56 ms through ``F.linear`` and 0.19-0.25 ms with
the weight packed beforehand; the gain fades by a few hundred rows, where packing is amortised anyway. This is the
same MKL path ``torch.compile`` takes on CPU with inductor's weight freezing, without its compile time.

:func:`install_packed_linears` packs every plain fp32 ``nn.Linear`` of a model once (``torch.ops.mkl``'s
``_mkl_reorder_linear_weight``; the packed copy costs about one more copy of the weights in memory) and routes calls
of up to ``2 x rows`` input rows through it; bigger calls (a prefill) keep ``F.linear``. The packed product sums in
its own order, so logits can differ from ``F.linear``'s at float rounding (~1e-6 relative), as any GEMM kernel
choice does. Only for frozen weights: a packed copy does not follow later updates.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from litgpt_ext.model.recorder import Patches


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """True where the packed path exists: CPU, fp32, a PyTorch built with MKL."""
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkl.is_available()


def install_packed_linears(model: nn.Module, rows: int, patches: Patches | None = None) -> int:
    """Pack the weights of every plain fp32 CPU ``nn.Linear`` in ``model`` for ``rows``-row products; returns how
    many were packed. Undone by ``patches.restore()``."""
    patches = patches if patches is not None else Patches()  # none given: the change stays
    packed = 0
    with torch.no_grad():
        for module in model.modules():
            if type(module) is not nn.Linear or module.weight.dtype != torch.float32 or module.weight.is_cuda:
                continue
            patches.set(
                module, "_packed_weight", torch.ops.mkl._mkl_reorder_linear_weight(module.weight.detach(), rows)
            )
            patches.set(module, "_packed_rows", rows)
            patches.set(module, "forward", types.MethodType(_packed_forward, module))
            packed += 1
    return packed


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.size(-1)).contiguous()
    if flat.size(0) > 2 * self._packed_rows or torch.is_grad_enabled():
        return F.linear(x, self.weight, self.bias)
    out = torch.ops.mkl._mkl_linear(flat, self._packed_weight, self.weight, self.bias, flat.size(0))
    return out.view(*x.shape[:-1], out.size(-1))
