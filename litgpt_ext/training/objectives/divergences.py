"""The divergences of logit distillation, as pure functions of log-probabilities (see :mod:`.kd` for the formulas
and their sources): tested on hand-made tensors against TRL and the papers, run block by block by the KD head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def sampled_forward_kl(
    student_logps: torch.Tensor, ids: torch.Tensor, p_hat: torch.Tensor, entropy: torch.Tensor
) -> torch.Tensor:
    """Per position, the estimate ``−Σ_i p̂_i · log s_i − H(p)`` of ``KL(p ‖ s)`` from ``(n, V)`` student
    log-probs, ``(n, W)`` drawn ids (``-1`` pads a short row) and their ``p̂`` (0 where padded), and the
    teacher's entropy. Unbiased for the KL's value and, differentiated, for its gradient."""
    picked = student_logps.gather(1, ids.clamp(min=0))
    return -(p_hat * picked).sum(-1) - entropy
