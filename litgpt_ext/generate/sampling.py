"""Sampling that does not depend on which rows share a batch.

Each row draws its randomness from a counter-based hash of (seed, record id, sample index, step), so a row's output
is a function of its own inputs only — the same whether it ran with 1 or 63 neighbours, first or last. One uniform
per row and step picks the token by inverse CDF over the temperature / top-k / top-p filtered distribution.
"""

from __future__ import annotations

import hashlib

import torch


def row_key(seed: int, record_id: str, sample: int) -> int:
    """A 63-bit key for one row (stable across processes and runs)."""
    digest = hashlib.blake2b(f"{seed}\x00{record_id}\x00{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    # int64 arithmetic wraps modulo 2**64; logical right shifts are emulated by masking after the arithmetic shift.
    x = x + (-7046029254386353131)  # 0x9E3779B97F4A7C15
    x = (x ^ ((x >> 30) & 0x3FFFFFFFF)) * (-4658895280553007687)  # 0xBF58476D1CE4E5B9
    x = (x ^ ((x >> 27) & 0x1FFFFFFFFF)) * (-7723592293110705685)  # 0x94D049BB133111EB
    return x ^ ((x >> 31) & 0x1FFFFFFFF)


def uniforms(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One uniform in [0, 1) per row from its key and step (vectorized on the keys' device)."""
    bits = _splitmix64(keys * 1000003 + steps)
    return ((bits >> 11) & ((1 << 53) - 1)).to(torch.float64) / float(1 << 53)


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """Tokens ``(rows,)`` from ``logits (rows, vocab)``; greedy when ``temperature == 0``."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(dim=-1)
        drop = cumulative - sorted_probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    cdf = probs.double().cumsum(dim=-1)
    target = u.to(cdf.device).unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.size(-1) - 1)
