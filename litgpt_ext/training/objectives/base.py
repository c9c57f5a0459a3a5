"""The objective contract and the model helpers objectives share.

An objective is a small object with three jobs: ``collate`` samples into a batch, ``compute`` ``(loss, metrics)``
from a batch, and (optionally) ``prepare_model`` — add a head, freeze a group — and ``setup`` — work that needs the
loaded model before the first step (precomputing reference log-probs). The training loop calls only these, so adding
DPO, ORPO or a reward head is one file here plus one command.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from litgpt_ext.heads import last_block_rows, output_head, swapped_head


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

    def wrap_datasets(self, train, val):
        """The (train, validation) datasets the loop iterates, from the DataModule's (e.g. samples that also carry
        their index, to find stored teacher log-probs). Default: as they are."""
        return train, val

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

    def batch_tokens(self, batch: dict) -> torch.Tensor:
        """Real (non-padding) tokens in a batch, for tokens/s (a tensor: no device sync per micro-batch)."""
        return batch["lengths"].sum()

    def sample_length(self, sample: dict) -> int:
        """Tokens of the longest row a sample becomes (sizes the model's context for the run)."""
        return len(sample["input_ids"])

    def length_growth(self) -> int:
        """Tokens a sample may gain during training beyond its longest row (sampled answers longer than the data's);
        the model's context for the run is sized with it. Default: 0."""
        return 0

    def batch_size(self, batch: dict) -> int:
        """Samples in a batch (weights validation means)."""
        return len(batch["lengths"])

    own_prefixes: tuple[str, ...] = ()
    """State-dict key prefixes of modules the objective adds (a reward head): saved by :meth:`save_extras` beside the
    weights, never in ``lit_model.pth``, so litgpt's tools keep reading it."""

    def save_extras(self, model: nn.Module, directory) -> None:
        """Write the objective's own files into a checkpoint directory (rank 0). Default: nothing."""

    def load_extras(self, model: nn.Module, directory) -> None:
        """Load them back when resuming. Default: nothing."""

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


def strip_eos(ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    return ids[:-1] if eos_id is not None and len(ids) and int(ids[-1]) == eos_id else ids


def unwrap(model: nn.Module) -> nn.Module:
    """The litgpt ``GPT`` inside Fabric/DDP/FSDP wrappers. (Fabric's wrapper forwards attribute reads to the model,
    so "has an lm_head" does not tell them apart; its ``named_modules`` carry a prefix the state dict does not.)"""
    from lightning.fabric.wrappers import _FabricModule

    while True:
        if isinstance(model, _FabricModule):
            model = model._original_module
        elif not hasattr(model, "lm_head") and hasattr(model, "module"):
            model = model.module
        else:
            return model


def flat_positions(mask: torch.Tensor) -> torch.Tensor:
    """Row-major indices of the ``True`` entries of a ``(B, T)`` mask. Call it in ``collate`` (on the CPU): on a GPU,
    ``nonzero`` waits for the device, which must not happen once per micro-batch."""
    return mask.reshape(-1).nonzero().squeeze(1)


_SELECTED: list[bool] = [False]
"""True while the last block hands the head only the selected rows (see :class:`_RowsOnlyLastBlock`)."""
PRUNE_LAST_BLOCK = True
"""Run the last block's MLP on the selected positions only (tests switch it off to compare with the full forward)."""


def rows_at(hidden: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """The ``(N, C)`` hidden rows of a ``(B, T, C)`` tensor at the row-major positions ``flat`` (or the rows as they
    are, when the last block already kept only those)."""
    if _SELECTED[0]:
        return hidden.reshape(-1, hidden.size(-1))
    return hidden.reshape(-1, hidden.size(-1)).index_select(0, flat)


class _RowsOnlyLastBlock(nn.Module):
    """Stands in for the last transformer block during one forward: attention at every position (its keys and values
    feed every later query), then the residual stream and the MLP — three quarters of a block's work — only at the
    positions a head reads. Exact: nothing else reaches the loss. Returns those rows as ``(1, N, C)``."""

    def __init__(self, block: nn.Module, flat: torch.Tensor) -> None:
        super().__init__()
        self.block, self.flat = block, flat

    def forward(self, x, cos, sin, mask=None, input_pos=None, input_pos_maxp1=None) -> torch.Tensor:
        return last_block_rows(self.block, x, cos, sin, self.flat, mask, input_pos, input_pos_maxp1).unsqueeze(0)


@contextlib.contextmanager
def rows_only_last_block(gpt: nn.Module, flat: torch.Tensor | None):
    """:class:`_RowsOnlyLastBlock` in place of ``gpt``'s last block inside the block (when it is a litgpt
    ``Block`` and there are positions to select); the model is unchanged after it, also when the call fails."""
    from litgpt.model import Block

    blocks = gpt.transformer.h
    if not PRUNE_LAST_BLOCK or flat is None or not isinstance(blocks[-1], Block):
        yield
        return
    original = blocks[-1]
    blocks[-1] = _RowsOnlyLastBlock(original, flat)
    _SELECTED[0] = True
    try:
        yield
    finally:
        blocks[-1] = original
        _SELECTED[0] = False


def forward_with_head(model: nn.Module, head: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """``model(input_ids)`` (through its Fabric/DDP wrapper, so hooks and gradient sync behave as usual) with ``head``
    standing in for the LM head during the call: the objectives' way to run a head on selected positions only. The
    last block works only at the head's positions (``head.flat``; :func:`rows_only_last_block`) unless the head
    reads more rows (``head.extra_rows``)."""
    gpt = unwrap(model)
    # a head that also reads other rows of the hidden states (ORPO's per-row means) needs the full last block
    flat = None if getattr(head, "extra_rows", None) is not None else getattr(head, "flat", None)
    with swapped_head(gpt, head), rows_only_last_block(gpt, flat):
        return model(input_ids)


HEAD_CHUNK_ELEMENTS = 2**21
"""Largest ``rows x vocab`` logits block the LM head materialises at once (8 MiB in fp32)."""
FUSED_FROZEN_HEAD = True
"""Use :class:`_FrozenHeadLogProbs` when the head is frozen (tests switch it off to compare with plain autograd)."""


@dataclass
class HeadOutput:
    """What :func:`answer_logps` gives an objective: per-token log-probs, and the logits' vocab means for metrics."""

    token_logps: torch.Tensor
    """``(N,)`` log-probability of the target token at each selected position (differentiable)."""
    mean_logits: torch.Tensor
    """``(N,)`` mean logit over the vocabulary at each selected position (detached; TRL's ``logits/*``)."""
    extra_mean_logits: torch.Tensor | None
    """``(E,)`` the same for the ``extra_rows`` (detached), or None."""


def frozen_linear(head: nn.Module) -> nn.Linear | None:
    """The plain ``nn.Linear`` behind ``head`` when none of its parameters trains (litgpt's LoRA head with r=0
    included), else None."""
    linear = head
    if not isinstance(linear, nn.Linear) and getattr(head, "r", None) == 0 and isinstance(head.linear, nn.Linear):
        linear = head.linear
    if type(linear) is not nn.Linear or any(p.requires_grad for p in head.parameters()):
        return None
    return linear


class _FrozenHeadLogProbs(torch.autograd.Function):
    """Target log-probs through a frozen linear head, block by block, with the backward done in the forward.

    For a frozen head ``W`` the only gradient needed is the one for the hidden rows, and for a log-prob it is one
    row vector per position: ``d log p(t|h) / dh = W^T (onehot(t) - softmax(W h))``. Computing it while the block's
    logits exist keeps ``N x hidden`` numbers for the backward — nothing of size ``vocab`` — and needs no second
    head matmul (which activation checkpointing would spend); the backward just scales each row by its upstream
    gradient. The arithmetic is the one autograd does (logits in float32, the product with ``W`` in ``W``'s dtype).
    """

    @staticmethod
    def forward(ctx, rows, weight, bias, targets, step):
        logps, means, grads = [], [], []
        with torch.no_grad():
            for start in range(0, rows.size(0), step):
                logits = F.linear(rows[start : start + step], weight, bias).float()
                target = targets[start : start + step].unsqueeze(1)
                lse = torch.logsumexp(logits, dim=-1, keepdim=True)
                logps.append((logits.gather(1, target) - lse).squeeze(1))
                means.append(logits.mean(-1))
                probs = logits.sub_(lse).exp_()  # softmax, in place of the logits
                probs.scatter_add_(1, target, torch.full_like(target, -1, dtype=probs.dtype))  # softmax - onehot
                grads.append(-(probs.to(weight.dtype) @ weight).to(rows.dtype))
        ctx.save_for_backward(torch.cat(grads) if grads else rows.new_zeros(rows.shape))
        ctx.mark_non_differentiable(mean := torch.cat(means) if means else rows.new_zeros(0))
        return (torch.cat(logps) if logps else rows.new_zeros(0)), mean

    @staticmethod
    def backward(ctx, grad_logps, grad_means):
        (grad_rows,) = ctx.saved_tensors
        return grad_logps.unsqueeze(1).to(grad_rows.dtype) * grad_rows, None, None, None, None


class _LogProbHead(nn.Module):
    """Stands in for ``lm_head`` during one forward: gathers the selected positions, then turns hidden states into
    target log-probs block by block, so at most :data:`HEAD_CHUNK_ELEMENTS` logits exist at a time.

    A frozen head (LoRA runs without ``lora_head``, frozen ``--freeze_other``) goes through
    :class:`_FrozenHeadLogProbs`: no logits kept, no recomputation. A trainable head runs each block under
    activation checkpointing: its logits are dropped after the forward and recomputed in the backward — one more
    head matmul per block in exchange for never holding the ``N x vocab`` logits, their log-softmax and its
    gradient, which dominate a small model's memory with a large vocabulary (32k rows x 1,000s of positions).
    """

    def __init__(
        self, head: nn.Module, vocab: int, flat: torch.Tensor, targets: torch.Tensor, extra_rows: Callable | None
    ) -> None:
        super().__init__()
        self.head, self.vocab = head, vocab
        self.flat, self.targets, self.extra_rows = flat, targets, extra_rows
        self.mean_logits: torch.Tensor | None = None
        self.extra_mean_logits: torch.Tensor | None = None

    def _block(self, rows: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(rows).float()
        picked = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        return picked - torch.logsumexp(logits, dim=-1), logits.detach().mean(-1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = rows_at(hidden, self.flat)
        step = max(1, HEAD_CHUNK_ELEMENTS // self.vocab)
        training = torch.is_grad_enabled() and rows.requires_grad
        linear = frozen_linear(self.head) if training and FUSED_FROZEN_HEAD else None
        if linear is not None:
            token_logps, self.mean_logits = _FrozenHeadLogProbs.apply(
                rows, linear.weight, linear.bias, self.targets, step
            )
        else:
            logps, means = [], []
            for start in range(0, rows.size(0), step):
                block = (rows[start : start + step], self.targets[start : start + step])
                if training and rows.size(0) > step:
                    lp, mean = checkpoint(self._block, *block, use_reentrant=False)
                else:
                    lp, mean = self._block(*block)
                logps.append(lp)
                means.append(mean)
            self.mean_logits = torch.cat(means) if means else rows.new_zeros(0)
            token_logps = torch.cat(logps) if logps else rows.new_zeros(0, requires_grad=rows.requires_grad)
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
    head = _LogProbHead(output_head(gpt), gpt.config.padded_vocab_size, flat, targets, extra_rows)
    token_logps = forward_with_head(model, head, input_ids)
    return HeadOutput(token_logps, head.mean_logits, head.extra_mean_logits)


class _OnPositions(nn.Module):
    """Stands in for ``lm_head`` during one forward: applies ``fn`` to the hidden rows at ``flat`` only."""

    def __init__(self, flat: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.flat, self.fn = flat, fn

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fn(rows_at(hidden, self.flat))


def on_positions(
    model: nn.Module, input_ids: torch.Tensor, flat: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``fn(final hidden states at the row-major positions flat)`` from one forward of ``model`` (through its
    Fabric/DDP wrapper); the LM head does not run unless ``fn`` calls it. Reward heads use it on the last token."""
    return forward_with_head(model, _OnPositions(flat, fn), input_ids)
