"""Tied input and output embeddings (SmolLM2, Gemma, Qwen2.5-0.5B, Llama-3.2-1B, ...).

litgpt's ``GPT`` has no tie: its converter copies the embedding into ``lm_head.weight``, so a converted tied model
holds two equal tensors. Left alone, full finetuning updates them apart (the head's gradient never reaches the
embedding) and the result is no longer the architecture the user started from; the export would then write 28M
duplicated parameters for SmolLM2-135M and ``tie_word_embeddings: false``. So a checkpoint whose two tensors are
equal is treated as tied: training shares one parameter between them, and the export writes one tensor and
``tie_word_embeddings: true``.
"""

from __future__ import annotations

from pathlib import Path

import torch

EMBEDDING, HEAD = "transformer.wte.weight", "lm_head.weight"


def state_is_tied(state: dict) -> bool:
    """Whether a litgpt state dict's head is its embedding (the same tensor, or equal values and no head bias)."""
    wte, head = state.get(EMBEDDING), state.get(HEAD)
    if wte is None or head is None or wte.shape != head.shape or "lm_head.bias" in state:
        return False
    return wte.data_ptr() == head.data_ptr() or torch.equal(wte, head)


def checkpoint_is_tied(checkpoint_dir: Path) -> bool:
    """:func:`state_is_tied` of ``lit_model.pth`` (memory-mapped: only the two tensors are read)."""
    path = Path(checkpoint_dir) / "lit_model.pth"
    if not path.is_file():
        return False
    state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    return state_is_tied(state.get("model", state))


def tie_embeddings(gpt: torch.nn.Module) -> None:
    """One parameter for the embedding and the LM head (as transformers ties them)."""
    gpt.lm_head.weight = gpt.transformer.wte.weight
