"""The log :func:`~litgpt_ext.model.patches.patched` keeps of what it set on a model's modules, and the switches of the
faster paths. Below every installer: each records its changes here, and :mod:`.patches` undoes them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class FastPaths:
    """Which of the exact-but-faster paths a model runs (all on by default; each is tested equal to litgpt's)."""

    forwards: bool = True
    """Replacement forwards: RMSNorm as one op, LoRA qkv as one addmm, grouped-query SDPA and a lean SwiGLU for
    training; the grouped decode step and packed decode matmuls for generation."""
    last_block_rows: bool = True
    """The last block's residual stream and MLP only at the positions a head reads."""
    frozen_head: bool = True
    """A frozen LM head's gradient computed with its forward, block by block (no logits kept)."""


LITGPT_OWN = FastPaths(forwards=False, last_block_rows=False, frozen_head=False)
"""litgpt's forwards everywhere (``--fast_forwards false``)."""


def fast_paths(gpt: nn.Module) -> FastPaths:
    """The switches :func:`patched` set on ``gpt`` (the unwrapped litgpt model), else all on."""
    return gpt.__dict__.get("_fast_paths", FastPaths())


class Patches:
    """A log of attributes set on modules, undone newest first by :meth:`restore` — each put back exactly where it
    was (an instance attribute, a submodule or buffer slot, a property's value) or removed if the class's showed
    through."""

    def __init__(self) -> None:
        self._undo: list[tuple[object, str, str | None, object]] = []

    def set(self, obj: object, name: str, value: object) -> None:
        """``setattr(obj, name, value)``, remembering what ``obj`` itself held there."""
        if isinstance(obj, nn.Module) and name in obj._modules:
            where, previous = "_modules", obj._modules[name]
        elif isinstance(obj, nn.Module) and name in obj._buffers:
            where, previous = "_buffers", obj._buffers[name]
        elif name in vars(obj):
            where, previous = "__dict__", vars(obj)[name]
        elif isinstance(getattr(type(obj), name, None), property):
            where, previous = "property", getattr(obj, name)
        else:
            where, previous = None, None
        self._undo.append((obj, name, where, previous))
        setattr(obj, name, value)

    def forwards(self) -> list[str]:
        """The module classes whose ``forward`` this log replaced, once each (a run's metadata records them:
        ``--fast_forwards false`` leaves it empty)."""
        return sorted({type(obj).__name__ for obj, name, *_ in self._undo if name == "forward"})

    def restore(self) -> None:
        while self._undo:
            obj, name, where, previous = self._undo.pop()
            if where is None:
                delattr(obj, name)
            elif where == "property":
                setattr(obj, name, previous)
            elif where == "_buffers":
                obj._buffers[name] = previous
            else:  # where nn.Module's setattr put it now (a module slot, the instance dict) may not be where it was
                if isinstance(obj, nn.Module):
                    obj._modules.pop(name, None)
                vars(obj).pop(name, None)
                (obj._modules if where == "_modules" else vars(obj))[name] = previous
