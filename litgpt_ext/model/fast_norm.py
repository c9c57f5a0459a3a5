"""litgpt's ``RMSNorm`` through PyTorch's own ``F.rms_norm``, with litgpt's semantics.

litgpt writes RMSNorm as five elementwise passes (square, mean, rsqrt, two multiplies), each stored for backward;
``F.rms_norm`` is one op. The input is computed in fp32 and cast back as litgpt does, and ``add_unit_offset`` norms
(Gemma's ``1 + weight``) keep litgpt's forward. Tested equal in loss and gradients (to float rounding) to
litgpt's forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from litgpt_ext.model.recorder import Patches


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.dim not in (-1, x.dim() - 1):
        return type(self).forward(self, x)
    return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).to(dtype=x.dtype)


def fused_rms_norm(model: nn.Module, patches: Patches | None = None) -> int:
    """Give every plain litgpt ``RMSNorm`` of ``model`` the one-op forward; returns how many it changed."""
    from litgpt.model import RMSNorm

    from litgpt_ext.model.guards import computes_as

    patches = patches if patches is not None else Patches()  # none given: the change stays
    changed = 0
    for module in model.modules():
        if computes_as(module, RMSNorm) and not module.add_unit_offset:
            patches.set(module, "forward", types.MethodType(_forward, module))
            changed += 1
    return changed
