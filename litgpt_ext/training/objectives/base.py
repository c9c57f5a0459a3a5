"""The objective contract and the model helpers objectives share.

An objective is a small object with three jobs: ``collate`` samples into a batch, ``compute`` ``(loss, metrics)``
from a batch, and (optionally) ``prepare_model`` — add a head, freeze a group — and ``setup`` — work that needs the
loaded model before the first step (precomputing reference log-probs). The training loop calls only these, so adding
DPO, ORPO or a reward head is one file here plus one command.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


class Objective:
    """Base class; subclasses override :meth:`collate` and :meth:`compute`."""

    name: str = "objective"
    monitor: str = "val_loss"
    """Default metric for keeping the best checkpoint (``val_`` + a key of ``compute``'s metrics, or val_loss)."""
    monitor_mode: str = "min"
    plots: dict[str, tuple[str, tuple[str, ...]]] = {"loss.png": ("loss", ("loss", "val_loss"))}
    """PNG files written at the end of training: file name -> (y-axis label, metric keys plotted against the step)."""

    def prepare_model(self, model: nn.Module) -> None:
        """Change the model before training (add a head, freeze parameters). Default: nothing."""

    def setup(self, fabric, model: nn.Module, train_data, val_data, out_dir) -> None:
        """Called once the model holds its starting weights, before the first step (and on resume). Default: nothing."""

    def config(self) -> dict:
        """The method's settings, for ``<name>_metadata.json``."""
        return {}

    def collate(self, samples: list[dict]) -> dict:
        raise NotImplementedError

    def compute(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the loss to backpropagate and detached metrics to log (TRL names where one exists)."""
        raise NotImplementedError

    def batch_tokens(self, batch: dict) -> torch.Tensor:
        """Real (non-padding) tokens in a batch, for tokens/s (a tensor: no device sync per micro-batch)."""
        return batch["lengths"].sum()

    def batch_size(self, batch: dict) -> int:
        """Samples in a batch (weights validation means)."""
        return len(batch["lengths"])

    def derived_val_metrics(self, means: dict[str, float]) -> dict[str, float]:
        """Extra metrics computed from validation means (e.g. perplexity). Default: none."""
        return {}

    def prompt_and_reference(self, sample: dict, eos_id: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(prompt ids, reference answer ids) of a validation sample for ``--eval.generate_samples``; None if the
        method has no reference text. Default: the tokens before the first supervised label, and those labels."""
        if "labels" not in sample:
            return None
        supervised = (sample["labels"] != -100).nonzero()
        start = int(supervised[0]) if len(supervised) else len(sample["input_ids"])
        return sample["input_ids"][:start], strip_eos(sample["input_ids"][start:], eos_id)


def strip_eos(ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    return ids[:-1] if eos_id is not None and len(ids) and int(ids[-1]) == eos_id else ids


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
def lm_head_on(model: nn.Module, flat: torch.Tensor, extra_rows: Callable | None = None) -> Iterator[None]:
    """Make the model's LM head run only at ``flat`` positions (row-major indices into ``(B, T)``).

    The head is the largest matmul of a small model's step (``T x vocab``) and most positions of an SFT/DPO batch
    (prompt, padding) have no loss. A forward pre-hook gathers the selected hidden states, so the model (still
    called through its Fabric/DDP/FSDP wrapper) returns ``(N, vocab)`` logits for the N selected positions.
    ``extra_rows(hidden)`` may return ``(E, C)`` more rows (detached, e.g. mean hidden states for a metric); their
    logits follow the N selected ones, computed by the same head call.
    """

    def gather(_module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        rows = hidden.reshape(-1, hidden.size(-1)).index_select(0, flat)
        if extra_rows is not None:
            rows = torch.cat([rows, extra_rows(hidden.detach())])
        return (rows, *args[1:])

    handle = unwrap(model).lm_head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def selected_logits(
    model: nn.Module, input_ids: torch.Tensor, flat: torch.Tensor, extra_rows: Callable | None = None
) -> torch.Tensor:
    """Logits ``(N, vocab)`` at the row-major positions ``flat`` of ``input_ids`` (see :func:`lm_head_on`)."""
    with lm_head_on(model, flat, extra_rows):
        return model(input_ids)
