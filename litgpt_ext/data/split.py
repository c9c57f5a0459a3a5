"""Train/validation splits that are reproducible, and (by key) stable when data is added."""

from __future__ import annotations

import random

from litgpt_ext.errors import UserError


def in_val(key: str, seed: int, fraction: float) -> bool:
    """Whether the item with this key goes to validation. Decided per key, so adding items later never moves an
    existing one between splits (unlike a seeded permutation of positions)."""
    return random.Random(f"{seed}:{key}").random() < fraction


def split_by_key(items: list, key, seed: int, fraction: float) -> tuple[list, list]:
    """(train, val) by :func:`in_val` of ``key(item)``: stable when items are added, order kept within each split."""
    train, val = [], []
    for item in items:
        (val if in_val(key(item), seed, fraction) else train).append(item)
    return train, val


def split_order(n: int, fraction: float, seed: int):
    """Seeded (train, val) index tensors, at least one val item."""
    import torch  # here, so that reading records does not import torch

    if n < 2:
        raise UserError(f"need at least 2 records to split off validation data, got {n}")
    n_val = max(1, round(n * fraction))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def split_off(items: list, fraction: float, seed: int) -> tuple[list, list]:
    train, val = split_order(len(items), fraction, seed)
    return [items[i] for i in train.tolist()], [items[i] for i in val.tolist()]
