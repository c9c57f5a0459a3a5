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
(``--topk_tail false``). A sampled store (:mod:`litgpt_ext.kd.sampled`) gives tokens drawn from the teacher
instead: the loss is then the unbiased estimate of forward KL at temperature 1 that module derives. The divergences
are pure functions of log-probabilities below, so they are tested on
hand-made tensors against TRL; the head machinery runs them block by block so that no ``positions × vocab`` tensor
of either model ever exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from litgpt_ext.data.batches import pad_collate
from litgpt_ext.model.blockwise_head import BlockwiseHead
from litgpt_ext.model.heads import forward_with_head, output_head, unwrap
from litgpt_ext.model.patches import fast_paths
from litgpt_ext.training.objectives.base import Objective, StepHooks
from litgpt_ext.training.objectives.divergences import (
    NEG_INF,
    KDSettings,
    divergence,
    generalized_jsd,
    sampled_forward_kl,
    topk_buckets,
)


class TeacherBlock:
    """The teacher's side of one block of answer positions, as the loss needs it."""

    def __init__(
        self,
        logits: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
        logps: torch.Tensor | None = None,
        tail: torch.Tensor | None = None,
        target_logps: torch.Tensor | None = None,
        p_hat: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
        top: torch.Tensor | None = None,
    ) -> None:
        self.logits = logits
        """``(n, V)`` full logits (a local teacher), or None."""
        self.ids, self.logps, self.tail = ids, logps, tail
        """Stored top-k: ``(n, k)`` token ids sorted by probability, their log-probs at the store's temperature,
        and ``(n,)`` the log of the remaining mass."""
        self.target_logps = target_logps
        """``(n,)`` the teacher's log-prob of the label at temperature 1 (stored top-k; for ``teacher_ce``)."""
        self.p_hat, self.entropy, self.top = p_hat, entropy, top
        """A sampled store (:mod:`litgpt_ext.kd.sampled`): ``ids`` are then the drawn tokens (``-1`` pads),
        ``p_hat`` ``(n, W)`` their estimated probabilities, ``entropy`` and ``top`` ``(n,)`` the teacher's."""


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
    if teacher.p_hat is not None:  # sampled: forward KL at temperature 1, estimated (checked by make_teacher)
        value = sampled_forward_kl(s, teacher.ids, teacher.p_hat.float(), teacher.entropy.float())
        loss = (1 - kd.kd_ratio) * ce + kd.kd_ratio * kd.scale * value
        with torch.no_grad():
            metrics = {"kd": value.detach(), "ce": ce.detach(), "kl_teacher_student": value.detach(),
                       "top1": (student_logits.argmax(-1) == teacher.top).float(),
                       "teacher_ce": -teacher.target_logps.float()}  # fmt: skip
        return loss, metrics
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


class _KDHead(BlockwiseHead):
    """The KD losses at the answer positions (:func:`block_losses`), block by block; the metrics are kept.

    ``teacher_block(start, end)`` returns the teacher's :class:`TeacherBlock` for answer positions ``start:end`` (a
    local teacher computes those logits from its own hidden rows then, so they do not outlive the block — and a
    checkpointed block recomputes them with it in the backward; stored top-k are sliced)."""

    def __init__(self, head, vocab, flat, targets, teacher_block: Callable, kd: KDSettings, store_temperature, fused):
        super().__init__(head, vocab, flat, fused)
        self.targets, self.teacher_block, self.kd, self.store_temperature = (
            targets,
            teacher_block,
            kd,
            store_temperature,
        )

    def block(self, logits: torch.Tensor, start: int) -> torch.Tensor:
        end = start + logits.size(0)
        loss, metrics = block_losses(
            logits, self.teacher_block(start, end), self.targets[start:end], self.kd, self.store_temperature
        )
        self.keep(**metrics)
        return loss


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
    fused = fast_paths(gpt).frozen_head
    vocab = gpt.config.padded_vocab_size
    head = _KDHead(output_head(gpt), vocab, flat, targets, teacher_block, kd, store_temperature, fused)
    losses = forward_with_head(model, head, input_ids)
    n = max(len(flat), 1)
    return losses.sum() / n, {key: value.sum() / n for key, value in head.kept.items()}


class KDObjective(StepHooks, Objective):
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
        """A :class:`litgpt_ext.kd.teacher.Teacher`: gives the teacher's side of a batch's answer positions."""
        self.pad_id, self.max_seq_length = pad_id, max_seq_length
        teacher.max_seq_length = max_seq_length
        self.sampler = sampler
        """An :class:`~litgpt_ext.training.onpolicy.OnPolicySampler` (on-policy / sequence-level KD), or None."""
        self.fabric = None

    @property
    def remote(self) -> bool:
        return self.teacher.remote

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
