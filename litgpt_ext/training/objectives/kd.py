"""Knowledge distillation: the student learns the teacher's next-token distribution, not only its text.

Per supervised (answer) position, with the student's and the teacher's log-probabilities ``s`` and ``t`` at
temperature ``τ`` (``log_softmax(logits / τ)``), the divergence is TRL's ``generalized_jsd_loss`` (GKD, Agarwal et
al. 2024, eq. 1):

* ``β = 0`` — forward KL ``KL(p_t ‖ p_s) = Σ p_t (t − s)`` (the classic KD loss, Hinton et al. 2015);
* ``β = 1`` — reverse KL ``KL(p_s ‖ p_t) = Σ p_s (s − t)`` (mode-seeking; the usual choice on-policy);
* else — with the mixture ``m = (1 − β) p_s + β p_t``: ``β KL(p_t ‖ m) + (1 − β) KL(p_s ‖ m)``.

``--divergence`` chooses other divergences of the same two distributions (``p`` the teacher's, ``q`` the student's):

* ``skew_kl`` — ``KL(p ‖ a·p + (1 − a)·q)`` and ``skew_rkl`` — ``KL(q ‖ a·q + (1 − a)·p)`` (DistiLLM, Ko et al.,
  ICML 2024; ``a`` = ``--skew_alpha``, 0.1 as there): the mixture keeps the ratio bounded where the student puts
  almost no mass, which is what makes plain KL's gradients explode early on; ``a → 0`` is forward / reverse KL;
* ``akl`` — adaptive KL (Wu et al., 2024): ``w_head · KL(p ‖ q) + w_tail · KL(q ‖ p)``, the weights the shares of
  ``Σ|p − q|`` in the teacher's *head* (its most likely tokens up to cumulative probability ``--akl_mu``, the top
  token always) and in the rest, taken without gradient: forward KL fits the head, reverse KL the tail.

The objective is ``loss = (1 − α) · CE(labels) + α · τ² · D`` (``α`` is torchtune's ``kd_ratio``; the ``τ²`` factor,
``--scale_by_t2``, keeps gradient magnitudes comparable across temperatures as in Hinton et al. — TRL's GKD does not
apply it), each term a mean over the answer positions. The cross-entropy is at temperature 1.

The teacher's distribution is either the full vocabulary (a local teacher's logits) or its stored top-k
(:mod:`litgpt_ext.kd.store`): then both distributions are reduced to the teacher's k tokens plus one *tail* bucket
holding the rest of each one's mass (TRL's ``loss_add_tail``), or renormalised over the k tokens
(``--topk_tail false``). The divergences are pure functions of log-probabilities below, so they are tested on
hand-made tensors against TRL; the head machinery runs them block by block so that no ``positions × vocab`` tensor
of either model ever exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from litgpt_ext.heads import output_head
from litgpt_ext.training.objectives import base
from litgpt_ext.training.objectives.base import Objective, forward_with_head, frozen_linear, rows_at, unwrap
from litgpt_ext.training.objectives.sft import pad_collate

NEG_INF = float("-inf")


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ q)`` summed over the last dimension, as ``F.kl_div(log_q, log_p, log_target=True)`` computes it
    (TRL's arithmetic), with the ``0 · log 0 = 0`` convention where ``p`` has no mass (a ``-inf`` log-prob)."""
    terms = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    return torch.where(torch.isneginf(log_p), torch.zeros_like(terms), terms).sum(-1)


def generalized_jsd(student_logps: torch.Tensor, teacher_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-position generalized JSD (see the module docstring) of ``(..., V)`` log-probabilities -> ``(...)``."""
    if beta == 0:
        return _kl_terms(teacher_logps, student_logps)
    if beta == 1:
        return _kl_terms(student_logps, teacher_logps)
    b = torch.tensor(beta, dtype=student_logps.dtype, device=student_logps.device)
    mixture = torch.logsumexp(torch.stack([student_logps + torch.log1p(-b), teacher_logps + torch.log(b)]), dim=0)
    return beta * _kl_terms(teacher_logps, mixture) + (1 - beta) * _kl_terms(student_logps, mixture)


def _mixture(log_a: torch.Tensor, log_b: torch.Tensor, weight: float) -> torch.Tensor:
    """``log(weight · a + (1 − weight) · b)`` from log-probabilities. Where neither has mass (an empty top-k
    bucket) the result is a huge negative number rather than ``-inf``: a ``logsumexp`` of two ``-inf`` has a NaN
    gradient, and a zero weight times NaN is still NaN."""
    w = torch.tensor(weight, dtype=log_a.dtype, device=log_a.device)
    both = torch.stack([log_a + torch.log(w), log_b + torch.log1p(-w)]).clamp(min=torch.finfo(log_a.dtype).min)
    return torch.logsumexp(both, dim=0)


def skew_kl(student_logps: torch.Tensor, teacher_logps: torch.Tensor, alpha: float) -> torch.Tensor:
    """DistiLLM's skew KL ``KL(p ‖ α·p + (1 − α)·q)`` per position (``p`` teacher, ``q`` student); ``α = 0`` is
    forward KL. Its value is the KL itself (DistiLLM's code drops ``p``'s entropy, a constant in the gradient)."""
    return _kl_terms(teacher_logps, _mixture(teacher_logps, student_logps, alpha))


def skew_reverse_kl(student_logps: torch.Tensor, teacher_logps: torch.Tensor, alpha: float) -> torch.Tensor:
    """DistiLLM's skew reverse KL ``KL(q ‖ α·q + (1 − α)·p)`` per position; ``α = 0`` is reverse KL."""
    return _kl_terms(student_logps, _mixture(student_logps, teacher_logps, alpha))


def adaptive_kl(student_logps: torch.Tensor, teacher_logps: torch.Tensor, mu: float) -> torch.Tensor:
    """AKL (Wu et al., 2024) per position: ``g_head / g · KL(p ‖ q) + g_tail / g · KL(q ‖ p)``.

    The teacher's tokens sorted by probability; the head is the prefix whose cumulative probability stays within
    ``mu`` (the most likely token always belongs to it), the tail the rest; ``g_head`` and ``g_tail`` are
    ``Σ |p − q|`` over each and ``g`` their sum (0/0 → 0: equal distributions have nothing to fit). The weights are
    constants for the gradient, as in the paper's code. With a top-k store the tail bucket is one token of the
    sorted order."""
    with torch.no_grad():
        p_sorted, order = teacher_logps.exp().sort(dim=-1, descending=True)
        gap = (p_sorted - student_logps.exp().gather(-1, order)).abs()
        tail = p_sorted.cumsum(-1) > mu
        tail[..., 0] = False
        g_tail = gap.masked_fill(~tail, 0).sum(-1)
        g_all = gap.sum(-1)
        w_tail = torch.where(g_all > 0, g_tail / g_all.clamp(min=torch.finfo(g_all.dtype).tiny), 0.0)
        w_head = torch.where(g_all > 0, 1 - w_tail, 0.0)
    return w_head * _kl_terms(teacher_logps, student_logps) + w_tail * _kl_terms(student_logps, teacher_logps)


DIVERGENCES = ("gjsd", "skew_kl", "skew_rkl", "akl")
"""``--divergence`` choices: ``gjsd`` is GKD's family, chosen within by ``--beta`` (0 forward KL, 1 reverse KL)."""


def divergence(student_logps: torch.Tensor, teacher_logps: torch.Tensor, kd: KDSettings) -> torch.Tensor:
    """The divergence ``kd`` names, per position, of ``(..., V)`` log-probabilities."""
    if kd.divergence == "gjsd":
        return generalized_jsd(student_logps, teacher_logps, kd.beta)
    if kd.divergence == "skew_kl":
        return skew_kl(student_logps, teacher_logps, kd.skew_alpha)
    if kd.divergence == "skew_rkl":
        return skew_reverse_kl(student_logps, teacher_logps, kd.skew_alpha)
    if kd.divergence == "akl":
        return adaptive_kl(student_logps, teacher_logps, kd.akl_mu)
    raise ValueError(f"unknown divergence {kd.divergence!r}; one of {DIVERGENCES}")


def jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> torch.Tensor:
    """TRL's ``generalized_jsd_loss`` signature on full logits ``(B, T, V)``: the mean divergence over the positions
    whose label is not ``ignore_index`` (no τ² factor). For tests and small inputs; training uses the blockwise
    head below, which never materialises these tensors."""
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    per_position = generalized_jsd(s, t, beta)
    if labels is None:
        return per_position.mean()
    mask = labels != ignore_index
    return per_position[mask].sum() / mask.sum().clamp(min=1)


def topk_buckets(student_logps: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``(N, k + 1)`` student log-probs of the teacher's k tokens plus the tail (everything else) from full
    ``(N, V)`` log-probs; the tail is a log-sum-exp over the other tokens (exact, also when it is tiny).

    An id of ``-1`` is padding (a row with fewer than k known tokens, as an API teacher's can be): its bucket is
    empty (``-inf``) and its mass stays in the tail."""
    pad = ids < 0
    if not bool(pad.any()):
        picked = student_logps.gather(1, ids)
        rest = student_logps.scatter(1, ids, NEG_INF)
    else:
        safe = ids.clamp(min=0)
        picked = student_logps.gather(1, safe).masked_fill(pad, NEG_INF)
        taken = torch.zeros_like(student_logps, dtype=torch.int32).scatter_add_(1, safe, (~pad).to(torch.int32))
        rest = student_logps.masked_fill(taken > 0, NEG_INF)
    return torch.cat([picked, torch.logsumexp(rest, dim=-1, keepdim=True)], dim=1)


@dataclass(frozen=True)
class KDSettings:
    """What the divergence is and how it mixes with the hard loss."""

    beta: float = 0.0
    temperature: float = 1.0
    kd_ratio: float = 0.5
    scale_by_t2: bool = True
    topk_tail: bool = True
    divergence: str = "gjsd"
    """One of :data:`DIVERGENCES`."""
    skew_alpha: float = 0.1
    """The skew divergences' mixture weight, in (0, 1)."""
    akl_mu: float = 0.5
    """AKL's head: the teacher's tokens up to this cumulative probability."""

    @property
    def is_forward_kl(self) -> bool:
        return self.divergence == "gjsd" and self.beta == 0

    @property
    def scale(self) -> float:
        return self.temperature**2 if self.scale_by_t2 else 1.0


class TeacherBlock:
    """The teacher's side of one block of answer positions, as the loss needs it."""

    def __init__(
        self,
        logits: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
        logps: torch.Tensor | None = None,
        tail: torch.Tensor | None = None,
        target_logps: torch.Tensor | None = None,
    ) -> None:
        self.logits = logits
        """``(n, V)`` full logits (a local teacher), or None."""
        self.ids, self.logps, self.tail = ids, logps, tail
        """Stored top-k: ``(n, k)`` token ids sorted by probability, their log-probs at the store's temperature,
        and ``(n,)`` the log of the remaining mass."""
        self.target_logps = target_logps
        """``(n,)`` the teacher's log-prob of the label at temperature 1 (stored top-k; for ``teacher_ce``)."""


def block_losses(
    student_logits: torch.Tensor, teacher: TeacherBlock, targets: torch.Tensor, kd: KDSettings, store_temperature=1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-position ``(1 − α)·CE + α·scale·D`` for one block (differentiable in ``student_logits``) and detached
    per-position metrics (their sums are taken by the caller).

    ``student_logits`` ``(n, V)`` float32; the teacher's logits (or top-k) are for the same positions and
    vocabulary. Metrics: ``kd`` (the divergence), ``ce`` (the student's cross-entropy on the labels),
    ``kl_teacher_student`` (forward KL on the loss's support, whatever β is), ``top1`` (student argmax = teacher
    argmax) and ``teacher_ce``."""
    tau = kd.temperature
    log_probs = F.log_softmax(student_logits, dim=-1)
    ce = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    s = log_probs if tau == 1 else F.log_softmax(student_logits / tau, dim=-1)
    if teacher.logits is not None:
        t = F.log_softmax(teacher.logits.float() / tau, dim=-1)
        teacher_top = teacher.logits.argmax(-1)
        with torch.no_grad():
            teacher_ce = -F.log_softmax(teacher.logits.float(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    else:
        stored = teacher.logps.float()
        teacher_top = teacher.ids[:, 0]
        teacher_ce = -teacher.target_logps.float()
        if kd.topk_tail:
            s = topk_buckets(s, teacher.ids)
            tail = teacher.tail.float()  # a tail over no tokens (k covers the vocabulary) holds no mass
            t = torch.cat([stored, torch.where(torch.isneginf(s[:, -1]), NEG_INF, tail).unsqueeze(1)], dim=1)
        else:  # renormalised over the k tokens; stored log-probs rescale to any temperature up to a constant
            t = F.log_softmax(stored * (store_temperature / tau), dim=-1)
            pad = teacher.ids < 0
            s = F.log_softmax(s.gather(1, teacher.ids.clamp(min=0)).masked_fill(pad, NEG_INF), dim=-1)
    value = divergence(s, t, kd)
    loss = (1 - kd.kd_ratio) * ce + kd.kd_ratio * kd.scale * value
    with torch.no_grad():
        metrics = {
            "kd": value.detach(),
            "ce": ce.detach(),
            "kl_teacher_student": (value if kd.is_forward_kl else generalized_jsd(s, t, 0.0)).detach(),
            "top1": (student_logits.argmax(-1) == teacher_top).float(),
            "teacher_ce": teacher_ce.detach(),
        }
    return loss, metrics


METRICS = ("kd", "ce", "kl_teacher_student", "top1", "teacher_ce")


class _FrozenHeadKD(torch.autograd.Function):
    """:func:`block_losses` through a frozen linear head, block by block, with the backward done in the forward.

    As :class:`~litgpt_ext.training.objectives.base._FrozenHeadLogProbs` does for log-probs: a position's loss
    depends on its own hidden row only, so its gradient is one row vector ``Wᵀ ∂ℓ/∂z`` (for forward KL at τ = 1,
    ``Wᵀ(softmax_s − p_t)``), computed while the block's logits exist. The backward keeps ``N × hidden`` numbers and
    nothing of size vocab, and needs no second head matmul. ``∂ℓ/∂z`` is taken by autograd on the block's logits,
    so every divergence and temperature gets its exact gradient."""

    @staticmethod
    def forward(ctx, rows, weight, bias, blocks_fn, step, sums):
        losses, grads = [], []
        for start in range(0, rows.size(0), step):
            with torch.no_grad():
                logits = F.linear(rows[start : start + step], weight, bias).float()
            logits.requires_grad_(True)
            with torch.enable_grad():
                loss, metrics = blocks_fn(logits, start, start + logits.size(0))
                (grad_logits,) = torch.autograd.grad(loss.sum(), logits)
            losses.append(loss.detach())
            grads.append((grad_logits.to(weight.dtype) @ weight).to(rows.dtype))
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value.sum()
        ctx.save_for_backward(torch.cat(grads) if grads else rows.new_zeros(rows.shape))
        return torch.cat(losses) if losses else rows.new_zeros(0)

    @staticmethod
    def backward(ctx, grad_losses):
        (grad_rows,) = ctx.saved_tensors
        return grad_losses.unsqueeze(1).to(grad_rows.dtype) * grad_rows, None, None, None, None, None


class _KDHead(nn.Module):
    """Stands in for the student's ``lm_head`` for one forward: the KD losses at the answer positions, block by
    block (at most :data:`~litgpt_ext.training.objectives.base.HEAD_CHUNK_ELEMENTS` logits of each model at a time).

    ``teacher_block(start, end)`` returns the teacher's :class:`TeacherBlock` for answer positions
    ``start:end`` (a local teacher computes those logits from its own hidden rows then, so they do not outlive the
    block; stored top-k are sliced). A trainable head runs each block under activation checkpointing (the teacher's
    block is recomputed with it in the backward); a frozen head goes through :class:`_FrozenHeadKD`."""

    def __init__(self, head, vocab, flat, targets, teacher_block: Callable, kd: KDSettings, store_temperature):
        super().__init__()
        self.head, self.vocab, self.flat, self.targets = head, vocab, flat, targets
        self.teacher_block, self.kd, self.store_temperature = teacher_block, kd, store_temperature
        self.sums: dict[str, torch.Tensor] = {}

    def _losses(self, logits: torch.Tensor, start: int, end: int):
        return block_losses(
            logits, self.teacher_block(start, end), self.targets[start:end], self.kd, self.store_temperature
        )

    def _checkpointed(self, rows: torch.Tensor, start: int):
        loss, metrics = self._losses(self.head(rows).float()[:, : self.vocab], start, start + rows.size(0))
        return loss, *(metrics[k] for k in METRICS)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = rows_at(hidden, self.flat)
        step = max(1, base.HEAD_CHUNK_ELEMENTS // self.vocab)
        training = torch.is_grad_enabled() and rows.requires_grad
        linear = frozen_linear(self.head) if training and base.FUSED_FROZEN_HEAD else None
        if linear is not None:
            self.sums = {}
            return _FrozenHeadKD.apply(rows, linear.weight, linear.bias, self._losses, step, self.sums)
        losses, sums = [], {}
        for start in range(0, rows.size(0), step):
            block = rows[start : start + step]
            if training and rows.size(0) > step:
                loss, *values = checkpoint(self._checkpointed, block, start, use_reentrant=False)
            else:
                loss, *values = self._checkpointed(block, start)
            losses.append(loss)
            for key, value in zip(METRICS, values, strict=True):
                sums[key] = sums.get(key, 0.0) + value.detach().sum()
        self.sums = sums
        return torch.cat(losses) if losses else rows.new_zeros(0, requires_grad=rows.requires_grad)


def kd_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    flat: torch.Tensor,
    targets: torch.Tensor,
    teacher_block: Callable,
    kd: KDSettings,
    store_temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean KD loss over the answer positions ``flat`` and the metrics' means, from one student forward."""
    gpt = unwrap(model)
    head = _KDHead(output_head(gpt), gpt.config.padded_vocab_size, flat, targets, teacher_block, kd, store_temperature)
    losses = forward_with_head(model, head, input_ids)
    n = max(len(flat), 1)
    return losses.sum() / n, {key: value / n for key, value in head.sums.items()}


class KDObjective(Objective):
    """Distillation on the answer positions of SFT data; the teacher's side comes from a :class:`Teacher`."""

    name = "kd"
    plots = {
        "loss.png": ("loss", ("loss", "val_loss")),
        "kd.png": ("divergence / KL", ("kd_loss", "val_kd_loss", "val_kl_teacher_student")),
    }

    def __init__(
        self, teacher, kd: KDSettings, pad_id: int = 0, max_seq_length: int | None = None, sampler=None
    ) -> None:
        self.teacher, self.kd = teacher, kd
        """A :class:`litgpt_ext.training.teacher.Teacher`: gives the teacher's side of a batch's answer positions."""
        self.pad_id, self.max_seq_length = pad_id, max_seq_length
        self.sampler = sampler
        """An :class:`~litgpt_ext.training.onpolicy.OnPolicySampler` (on-policy / sequence-level KD), or None."""
        self.fabric = None

    def wrap_datasets(self, train, val):
        return self.teacher.wrap_datasets(train, val)

    def setup(self, fabric, model, train_data, val_data, out_dir) -> None:
        self.fabric = fabric
        self.teacher.setup(fabric, model, {"train": train_data, "val": val_data})

    def config(self) -> dict:
        config = {
            "beta": self.kd.beta,
            "temperature": self.kd.temperature,
            "kd_ratio": self.kd.kd_ratio,
            "scale_by_t2": self.kd.scale_by_t2,
            "topk_tail": self.kd.topk_tail,
            "divergence": self.kd.divergence,
            "teacher": self.teacher.describe(),
        }
        if self.kd.divergence in ("skew_kl", "skew_rkl"):
            config["skew_alpha"] = self.kd.skew_alpha
        if self.kd.divergence == "akl":
            config["akl_mu"] = self.kd.akl_mu
        if self.sampler is not None:
            policy = self.sampler.policy
            config |= {"lmbda": policy.lmbda, "seq_kd": policy.seq_kd, "gen": vars(policy.gen)}
        return config

    def length_growth(self) -> int:
        """Room for sampled answers: up to --gen.max_new_tokens and an EOS after any prompt."""
        return self.sampler.policy.gen.max_new_tokens + 1 if self.sampler is not None else 0

    def on_step(self, model: nn.Module, batches: list[dict], iteration: int) -> list[dict]:
        """Per micro-batch, with probability λ the current student's samples replace the answers (on-policy);
        otherwise, with ``seq_kd``, the teacher's do (sequence-level KD) — TRL's order. Each model samples all its
        micro-batches of the step in one engine call (see :mod:`litgpt_ext.training.onpolicy`)."""
        if self.sampler is None:
            return batches
        turns = [self.sampler.student_turn(iteration + i) for i in range(len(batches))]
        for on in turns:
            self.sampler.count(on)
        out = list(batches)
        student = [(b, iteration + i) for i, (b, on) in enumerate(zip(batches, turns, strict=True)) if on]
        if student:
            autocast = self.fabric.autocast() if self.fabric is not None else None
            rebuilt = iter(self.sampler.resample_many(model, student, "student", autocast))
            out = [next(rebuilt) if on else b for b, on in zip(out, turns, strict=True)]
        teacher = [(b, iteration + i) for i, (b, on) in enumerate(zip(batches, turns, strict=True)) if not on]
        if self.sampler.policy.seq_kd and teacher:
            context = unwrap(model).max_seq_length
            rebuilt = iter(self.sampler.resample_many(self.teacher.model, teacher, "teacher",
                                                      self.teacher.autocast(), context))  # fmt: skip
            out = [b if on else next(rebuilt) for b, on in zip(out, turns, strict=True)]
        return out

    def step_stats(self, elapsed: float) -> dict[str, float]:
        return self.sampler.step_stats(elapsed) if self.sampler is not None else {}

    def report(self, seconds: float) -> dict:
        return self.sampler.report(seconds) if self.sampler is not None else {}

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_collate(samples, self.pad_id, -100, self.max_seq_length)
        return self.teacher.collate(samples, batch)

    def compute(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index = batch["answer_index"]
        targets = batch["labels"][:, 1:].reshape(-1).index_select(0, index)
        input_ids = batch["input_ids"][:, :-1]
        teacher_block = self.teacher.blocks(batch, input_ids, index)
        loss, means = kd_forward(
            model, input_ids, index, targets, teacher_block, self.kd, self.teacher.store_temperature
        )
        metrics = {
            "kd_loss": means["kd"] * self.kd.scale,
            "ce_loss": means["ce"],
            "kl_teacher_student": means["kl_teacher_student"],
            "top1_agreement": means["top1"],
        }
        if not model.training:
            metrics["teacher_ce"] = means["teacher_ce"]
        return loss, metrics

    def derived_val_metrics(self, means: dict[str, float]) -> dict[str, float]:
        return {"val_ppl": math.exp(min(means["val_ce_loss"], 50.0))}
