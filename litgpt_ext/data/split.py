"""Train/validation splits that are reproducible, and (by key) stable when data is added."""

from __future__ import annotations

import random
from pathlib import Path

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


TABLE_SUFFIXES = (".jsonl", ".json", ".csv")


def table_files(path: Path) -> tuple[Path, Path | None]:
    """``(train, val)`` files of a directory holding ``train.*`` (+ ``val.*``), or ``(path, None)`` for a file."""
    path = Path(path)
    if path.is_dir():
        found = {}
        for split in ("train", "val"):
            files = [path / f"{split}{suffix}" for suffix in TABLE_SUFFIXES if (path / f"{split}{suffix}").is_file()]
            if len(files) > 1:
                raise UserError(f"more than one {split} file: {', '.join(f.name for f in files)}", path=path)
            found[split] = files[0] if files else None
        if found["train"] is None:
            raise UserError(
                f"directory has no train file ({', '.join('train' + s for s in TABLE_SUFFIXES)})", path=path
            )
        return found["train"], found["val"]
    if not path.is_file():
        raise UserError("no such file or directory", path=path, field="data.path")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise UserError(f"expected a {', '.join(TABLE_SUFFIXES)} file or a directory", path=path, field="data.path")
    return path, None
