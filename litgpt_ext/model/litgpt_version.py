"""The litgpt code this toolchain re-implements or relies on, as it was when the replacements were tested.

The training forwards (attention, fused-qkv LoRA, SwiGLU, RMSNorm), the decode attention, the last-block rows, the
head swap and the slot KV cache each re-implement or wrap a litgpt method, and are tested equal to it. A litgpt
release that changes one of these methods (a new feature in the attention, say) would pass every ``isinstance`` and
every guard silently; ``pyproject.toml`` pins litgpt's minor version, and ``tests/test_litgpt_version.py`` compares
each method's source with the fingerprint below, so a patch release that touches one fails the tests by name:
re-run the equality tests (``tests/test_last_block_rows.py``, ``tests/test_families.py``,
``tests/test_real_model.py``, the generation tests) against it, then update the fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect

TESTED_LITGPT = "0.5.13"
"""The litgpt release these fingerprints were taken from."""

RELIED_ON: dict[str, str] = {
    "litgpt.model.GPT.forward": "d872e5128a9b2b9a",
    "litgpt.model.Block.forward": "d1eae0302fb05d2d",
    "litgpt.model.CausalSelfAttention.forward": "71b001eb30a4b820",
    "litgpt.model.CausalSelfAttention.scaled_dot_product_attention": "93c7b49e0ab80a8e",
    "litgpt.model.LLaMAMLP.forward": "1a88679b47240475",
    "litgpt.model.LLaMAMoE.forward": "8fbca80cb5b0d80e",
    "litgpt.model.RMSNorm.forward": "38957b8732d21e99",
    "litgpt.lora.LoRAQKVLinear.forward": "449dba13a4436993",
    "litgpt.lora.LoRAQKVLinear.zero_pad": "eb2c9997a02a94b9",
    "litgpt.model.KVCache.forward": "5a941c2356dd019f",
    "litgpt.model.build_mask_cache": "5d662adc3f8040f1",
    "litgpt.model.do_softcapping": "dd981b381c20565d",
}
"""Dotted name -> the first 16 hex digits of the SHA-256 of its source."""


def fingerprint(dotted: str) -> str:
    """The fingerprint of the installed litgpt's ``dotted`` (module, then attributes)."""
    parts = dotted.split(".")
    obj = importlib.import_module(".".join(parts[:2]))
    for name in parts[2:]:
        obj = getattr(obj, name)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def changed() -> list[str]:
    """The relied-on methods whose source differs in the installed litgpt."""
    return [name for name, want in RELIED_ON.items() if fingerprint(name) != want]
