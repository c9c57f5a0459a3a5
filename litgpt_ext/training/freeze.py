"""Layer freezing for full finetuning, mapped onto litgpt parameter names.

Groups: ``emb`` (token embeddings), ``ln`` (every norm, incl. the final one), ``attn`` (attention projections),
``ff`` (MLP), ``other`` (LM head and anything else). Parameters of a block listed in ``layers_not_to_freeze``
stay trainable whatever their group.
"""

from __future__ import annotations

import re

from torch import nn

GROUPS = ("emb", "ln", "attn", "ff", "other")
_BLOCK = re.compile(r"(?:^|\.)transformer\.h\.(\d+)\.")


def param_group(name: str) -> str:
    if name.startswith("transformer.wte") or name.startswith("transformer.wpe"):
        return "emb"
    if "norm" in name or name.startswith("transformer.ln_f."):
        return "ln"
    if ".attn." in name:
        return "attn"
    if ".mlp." in name:
        return "ff"
    return "other"


def block_index(name: str) -> int | None:
    match = _BLOCK.search(name)
    return int(match.group(1)) if match else None


def apply_freezing(model: nn.Module, frozen_groups: set[str], layers_not_to_freeze: list[int] | None = None) -> None:
    """Set ``requires_grad`` from the group flags; listed blocks stay trainable."""
    unknown = frozen_groups - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown parameter groups {sorted(unknown)}")
    keep = set(layers_not_to_freeze or [])
    for name, param in model.named_parameters():
        frozen = param_group(name) in frozen_groups and block_index(name) not in keep
        param.requires_grad_(not frozen)


def parameter_table(model: nn.Module) -> str:
    """A table of trainable / frozen parameter counts per group, printed before training."""
    counts = {g: [0, 0] for g in GROUPS}
    for name, param in model.named_parameters():
        counts[param_group(name)][0 if param.requires_grad else 1] += param.numel()
    rows = [f"{'group':<8}{'trainable':>14}{'frozen':>14}"]
    for group, (trainable, frozen) in counts.items():
        rows.append(f"{group:<8}{trainable:>14,}{frozen:>14,}")
    total_t = sum(c[0] for c in counts.values())
    total_f = sum(c[1] for c in counts.values())
    rows.append(f"{'total':<8}{total_t:>14,}{total_f:>14,}")
    return "\n".join(rows)
