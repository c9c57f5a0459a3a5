"""The objective contract (a core, and two optional mixins) and the log-prob head objectives share.

An objective is a small object with three jobs: ``collate`` samples into a batch, ``compute`` ``(loss, metrics)``
from a batch, and (optionally) ``prepare_model`` — add a head, freeze a group — and ``setup`` — work that needs the
loaded model before the first step (precomputing reference log-probs). The training loop calls only these, so adding
DPO, ORPO or a reward head is one file here plus one command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from litgpt_ext.model.blockwise_head import BlockwiseHead
from litgpt_ext.model.heads import forward_with_head, output_head, unwrap
from litgpt_ext.model.patches import fast_paths


class Objective:
    """Base class; subclasses override :meth:`collate` and :meth:`compute`."""

    name: str = "objective"
    monitor: str = "val_loss"
    """Default metric for keeping the best checkpoint (``val_`` + a key of ``compute``'s metrics, or val_loss)."""
    monitor_mode: str = "min"
    plots: dict[str, tuple[str, tuple[str, ...]]] = {"loss.png": ("loss", ("loss", "val_loss"))}
    """PNG files written at the end of training: file name -> (y-axis label, metric keys plotted against the step)."""
    remote: bool = False
    """``compute`` calls out of the process (a teacher server) and may stop the run: with several ranks, the loop
    makes every rank agree on that before any goes on (:mod:`litgpt_ext.training.ranks`)."""

    def connect_data(self, data) -> None:
        """Read what the DataModule decided while it was set up (before any process starts), such as the template
        a reward model's rows were rendered with. Default: nothing."""

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

    def sample_length(self, sample: dict) -> int:
        """Tokens of the longest row a sample becomes (sizes the model's context for the run)."""
        return len(sample["input_ids"])

    def batch_size(self, batch: dict) -> int:
        """Samples in a batch (weights validation means)."""
        return len(batch["lengths"])

    def val_outputs(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor] | None:
        """Per-row validation outputs (scores, labels, ...) for metrics that need the whole validation set (AUROC);
        None (the default) means validation averages :meth:`compute`'s metrics instead."""
        return None

    def summarize_val(self, outputs: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """``val_*`` metrics from the concatenated :meth:`val_outputs` of every rank."""
        return {}

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


class OwnModules:
    """Mixin of an objective that adds modules of its own to the model (a reward head): it builds them, and saves and
    loads them beside the weights. The launcher and the loop ask ``isinstance(objective, OwnModules)``."""

    def prepare_model(self, model: nn.Module) -> None:
        """Change the model before training (add a head, freeze parameters). Default: nothing."""

    own_prefixes: tuple[str, ...] = ()
    """State-dict key prefixes of modules the objective adds (a reward head): saved by :meth:`save_extras` beside the
    weights, never in ``lit_model.pth``, so litgpt's tools keep reading it."""

    def save_extras(self, model: nn.Module, directory) -> None:
        """Write the objective's own files into a checkpoint directory (rank 0). Default: nothing."""

    def load_extras(self, model: nn.Module, directory) -> None:
        """Load them back when resuming. Default: nothing."""


class StepHooks:
    """Mixin of an objective that changes what the loop trains on (distillation: samples that also carry their index,
    answers drawn from the current student between steps) and reports figures of its own."""

    def wrap_datasets(self, train, val):
        """The (train, validation) datasets the loop iterates, from the DataModule's (e.g. samples that also carry
        their index, to find stored teacher log-probs). Default: as they are."""
        return train, val

    def on_step(self, model: nn.Module, batches: list[dict], iteration: int) -> list[dict]:
        """The micro-batches one optimizer step trains on, given the ones the data produced (on-policy distillation
        replaces their answers by the current student's samples, all drawn at once: the weights do not change within
        a step). ``iteration`` numbers the first micro-batch from the run's start; it is restored on resume.
        Default: the batches as they are."""
        return batches

    def step_stats(self, elapsed: float) -> dict[str, float]:
        """Extra figures for a train log row, covering the ``elapsed`` seconds since the previous row. Default: none."""
        return {}

    def report(self, seconds: float) -> dict:
        """Extra entries of ``performance.json`` for a run that trained ``seconds``. Default: none."""
        return {}

    def length_growth(self) -> int:
        """Tokens a sample may gain during training beyond its longest row (sampled answers longer than the data's);
        the model's context for the run is sized with it. Default: 0."""
        return 0


def strip_eos(ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    return ids[:-1] if eos_id is not None and len(ids) and int(ids[-1]) == eos_id else ids


@dataclass
class HeadOutput:
    """What :func:`answer_logps` gives an objective: per-token log-probs, and the logits' vocab means for metrics."""

    token_logps: torch.Tensor
    """``(N,)`` log-probability of the target token at each selected position (differentiable)."""
    mean_logits: torch.Tensor
    """``(N,)`` mean logit over the vocabulary at each selected position (detached; TRL's ``logits/*``)."""
    extra_mean_logits: torch.Tensor | None
    """``(E,)`` the same for the ``extra_rows`` (detached), or None."""


class _LogProbHead(BlockwiseHead):
    """The target tokens' log-probs at the selected positions, and each position's mean logit (kept)."""

    def __init__(self, head, vocab, flat, targets, extra_rows: Callable | None, fused_frozen: bool) -> None:
        super().__init__(head, vocab, flat, fused_frozen)
        self.targets, self.extra_rows = targets, extra_rows
        self.extra_mean_logits: torch.Tensor | None = None

    def block(self, logits: torch.Tensor, start: int) -> torch.Tensor:
        targets = self.targets[start : start + logits.size(0)].unsqueeze(1)
        self.keep(mean_logits=logits.mean(-1))
        return (logits.gather(1, targets) - torch.logsumexp(logits, dim=-1, keepdim=True)).squeeze(1)

    def block_with_grad(self, logits: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed form, in place of the logits: ``d log p(t) / dz = onehot(t) − softmax(z)``."""
        targets = self.targets[start : start + logits.size(0)].unsqueeze(1)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        value = (logits.gather(1, targets) - lse).squeeze(1)
        self.keep(mean_logits=logits.mean(-1))
        grad = logits.sub_(lse).exp_().neg_()  # −softmax
        grad.scatter_add_(1, targets, torch.ones_like(targets, dtype=grad.dtype))
        return value, grad

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        token_logps = super().forward(hidden)
        if self.extra_rows is not None:
            with torch.no_grad():
                self.extra_mean_logits = self.head(self.extra_rows(hidden.detach())).float().mean(-1)
        return token_logps


def answer_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    flat: torch.Tensor,
    targets: torch.Tensor,
    extra_rows: Callable | None = None,
) -> HeadOutput:
    """Log-probabilities of ``targets`` at the row-major positions ``flat`` of ``input_ids`` (``(B, T)``).

    The LM head is the largest matmul of a small model's step (``T x vocab``), and most positions of an SFT/DPO batch
    (prompt, padding) carry no loss: for one forward, the model's ``lm_head`` is swapped for :class:`_LogProbHead`,
    which runs the head only at the ``flat`` positions and never holds more than a block of their logits. The model
    is still called through its Fabric/DDP wrapper, so hooks and gradient sync behave as usual.
    ``extra_rows(hidden)`` may return ``(E, C)`` more hidden rows whose vocab-mean logits are wanted (detached; e.g.
    the mean hidden state of each row, for a metric).
    """
    gpt = unwrap(model)
    fused = fast_paths(gpt).frozen_head
    head = _LogProbHead(output_head(gpt), gpt.config.padded_vocab_size, flat, targets, extra_rows, fused)
    token_logps = forward_with_head(model, head, input_ids)
    mean_logits = head.kept.get("mean_logits", token_logps.new_zeros(0).detach())
    return HeadOutput(token_logps, mean_logits, head.extra_mean_logits)
