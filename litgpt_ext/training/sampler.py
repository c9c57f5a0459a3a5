"""A batch sampler whose position can be saved and restored, so ``--resume`` continues with the exact next batch.

Epoch ``e`` visits a permutation seeded by ``seed + e`` (the same on every rank), padded to a multiple of the world
size and split by rank, then cut into micro-batches. The state is just ``(epoch, batches already taken)``.

With ``lengths`` (``--train.group_by_length``), the permutation is cut into mega-batches of
:data:`MEGA_BATCHES` micro-batches per rank and each is sorted by length, longest first (Hugging Face's
``LengthGroupedSampler``), before the rank split: neighbours in a micro-batch have similar lengths.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

MEGA_BATCHES = 50
"""Micro-batches per rank in one length-sorted mega-batch (Hugging Face's ``mega_batch_mult``)."""


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        lengths: list[int] | None = None,
    ) -> None:
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.lengths = lengths
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_position(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def _rank_indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        if self.lengths is not None:
            mega = MEGA_BATCHES * self.batch_size * self.world_size
            order = [
                i
                for start in range(0, len(order), mega)
                for i in sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            ]
        total = math.ceil(self.n / self.world_size) * self.world_size
        order += order[: total - self.n]  # pad so every rank gets the same number of samples
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        indices = self._rank_indices()
        for b in range(self.skip, len(self)):
            yield indices[b * self.batch_size : (b + 1) * self.batch_size]

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n / self.world_size) / self.batch_size)
