"""Precisions: what each one computes in, and the default when none is given.

**The table.** Every command names a precision as Lightning does (``--precision bf16-mixed``); :data:`COMPUTE_DTYPES`
says what it computes in — the one table every command reads (a ``-mixed`` run keeps its trainable weights in fp32
and computes in the half type under autocast; a model that does not train — a generator, a frozen teacher or
reference — is simply held in that half type, since it needs no fp32 master copy).

**The default.** litgpt picks bf16 everywhere but on old GPUs. On a GPU that holds only where bf16 is native:
``torch.cuda.is_bf16_supported()`` also answers yes on a V100 or T4, which emulate it (slowly, and without bf16's
tensor cores), so the default there is fp16 (``16-mixed`` to train, ``16-true`` to generate), as on any GPU before
compute capability 8.0. On a CPU bf16 is right only where it is native and the model is wide enough for matrix
products to dominate. Measured on a 2-core AMD EPYC with AVX512-BF16 (torch 2.13): a 56M llama-style model (8
layers, 512 wide, 32k vocabulary) generates 2.3-2.9x faster in bf16 than in fp32 and trains 1.6-2.0x faster in
bf16-mixed; a 2-layer, 128-wide model is no faster in bf16. Without native bf16 the CPU emulates it, which is slower
than fp32. fp32 also keeps greedy decoding batch-invariant (bf16 rounding can flip a near-tie between two tokens with
the batch's composition), so fp32 is the CPU default unless bf16 pays.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch

MIN_BF16_WIDTH = 512
"""Narrower models gain nothing from bf16 on a CPU (measured: see the module docstring)."""

COMPUTE_DTYPES: dict[str, torch.dtype] = {
    "32-true": torch.float32,
    "bf16-true": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16-true": torch.float16,
    "16-mixed": torch.float16,
}
"""Each precision's compute dtype (see the module docstring)."""

TRUE_PRECISIONS = ("32-true", "bf16-true", "16-true")
"""The precisions of a model held in one dtype throughout (no autocast)."""

STORAGE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""``--dtype`` names of a file's tensors (export_hf, distill_logprobs' stores)."""


def compute_dtype(precision: str, field: str = "precision", allowed: Iterable[str] | None = None) -> torch.dtype:
    """The dtype ``precision`` computes in; a precision outside ``allowed`` (default: every one in the table) is a
    one-line error naming ``field``."""
    from litgpt_ext.errors import UserError

    allowed = tuple(allowed or COMPUTE_DTYPES)
    if precision not in allowed:
        raise UserError(f"use one of {', '.join(allowed)} (got {precision!r})", field=field)
    return COMPUTE_DTYPES[precision]


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 (x86), or the BF16 extension (Arm), as the kernel reports the CPU's features."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cuda_has_native_bf16() -> bool:
    """Compute capability 8.0 or newer (Ampere on): bf16 in hardware, not emulated."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def default_precision(checkpoint_dir: Path | None, training: bool) -> str:
    """``--precision`` when the user gives none (see the module docstring)."""
    if torch.cuda.is_available():
        half = "bf16" if cuda_has_native_bf16() else "16"
        return f"{half}-mixed" if training else f"{half}-true"
    if torch.backends.mps.is_available():
        from litgpt.utils import get_default_supported_precision

        return get_default_supported_precision(training=training)
    from litgpt_ext.checks import model_width

    width = model_width(checkpoint_dir) if checkpoint_dir is not None else None
    if cpu_has_native_bf16() and width is not None and width >= MIN_BF16_WIDTH:
        return "bf16-mixed" if training else "bf16-true"
    return "32-true"


def run_dtype(fabric) -> torch.dtype:
    """The dtype a Fabric run computes in (a QLoRA run's bitsandbytes plugin names its own), which its frozen models
    are held in."""
    plugin = fabric.strategy.precision
    name = getattr(plugin, "precision", None)
    if name in COMPUTE_DTYPES:
        return COMPUTE_DTYPES[name]
    return getattr(plugin, "dtype", None) or torch.float32
