"""Sampled sparse logits (Random Sampling KD, Anshumann et al., ACL 2025, arXiv 2503.16870): instead of the teacher's
top-k at an answer position, keep ``N`` tokens *drawn* from it, with replacement, as counts.

Why: a top-k target is biased — it has no mass on the tail, so the student is pulled toward the head and learns
nothing of the tail's shape, more so as k shrinks. Draws are not: with ``c_i`` the count of token ``i`` among ``N``
draws from the teacher ``p``, ``p̂_i = c_i / N`` has ``E[p̂_i] = p_i`` for every token, head and tail. Forward KL's
gradient in the student's logits ``z`` is ``(Σ p) · softmax(z) − p``, linear in the target, so the gradient against
``p̂`` equals the full-distribution gradient in expectation.

Drawing from a tempered proposal ``q ∝ p^τ`` (``--proposal_temperature τ``; τ < 1 reaches further into the tail)
keeps that property when each draw is weighted by ``p/q``: ``p̂_i = c_i · p_i / (q_i · N)`` is unbiased, but no
longer sums to exactly 1 — the loss below keeps the ``Σ p̂`` factor, so the expected gradient is still exact. At
τ = 1 the weight is 1 and a count is all a token needs.

A store of this scheme (``distill_logprobs --sampling sample``) keeps per answer position only the distinct tokens
drawn, so a peaked teacher costs few entries and a flat one many; per position it adds the teacher's entropy (the
loss's value is then an unbiased estimate of ``KL(p ‖ s)`` itself, not only of its gradient), its top-1 token (the
top-1 agreement metric) and the label's log-prob (``teacher_ce``). The loss itself is
:func:`litgpt_ext.training.objectives.divergences.sampled_forward_kl`.

This estimates *forward* KL only: reverse KL, the JSD family, the skew and adaptive divergences all need ``p`` at
tokens that were never drawn, and a temperature other than the draws' changes ``p`` itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from litgpt_ext.checks import at_least
from litgpt_ext.errors import UserError
from litgpt_ext.kd.store import SAMPLED_FORMAT, load_split

MAX_EXACT_FLOAT16 = 2048
"""Counts up to this many draws are exact integers in float16."""


def sample_rows(
    logits: torch.Tensor, targets: torch.Tensor, samples: int, proposal_temperature: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """The stored rows of ``(n, V)`` float32 logits: per position the distinct tokens of ``samples`` draws from the
    proposal (``width`` of them, ``ids`` and ``weights`` flat, position after position; a weight is the count,
    times ``p/q`` when the proposal is tempered), the teacher's ``entropy`` and ``top`` token, and the label's
    log-prob ``target`` — all at temperature 1."""
    logps = F.log_softmax(logits, dim=-1)
    proposal = logps if proposal_temperature == 1 else F.log_softmax(logits * proposal_temperature, dim=-1)
    draws = torch.multinomial(proposal.exp(), samples, replacement=True, generator=generator)
    ordered, _ = draws.sort(dim=1)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    starts = first.reshape(-1).nonzero().squeeze(1)
    counts = torch.diff(starts, append=torch.tensor([ordered.numel()], device=starts.device))
    ids = ordered.reshape(-1)[starts]
    width = first.sum(dim=1)
    weights = counts.to(torch.float32)
    if proposal_temperature != 1:
        row = torch.repeat_interleave(torch.arange(logits.size(0), device=logits.device), width)
        weights = weights * (logps[row, ids] - proposal[row, ids]).exp()
    entropy = -(logps.exp() * logps.nan_to_num(neginf=0.0)).sum(-1)
    return {
        "ids": ids.to(torch.int32),
        "weights": weights,
        "width": width.to(torch.int16),
        "entropy": entropy,
        "top": logps.argmax(-1).to(torch.int32),
        "target": logps.gather(1, targets.unsqueeze(1)).squeeze(1),
    }


def dense_target(ids: torch.Tensor, p_hat: torch.Tensor, vocab: int) -> torch.Tensor:
    """``(n, vocab)`` the sampled target as a full distribution estimate (for tests and inspection)."""
    dense = torch.zeros(ids.size(0), vocab, dtype=p_hat.dtype)
    return dense.scatter_add_(1, ids.clamp(min=0).long(), p_hat.masked_fill(ids < 0, 0.0))


def check_sampling(sampling, samples, proposal_temperature, temperature, dtype, cross_tokenizer) -> None:
    """distill_logprobs' flags for a sampled store, refused before any work: the draws estimate the teacher at
    temperature 1 in the student's own vocabulary, and float16 counts are exact only up to 2,048."""
    if sampling not in ("topk", "sample"):
        raise UserError(f"must be topk or sample, got {sampling!r}", field="sampling")
    if sampling == "topk":
        return
    at_least("samples", samples, 1)
    if dtype == "float16" and samples > MAX_EXACT_FLOAT16:
        raise UserError(f"counts above {MAX_EXACT_FLOAT16} are not exact in float16: pass --dtype float32 or "
                        f"fewer --samples (got {samples})", field="samples")  # fmt: skip
    if not proposal_temperature > 0:
        raise UserError(f"must be > 0, got {proposal_temperature}", field="proposal_temperature")
    if temperature != 1:
        raise UserError(f"draws at temperature 1 (the loss's estimate is of the teacher itself), got --temperature "
                        f"{temperature:g}", field="temperature")  # fmt: skip
    if cross_tokenizer:
        raise UserError("stores the teacher's top-k in its own tokens: use --sampling topk", field="cross_tokenizer")


class Draw:
    """How a sampled store draws: ``samples`` per position from ``p^proposal_temperature``, from ``generator``."""

    def __init__(self, samples: int, proposal_temperature: float, generator: torch.Generator) -> None:
        self.samples, self.proposal_temperature, self.generator = samples, proposal_temperature, generator


def window_seed(seed: int, split: str, window: int) -> int:
    """A window's own stream: its draws do not depend on which windows ran before it (resume, shards)."""
    return (seed * 1_000_003 + ("train", "val").index(split) * 7_919 + window) % (2**63)


FLAT = ("ids", "weights")
"""A sampled row's per-entry parts (``width[p]`` entries per position ``p``); the rest are per position."""


def pack_window(ordered: list[dict], store_dtype) -> dict:
    """A window's part file from its samples' rows (in index order): per-entry and per-position parts
    concatenated, the weights in the store's dtype, and each sample's position count (``counts``)."""

    def cat(key):
        return torch.cat([r[key] for r in ordered])

    return {"ids": cat("ids"), "weights": cat("weights").to(store_dtype), "width": cat("width"),
            "entropy": cat("entropy").float(), "top": cat("top"), "target": cat("target").float(),
            "counts": torch.tensor([len(r["width"]) for r in ordered], dtype=torch.int64)}  # fmt: skip


class Sampled:
    """One split of a sampled store, gathered by sample into padded ``(positions, widest)`` rows."""

    def __init__(self, path: Path, samples: int) -> None:
        data = load_split(path, SAMPLED_FORMAT)
        self.path, self.samples = path, samples
        self.ids, self.weights, self.width = data["ids"], data["weights"], data["width"].long()
        self.entropy, self.top, self.target = data["entropy"], data["top"], data["target"]
        self.offsets = data["offsets"]
        self.starts = torch.cat([torch.zeros(1, dtype=torch.long), self.width.cumsum(0)])
        self.tokens = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def gather(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The positions of these samples, in this order: ``t_ids`` ``(P, W)`` padded with -1, ``t_p`` their
        ``p̂`` (0 where padded), ``t_entropy``, ``t_top``, ``t_target`` ``(P,)``."""
        spans = [torch.arange(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        pick = torch.cat(spans) if spans else torch.zeros(0, dtype=torch.long)
        width = self.width[pick]
        widest = int(width.max()) if len(pick) else 1
        slot = torch.arange(widest)
        used = slot.unsqueeze(0) < width.unsqueeze(1)
        # every position has at least one entry (N >= 1 draws), so the padded slots' indices clamp into the store
        at = (self.starts[pick].unsqueeze(1) + slot).clamp(max=max(len(self.ids) - 1, 0))
        ids = torch.where(used, self.ids[at].long(), -1)
        p_hat = torch.where(used, self.weights[at].float() / self.samples, 0.0)
        return {
            "t_ids": ids,
            "t_p": p_hat,
            "t_entropy": self.entropy[pick].float(),
            "t_top": self.top[pick].long(),
            "t_target": self.target[pick].float(),
        }
