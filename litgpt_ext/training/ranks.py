"""What every rank of a multi-process run must agree on before it goes on, so none waits alone in a collective.

A rank that stops for a reason outside the run (its teacher server went away) while the others go on to the gradient
all-reduce, a validation reduce or a checkpoint barrier leaves them waiting there forever. An objective whose
``compute`` calls out of the process says so (``remote = True``); its micro-batches then pass through
:func:`compute_on_every_rank`, which costs one scalar all-reduce per call with several ranks and nothing with one.
"""

from __future__ import annotations

import lightning as L
import torch

from litgpt_ext.errors import ResumableStop


def any_rank(fabric: L.Fabric, flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (one collective; every rank must call it)."""
    if fabric.world_size == 1:
        return flag
    return bool(fabric.all_reduce(torch.tensor(float(flag), device=fabric.device), reduce_op="sum") > 0)


def compute_on_every_rank(fabric: L.Fabric, objective, model, batch: dict):
    """``objective.compute(model, batch)``; for a ``remote`` objective with several ranks, a :class:`ResumableStop`
    on any rank is raised on every rank, before any of them goes on."""
    if not (getattr(objective, "remote", False) and fabric.world_size > 1):
        return objective.compute(model, batch)
    stopped: ResumableStop | None = None
    result = None
    try:
        result = objective.compute(model, batch)
    except ResumableStop as stop:
        stopped = stop
    if any_rank(fabric, stopped is not None):
        raise stopped or ResumableStop("another rank's teacher stopped answering")
    return result
