"""The objective contract and the model helpers objectives share.

An objective is a small object with three jobs: ``collate`` samples into a batch, ``compute`` ``(loss, metrics)``
from a batch, and (optionally) ``prepare_model`` — add a head, freeze a group. The training loop calls only these,
so adding DPO, ORPO or a reward head is one file here plus one command.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class Objective:
    """Base class; subclasses override :meth:`collate` and :meth:`compute`."""

    name: str = "objective"
    monitor: str = "val_loss"
    """Default metric for keeping the best checkpoint (``val_`` + a key of ``compute``'s metrics, or val_loss)."""
    monitor_mode: str = "min"

    def prepare_model(self, model: nn.Module) -> None:
        """Change the model before training (add a head, freeze parameters). Default: nothing."""

    def collate(self, samples: list[dict]) -> dict:
        raise NotImplementedError

    def compute(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the loss to backpropagate and detached metrics to log (TRL names where one exists)."""
        raise NotImplementedError

    def batch_tokens(self, batch: dict) -> torch.Tensor:
        """Real (non-padding) tokens in a batch, for tokens/s (a tensor: no device sync per micro-batch)."""
        return batch["lengths"].sum()

    def derived_val_metrics(self, means: dict[str, float]) -> dict[str, float]:
        """Extra metrics computed from validation means (e.g. perplexity). Default: none."""
        return {}


def unwrap(model: nn.Module) -> nn.Module:
    """The litgpt ``GPT`` inside Fabric/DDP/FSDP wrappers."""
    while not hasattr(model, "lm_head") and hasattr(model, "module"):
        model = model.module
    return model


@contextlib.contextmanager
def lm_head_on(model: nn.Module, positions: torch.Tensor) -> Iterator[None]:
    """Make the model's LM head run only on ``positions`` (a boolean ``(B, T)`` mask).

    The head is the largest matmul of a small model's step (``T x vocab``) and most positions of an SFT/DPO batch
    (prompt, padding) have no loss. A forward pre-hook gathers the selected hidden states, so the model (still
    called through its Fabric/DDP/FSDP wrapper) returns ``(N, vocab)`` logits for the N selected positions.
    """
    flat = positions.reshape(-1).nonzero().squeeze(1)

    def gather(_module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        return (hidden.reshape(-1, hidden.size(-1)).index_select(0, flat), *args[1:])

    handle = unwrap(model).lm_head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def selected_logits(model: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, vocab)`` at the ``True`` entries of ``positions`` (row-major order)."""
    with lm_head_on(model, positions):
        return model(input_ids)
