"""Every change this toolchain makes to a litgpt model's modules, installed and undone in one place.

The training forwards (:mod:`fast_norm`, :mod:`fast_lora`, :mod:`fast_attention`, :mod:`fast_mlp`) and the
generator's (slot KV caches, the last-position head, the grouped decode step, packed decode matmuls, per-block masks)
are instance attributes set on litgpt's modules. Each installer records what it sets in a :class:`Patches`, and
:func:`patched` restores all of it when its block ends — so a model leaves a training run, or an on-policy sampling
call inside one, exactly as it came, and nothing outside this package needs to know what was installed.

:class:`FastPaths` names the switches: ``--fast_forwards false`` runs litgpt's own forwards (and the plain head and
last block), for debugging and for the tests that compare the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from torch import nn

from litgpt_ext.model.decode_attention import install_grouped_decode
from litgpt_ext.model.fast_attention import grouped_training_attention
from litgpt_ext.model.fast_lora import lean_lora_qkv
from litgpt_ext.model.fast_mlp import lean_swiglu
from litgpt_ext.model.fast_norm import fused_rms_norm
from litgpt_ext.model.recorder import LITGPT_OWN, FastPaths, Patches, fast_paths

__all__ = ["LITGPT_OWN", "FastPaths", "Patches", "fast_paths", "patched"]


def install_training_forwards(gpt: nn.Module, patches: Patches) -> None:
    """litgpt's math in fewer passes over memory (each tested equal in loss and gradients)."""
    fused_rms_norm(gpt, patches)  # F.rms_norm instead of five elementwise passes
    lean_lora_qkv(gpt, patches)  # one addmm instead of the fused-qkv LoRA's zero-padding plumbing
    grouped_training_attention(gpt, patches)  # SDPA on grouped keys/values instead of copies per query head
    lean_swiglu(gpt, patches)  # SwiGLU keeping one activation fewer for backward


def install_decode_forwards(gpt: nn.Module, patches: Patches) -> None:
    """The one-position attention step on grouped keys/values and the prefill's attention block by block (where
    they apply), RMSNorm in one op, and SwiGLU computed in place."""
    fused_rms_norm(gpt, patches)
    install_grouped_decode(gpt, patches)
    lean_swiglu(gpt, patches)


INSTALLERS = {"training": install_training_forwards, "decode": install_decode_forwards}


@contextmanager
def patched(gpt: nn.Module, path: Literal["training", "decode"], fast: FastPaths = FastPaths()) -> Iterator[Patches]:
    """``gpt`` (an unwrapped litgpt ``GPT``) with ``path``'s replacement forwards for the block, when
    ``fast.forwards``; yields the :class:`Patches` so the caller's own installs (the generator's caches and head) are
    undone with them. On exit — also when the block fails — the model is as it was."""
    patches = Patches()
    try:
        patches.set(gpt, "_fast_paths", fast)
        if fast.forwards:
            INSTALLERS[path](gpt, patches)
        yield patches
    finally:
        patches.restore()
