"""The default precision when none is given: litgpt's choice on GPUs, a measured one on CPUs.

litgpt picks bf16 everywhere but on old GPUs. On a CPU that is right only where bf16 is native and the model is
wide enough for matrix products to dominate. Measured on a 2-core AMD EPYC with AVX512-BF16 (torch 2.13): a 56M
llama-style model (8 layers, 512 wide, 32k vocabulary) generates 2.3-2.9x faster in bf16 than in fp32 and trains
1.6-2.0x faster in bf16-mixed; a 2-layer, 128-wide model is no faster in bf16. Without native bf16 the CPU
emulates it, which is slower than fp32. fp32 also keeps greedy decoding batch-invariant (bf16 rounding can flip a
near-tie between two tokens with the batch's composition), so fp32 is the CPU default unless bf16 pays.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

MIN_BF16_WIDTH = 512
"""Narrower models gain nothing from bf16 on a CPU (measured: see the module docstring)."""


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


def default_precision(checkpoint_dir: Path | None, training: bool) -> str:
    """``--precision`` when the user gives none (see the module docstring)."""
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        from litgpt.utils import get_default_supported_precision

        return get_default_supported_precision(training=training)
    from litgpt_ext.checks import model_width

    width = model_width(checkpoint_dir) if checkpoint_dir is not None else None
    if cpu_has_native_bf16() and width is not None and width >= MIN_BF16_WIDTH:
        return "bf16-mixed" if training else "bf16-true"
    return "32-true"
