"""Samples that know where they come from: what distillation needs to find a sample's stored teacher rows and its
teacher."""

from __future__ import annotations

from collections.abc import Sequence


class IndexedSamples(Sequence):
    """A dataset whose samples also carry their split and index (to find their stored teacher rows) and, where the
    data is routed (``--data.route_field``), the teacher their record names."""

    def __init__(self, dataset: Sequence, split: str) -> None:
        self.dataset, self.split = dataset, split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        sample = {**self.dataset[i], "kd_index": i, "kd_split": self.split}
        route = getattr(self.dataset, "route", None)
        if route is not None:
            sample["kd_route"] = route(i)
        return sample

    def __getattr__(self, name):  # lengths() of packed data, fingerprints, ...
        if name in ("dataset", "split"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)
