"""When a replacement forward may stand in for litgpt's: only on a module whose class computes exactly as the litgpt
class the replacement was written against.

``isinstance`` alone is not enough: a subclass (litgpt's adapter attention, a user's own block) may override the very
method a replacement re-implements, or a helper it calls (``scaled_dot_product_attention``), and would silently lose
that override. :func:`computes_as` checks that each named method is the base class's own.
"""

from __future__ import annotations

from torch import nn

ATTENTION_METHODS = ("forward", "scaled_dot_product_attention")
"""What the attention replacements (training and decode) re-implement: a subclass that overrides either — litgpt's
adapter attention overrides ``scaled_dot_product_attention`` — keeps its own forward."""


def computes_as(module: nn.Module, base: type, methods: tuple[str, ...] = ("forward",)) -> bool:
    """``module`` is a ``base`` whose ``methods`` are all ``base``'s own (not overridden by its class)."""
    if not isinstance(module, base):
        return False
    cls = type(module)
    return all(getattr(cls, name, None) is getattr(base, name, None) for name in methods)
