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


def flat_positions(mask: torch.Tensor) -> torch.Tensor:
    """Row-major indices of the ``True`` entries of a ``(B, T)`` mask. Call it in ``collate`` (on the CPU): on a GPU,
    ``nonzero`` waits for the device, which must not happen once per micro-batch."""
    return mask.reshape(-1).nonzero().squeeze(1)


@contextlib.contextmanager
def lm_head_on(model: nn.Module, flat: torch.Tensor) -> Iterator[None]:
    """Make the model's LM head run only at ``flat`` positions (row-major indices into ``(B, T)``).

    The head is the largest matmul of a small model's step (``T x vocab``) and most positions of an SFT/DPO batch
    (prompt, padding) have no loss. A forward pre-hook gathers the selected hidden states, so the model (still
    called through its Fabric/DDP/FSDP wrapper) returns ``(N, vocab)`` logits for the N selected positions.
    """

    def gather(_module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        return (hidden.reshape(-1, hidden.size(-1)).index_select(0, flat), *args[1:])

    handle = unwrap(model).lm_head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def selected_logits(model: nn.Module, input_ids: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, vocab)`` at the row-major positions ``flat`` of ``input_ids``."""
    with lm_head_on(model, flat):
        return model(input_ids)
