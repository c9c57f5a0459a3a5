"""Distillation across tokenizers: ULD and GOLD's hybrid, on aligned spans of the same answer text.

When the teacher's vocabulary is not the student's, their distributions cannot be compared token by token. Both
models read the same answer, each in its own tokens; :mod:`litgpt_ext.kd.align` cuts it into **groups** that end
where both tokenizations end a token. Per group each side gives one distribution, its *merge* (GOLD's "bayesian"
merge, Patiño et al. 2025): the distribution at the group's last position — which predicts the span's last token
given the actual tokens before it — times the probability of those earlier tokens, ``Π p(y_j)`` (each floored at
``1e-8`` as GOLD does). Its mass at the actual last token is the span's probability, the product along it; a group
of one token is that position's distribution.

Two divergences of the merged distributions ``p_s`` (student, over its vocabulary) and ``p_t`` (teacher, over its):

* ``uld`` — Universal Logit Distillation (Boizard et al., 2024): ``Σ_r |sort(p_s)_r − sort(p_t)_r|``, the sorted
  vectors padded with zeros to one length — the Wasserstein-1 distance between the two distributions when the
  cost of moving mass between any two different tokens is the same. No vocabulary mapping is needed.
* ``align`` — GOLD's hybrid: on the tokens the two vocabularies share (the same bytes; special tokens by name, else
  by role: :func:`litgpt_ext.kd.token_bytes.shared_tokens`) the distributions compare directly with
  ``--divergence`` (``--beta`` 0: ``Σ p_t (log p_t − log p_s)`` over the shared tokens, the probabilities floored at
  ``1e-8`` and not renormalised, as GOLD computes it); on the rest, ULD. Weighted ``w · shared + (1 − w) · rest``,
  ``w`` = ``--cross_shared_weight`` or, by default, GOLD's share of the teacher's vocabulary that is shared.

The loss is ``(1 − α) · CE(labels) + α · τ² · mean over groups of D`` (CE a mean over answer tokens; the merge at
temperature ``τ``). With one sample, α = ``uld_distillation_weight`` and 1 − α = ``uld_crossentropy_weight``, it
equals TRL's ``trl.experimental.gold.ULDLoss`` (``uld_token_merge_strategy="bayesian"``, byte offsets, EOS not
skipped); over a batch TRL averages per sample first, this per group. Blockwise like the other KD losses: blocks cut
between groups, so no ``positions × vocab`` tensor of either model is held beyond one block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from litgpt_ext.model.blockwise_head import BlockwiseHead
from litgpt_ext.model.heads import forward_with_head, output_head, unwrap
from litgpt_ext.model.patches import fast_paths
from litgpt_ext.training.objectives.divergences import KDSettings, divergence
from litgpt_ext.training.objectives.kd import KDObjective

FLOOR = 1e-8
"""GOLD's floor for a probability inside a merge (and for the shared tokens' logs)."""


@dataclass(frozen=True)
class CrossSettings:
    """How a cross-tokenizer group's two distributions compare (see the module docstring)."""

    mode: str = "uld"
    shared_weight: float | None = None
    """``align``: the weight of the shared-token part; None: the teacher's shared share, as GOLD."""


class SharedVocab:
    """The token pairs the two vocabularies share, as index tensors, and the rest of each as masks."""

    def __init__(self, pairs: dict[int, int], teacher_vocab: int, student_vocab: int) -> None:
        kept = sorted((t, s) for t, s in pairs.items() if t < teacher_vocab and s < student_vocab)
        self.teacher = torch.tensor([t for t, _ in kept], dtype=torch.long)
        self.student = torch.tensor([s for _, s in kept], dtype=torch.long)
        self.teacher_rest = torch.ones(teacher_vocab, dtype=torch.bool)
        self.teacher_rest[self.teacher] = False
        self.student_rest = torch.ones(student_vocab, dtype=torch.bool)
        self.student_rest[self.student] = False
        self.to_student = torch.full((teacher_vocab,), -1, dtype=torch.long)
        self.to_student[self.teacher] = self.student
        self.share = len(kept) / max(teacher_vocab, 1)

    def to(self, device) -> SharedVocab:
        for name in ("teacher", "student", "teacher_rest", "student_rest", "to_student"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def span_scale(label_logps: torch.Tensor, group_of: torch.Tensor, last: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``(G,)`` log of ``Π p(y_j)`` over each group's tokens before its last, each floored at :data:`FLOOR`.

    ``label_logps`` ``(n,)`` the log-probability of each position's actual token; ``group_of`` ``(n,)`` its group
    (-1: in none); ``last`` ``(n,)`` whether it is its group's last position."""
    earlier = (group_of >= 0) & ~last
    values = label_logps.clamp(min=math.log(FLOOR)).masked_fill(~earlier, 0.0)
    return values.new_zeros(n_groups).index_add(0, group_of.clamp(min=0), values)


def sorted_l1(p_student: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    """ULD per row: ``Σ |sort(p_s) − sort(p_t)|``, both sorted descending and zero-padded to one width."""
    s = p_student.sort(dim=-1, descending=True).values
    t = p_teacher.sort(dim=-1, descending=True).values
    width = max(s.size(-1), t.size(-1))
    s, t = F.pad(s, (0, width - s.size(-1))), F.pad(t, (0, width - t.size(-1)))
    return (s - t).abs().sum(-1)


def cross_divergence(
    p_student: torch.Tensor, p_teacher: torch.Tensor, kd: KDSettings, cross: CrossSettings, shared: SharedVocab | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per group ``D`` of merged distributions ``(G, V_s)`` and ``(G, V_t)`` and its parts (see the module docstring)."""
    if cross.mode == "uld":
        value = sorted_l1(p_student, p_teacher)
        return value, {"uld": value}
    if shared is None or not len(shared.teacher):
        raise ValueError("align needs the shared tokens")
    s_log = p_student[:, shared.student].clamp(min=FLOOR).log()
    t_log = p_teacher[:, shared.teacher].clamp(min=FLOOR).log()
    on_shared = divergence(s_log, t_log, kd)
    rest = sorted_l1(p_student[:, shared.student_rest], p_teacher[:, shared.teacher_rest])
    w = shared.share if cross.shared_weight is None else cross.shared_weight
    return w * on_shared + (1 - w) * rest, {"shared_kd": on_shared, "uld": rest}


def sorted_l1_topk(p_student: torch.Tensor, p_teacher_top: torch.Tensor, teacher_tail: torch.Tensor) -> torch.Tensor:
    """ULD against a stored top-k: the k largest on each side compared in order, then the student's remaining mass
    against the teacher's tail (one bucket each, as the top-k KD losses keep it) — a lower bound of the full
    sorted L1 by the triangle inequality, equal to it when the tails are alike."""
    s = p_student.sort(dim=-1, descending=True).values
    k = p_teacher_top.size(-1)
    s = F.pad(s, (0, max(0, k - s.size(-1))))
    return (s[:, :k] - p_teacher_top).abs().sum(-1) + (s[:, k:].sum(-1) - teacher_tail).abs()


@dataclass
class TeacherGroups:
    """The teacher's side of a block's groups: ``scale`` ``(G,)`` the log of each group's earlier-token product, and
    either its full log-probs ``logps`` ``(G, V_t)`` at the last positions, or a stored top-k there (``ids`` and
    their log-probs ``top`` ``(G, k)``, ``tail`` ``(G,)`` the log of the rest)."""

    scale: torch.Tensor
    logps: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    top: torch.Tensor | None = None
    tail: torch.Tensor | None = None


def merged(logps_last: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A group's merged distribution: the last position's probabilities times the earlier tokens' product."""
    return (logps_last + scale.unsqueeze(1)).exp()


class CrossBatch:
    """A batch's alignment, as :meth:`litgpt_ext.kd.cross_teacher.CrossTokenizerTeacher.collate` writes it: per
    student answer position its group (-1: none) and whether it closes it; the number of groups."""

    def __init__(self, batch: dict) -> None:
        self.group_of, self.last = batch["x_s_group"], batch["x_s_last"]
        self.n_groups = int(batch["x_groups"])


class _CrossHead(BlockwiseHead):
    """Per answer position ``(1 − α)·CE/n``, plus at each group's last position ``α·scale·D/G``: the values sum to
    the loss. Blocks end between groups (:meth:`spans`), so each block holds its groups whole."""

    def __init__(self, head, vocab, flat, targets, cross_batch, teacher_block, kd, cross, shared, fused) -> None:
        super().__init__(head, vocab, flat, fused)
        self.targets, self.x, self.teacher_block = targets, cross_batch, teacher_block
        self.kd, self.cross, self.shared = kd, cross, shared
        self.n = max(len(flat), 1)

    def spans(self, n: int, step: int) -> list[tuple[int, int]]:
        closes = torch.nonzero(self.x.last | (self.x.group_of < 0)).flatten().add(1).tolist()
        return _merge_spans(closes, n, step)

    def block(self, logits: torch.Tensor, start: int) -> torch.Tensor:
        end = start + logits.size(0)
        kd, tau = self.kd, self.kd.temperature
        targets = self.targets[start:end]
        log_probs = F.log_softmax(logits, dim=-1)
        ce = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
        values = (1 - kd.kd_ratio) * ce / self.n
        group_of, last = self.x.group_of[start:end], self.x.last[start:end]
        closing = torch.nonzero(last).flatten()
        self.keep(ce=ce.detach())
        if not len(closing):
            return values
        first = int(group_of[closing[0]])
        n_here = len(closing)
        s = log_probs if tau == 1 else F.log_softmax(logits / tau, dim=-1)
        labels = s.gather(1, targets.unsqueeze(1)).squeeze(1)
        local = torch.where(group_of >= 0, group_of - first, group_of)
        p_student = merged(s[closing], span_scale(labels, local, last, n_here))
        teacher = self.teacher_block(first, first + n_here)
        if teacher.logps is not None:
            p_teacher = merged(teacher.logps, teacher.scale)
            value, parts = cross_divergence(p_student, p_teacher, kd, self.cross, self.shared)
            teacher_top = teacher.logps.argmax(-1)
        else:
            p_top, tail = merged(teacher.top.float(), teacher.scale), (teacher.tail.float() + teacher.scale).exp()
            value = sorted_l1_topk(p_student, p_top, tail)
            parts, teacher_top = {"uld": value}, teacher.ids[:, 0]
        values = values.index_add(0, closing, kd.kd_ratio * kd.scale * value / max(self.x.n_groups, 1))
        with torch.no_grad():
            agree = (logits[closing].argmax(-1) == self.shared.to_student[teacher_top]).float()
        self.keep(kd=value.detach(), top1=agree, **{k: v.detach() for k, v in parts.items()})
        return values


def _merge_spans(closes: list[int], n: int, step: int) -> list[tuple[int, int]]:
    """Blocks of at most ``step`` rows (one group alone may exceed it) whose ends are among ``closes``."""
    spans, start, end = [], 0, 0
    for close in closes:
        if close - start > step and end > start:
            spans.append((start, end))
            start = end
        end = close
    if end > start:
        spans.append((start, end))
    if end < n:
        spans.append((end, n))
    return spans


def cross_forward(model: nn.Module, batch: dict, teacher, kd: KDSettings, cross: CrossSettings, shared):
    """The loss of one batch and the means of its metrics (per answer token: ``ce``; per group: the rest)."""
    gpt = unwrap(model)
    index = batch["answer_index"]
    targets = batch["labels"][:, 1:].reshape(-1).index_select(0, index)
    input_ids = batch["input_ids"][:, :-1]
    teacher_block = teacher.blocks(batch, input_ids, index)
    x = CrossBatch(batch)
    head = _CrossHead(output_head(gpt), gpt.config.padded_vocab_size, index, targets, x, teacher_block, kd, cross,
                      shared, fast_paths(gpt).frozen_head)  # fmt: skip
    loss = forward_with_head(model, head, input_ids).sum()
    means = {key: value.float().mean() if len(value) else value.new_zeros(()) for key, value in head.kept.items()}
    means.setdefault("kd", loss.new_zeros(()).detach())
    means.setdefault("top1", loss.new_zeros(()).detach())
    means.setdefault("uld", means["kd"])
    return loss, {**means, "teacher_ce": teacher_block.teacher_ce}


class CrossTokenizerKD(KDObjective):
    """Logit distillation from a teacher with another tokenizer (:class:`~litgpt_ext.kd.cross_teacher.
    CrossTokenizerTeacher`): the loss of :func:`cross_forward`. Metrics: kd_loss, ce_loss, top1_agreement (the
    student's and the teacher's most likely next token are the same shared token), uld (the sorted-L1 part) and,
    for ``align``, shared_kd; teacher_ce on validation."""

    plots = {
        "loss.png": ("loss", ("loss", "val_loss")),
        "kd.png": ("cross-tokenizer divergence", ("kd_loss", "val_kd_loss")),
    }

    def __init__(self, teacher, kd: KDSettings, cross: CrossSettings, pad_id: int = 0, max_seq_length=None) -> None:
        super().__init__(teacher, kd, pad_id, max_seq_length)
        self.cross = cross

    def connect_data(self, data) -> None:
        self.teacher.connect_data(data)

    def config(self) -> dict:
        drop = ("topk_tail",) + (("beta", "divergence") if self.cross.mode == "uld" else ())
        config = {k: v for k, v in super().config().items() if k not in drop}
        return {**config, "cross_tokenizer": self.cross.mode, "shared_weight": self.cross.shared_weight}

    def compute(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, means = cross_forward(model, batch, self.teacher, self.kd, self.cross, self.teacher.shared)
        metrics = {
            "kd_loss": means["kd"] * self.kd.scale,
            "ce_loss": means["ce"],
            "top1_agreement": means["top1"],
            "uld": means["uld"],
        }
        if "shared_kd" in means:
            metrics["shared_kd"] = means["shared_kd"]
        if not model.training:
            metrics["teacher_ce"] = means["teacher_ce"]
        return loss, metrics
