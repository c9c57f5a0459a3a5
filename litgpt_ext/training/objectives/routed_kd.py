"""Several teachers in one run: every record is distilled from the teacher it is routed to (``finetune_kd --teachers``
with ``--data.route_field``), records routed to none get cross-entropy only.

A micro-batch is split by route; each part goes through its teacher's own :class:`KDObjective` — its collate (a
store's rows, a server's scores), a student forward on that part's rows only, its loss — and the parts' losses are
averaged by their answer positions. The step is therefore exactly the one a single-teacher run would take on each
part, weighted as one batch of all of them (tested: the loss and gradient of a two-teacher step equal the
position-weighted sum of the two single-teacher steps'). A local teacher's body only runs on its own records' rows.

Metrics: the usual ``kd_loss`` / ``ce_loss`` / ``kl_teacher_student`` / ``top1_agreement`` over all distilled
positions, and per teacher ``kd_loss_NAME``, ``top1_agreement_NAME``, ``kl_teacher_student_NAME`` (a teacher of the
student's tokenizer) and ``records_NAME`` (exact
position-weighted means over the rows a log line covers, kept apart from the loop's per-micro-batch means because a
teacher may be absent from a micro-batch).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from litgpt_ext.data.batches import pad_collate
from litgpt_ext.data.indexed import IndexedSamples
from litgpt_ext.errors import UserError
from litgpt_ext.training.objectives.base import Objective, StepHooks
from litgpt_ext.training.objectives.cross_tokenizer import CrossTokenizerKD
from litgpt_ext.training.objectives.kd import KDObjective
from litgpt_ext.training.objectives.sft import answer_cross_entropy

UNROUTED = ""
"""The part of a batch whose records name no teacher (cross-entropy only)."""
PER_TEACHER = ("kd_loss", "top1_agreement", "kl_teacher_student")
"""Logged per teacher (a teacher of another tokenizer has no KL over one vocabulary: its rows leave it out)."""


def _no_sums() -> dict:
    """A teacher's running sums before any of its records: positions, records, and each per-teacher metric × n."""
    return {"positions": 0.0, "records": 0.0, **dict.fromkeys(PER_TEACHER, 0.0)}


class RoutedKD(StepHooks, Objective):
    """``parts``: teacher name -> the :class:`KDObjective` of that teacher (all with the run's settings)."""

    name = "kd"
    plots = KDObjective.plots

    def __init__(
        self, parts: dict[str, KDObjective], pad_id: int = 0, max_seq_length: int | None = None, refuse_unrouted=False
    ) -> None:
        self.parts, self.pad_id, self.max_seq_length = parts, pad_id, max_seq_length
        self.refuse_unrouted = refuse_unrouted
        self.fabric = None
        self._sums = {"train": {}, "val": {}}

    @property
    def remote(self) -> bool:
        return any(part.remote for part in self.parts.values())

    def connect_data(self, data) -> None:
        for part in self.parts.values():  # a teacher of another tokenizer renders the records itself
            part.connect_data(data)

    def wrap_datasets(self, train, val):
        for split, dataset in (("train", train), ("val", val)):
            check_routes(dataset, split, sorted(self.parts), self.refuse_unrouted)
        for part in self.parts.values():  # each teacher checks the data (a store: its fingerprints)
            part.wrap_datasets(train, val)
        return IndexedSamples(train, "train"), IndexedSamples(val, "val")

    def setup(self, fabric, model, train_data, val_data, out_dir) -> None:
        self.fabric = fabric
        for part in self.parts.values():
            part.setup(fabric, model, train_data, val_data, out_dir)

    def config(self) -> dict:
        configs = {name: part.config() for name, part in self.parts.items()}
        shared = {k: v for k, v in next(iter(configs.values())).items() if k != "teacher"}
        return {**shared, "teachers": {name: c["teacher"] for name, c in configs.items()}}

    def collate(self, samples: list[dict]) -> dict:
        groups: dict[str, list[dict]] = {}
        for sample in samples:
            groups.setdefault(sample.get("kd_route") or UNROUTED, []).append(sample)
        parts = {}
        for name, group in groups.items():
            if name == UNROUTED:
                parts[name] = pad_collate(group, self.pad_id, -100, self.max_seq_length)
            else:
                parts[name] = self.parts[name].collate(group)
        return {"parts": parts, "lengths": torch.cat([p["lengths"] for p in parts.values()])}

    def compute(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = batch["parts"]
        sizes = {name: len(part["answer_index"]) for name, part in parts.items()}
        total = max(sum(sizes.values()), 1)
        distilled = max(sum(n for name, n in sizes.items() if name != UNROUTED), 1)
        loss = torch.zeros((), device=batch["lengths"].device)
        metrics: dict[str, torch.Tensor] = {}
        sums = self._sums["train" if model.training else "val"]
        for k, (name, part) in enumerate(parts.items()):
            runner, context = self._runner(model, first=k == 0)
            n = sizes[name]
            if name == UNROUTED:
                with context:
                    part_loss = answer_cross_entropy(runner, part) if n else loss
                loss = loss + part_loss * (n / total)
                continue
            with context:
                part_loss, part_metrics = self.parts[name].compute(runner, part)
            loss = loss + part_loss * (n / total)
            for key, value in part_metrics.items():
                metrics[key] = metrics.get(key, 0.0) + value.detach() * (n / distilled)
            kept = sums.setdefault(name, _no_sums())
            kept["positions"] += n
            kept["records"] += len(part["lengths"])
            for key in PER_TEACHER:
                if key in part_metrics:
                    kept[key] = kept[key] + part_metrics[key].detach() * n
        return loss, metrics

    def _runner(self, model: nn.Module, first: bool):
        """(the model a part runs through, the context it runs in). DDP expects one forward per backward, and ranks
        may hold different numbers of parts: with several ranks the first part runs through the wrapped model (its
        backward synchronises the gradient of the whole summed loss: autograd hands each parameter its total once)
        and the others through the module inside it, under the run's autocast. One process: the model, as is."""
        import contextlib

        if first or self.fabric is None or self.fabric.world_size == 1:
            return model, contextlib.nullcontext()
        from litgpt_ext.model.heads import unwrap

        return unwrap(model), self.fabric.autocast()

    def _per_teacher(self, split: str) -> dict[str, float]:
        out = {}
        prefix = "val_" if split == "val" else ""
        for name in sorted(self.parts):  # every teacher, in one order: every rank reduces the same tensors
            kept = self._sums[split].get(name) or _no_sums()
            values = torch.tensor([float(kept["positions"]), float(kept["records"]),
                                   *(float(kept[k]) for k in PER_TEACHER)])  # fmt: skip
            if self.fabric is not None and self.fabric.world_size > 1:
                values = self.fabric.all_reduce(values.to(self.fabric.device), reduce_op="sum").cpu()
            out[f"{prefix}records_{name}"] = float(values[1])
            if not values[0]:  # the teacher had no record in these steps: no figure rather than a 0
                continue
            positions = float(values[0])
            for i, key in enumerate(PER_TEACHER):
                if key != "kl_teacher_student" or not isinstance(self.parts[name], CrossTokenizerKD):
                    out[f"{prefix}{key}_{name}"] = float(values[2 + i]) / positions
        self._sums[split] = {}
        return out

    def step_stats(self, elapsed: float) -> dict[str, float]:
        return self._per_teacher("train")

    def derived_val_metrics(self, means: dict[str, float]) -> dict[str, float]:
        ce = means.get("val_ce_loss", means["val_loss"])  # (a validation set of unrouted records only has no KD part)
        return {"val_ppl": math.exp(min(ce, 50.0)), **self._per_teacher("val")}


def check_routes(dataset, split: str, names: list[str], refuse_unrouted: bool) -> None:
    """Every record routes to one of ``names`` (or to none, unless that is refused): one line naming the first
    that does not, before any step."""
    if getattr(dataset, "routes", None) is None:
        raise UserError("--teachers routes each record by a field of it or by its file: pass --data.route_field NAME "
                        "(litgpt JSON or chat rows) or --data.route_files '{NAME: FILE, ...}'", field="data")  # fmt: skip
    files = getattr(dataset, "route_files", None)
    if files:  # every sample of a file goes to its teacher: the names are the whole check
        for name, path in files.items():
            if name not in names:
                raise UserError(f"{name!r} (the records of {path}) is not one of --teachers ({', '.join(names)})",
                                field="data.route_files")  # fmt: skip
        return
    for i in range(len(dataset)):
        route = dataset.route(i)
        if route is None and not refuse_unrouted or route in names:
            continue
        ids = getattr(dataset, "ids", None)
        name = str(ids[int(dataset.index[i])]) if ids and ids[int(dataset.index[i])] is not None else f"#{i + 1}"
        record = name if name.startswith(("record ", "line ")) else f"record {name}"  # an id, or where it is
        if route is None:
            raise UserError(f"{split} {record} names no teacher (--unrouted refuse)", field="data.route_field")
        raise UserError(f"{split} {record} names {route!r}, not one of --teachers ({', '.join(names)})",
                        field="data.route_field")  # fmt: skip
