"""``generate_batch --compile``: the one-token decode step under ``torch.compile``, compiled once.

Compiling the whole model (what the flag used to do) recompiled for every prefill width, every batch size and every
attended cache length: 63x slower than eager on the demo's workload. Here only the decode step is compiled, and its
two varying sizes — the running rows and the attended cache length — are symbolic from the first call, so one graph
serves the whole run. Prefill (a few large, differently shaped forwards) stays eager, where it is GEMM-bound anyway.
Dynamo specialises a size of 1, so a lone running row is padded to two (the pad row writes position 0 of a slot that
no running row owns; the cache's invariant — a row reads only positions its own prefill or steps wrote — keeps that
harmless). If a graph is compiled again anyway, one warning line names the shape that caused it.

On CPU the step is compiled with inductor's weight freezing (constant, MKL-packed weights: the engine's weights never
change during a run), which is where compiled CPU decode gets its speed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


class CompiledDecode:
    """Calls ``forward(idx, input_pos, input_pos_maxp1)`` through ``torch.compile``; ``warmup_s`` is the time the
    first call took (tracing and compiling included)."""

    def __init__(self, forward: Callable, device: torch.device, slots: int) -> None:
        options = {"freezing": True} if device.type == "cpu" else None
        self.compiled = torch.compile(forward, dynamic=True, options=options)
        self.pad_single = slots > 1
        self.warmup_s: float | None = None
        self.graphs_after_warmup = 0
        self.warned: set[tuple[int, int]] = set()

    def __call__(self, idx: torch.Tensor, pos: torch.Tensor, maxp1: int) -> torch.Tensor:
        n = idx.size(0)
        # the engine hands views of its per-slot state; dynamo guards on a view's base, so a new row count would
        # compile again: the graph gets tensors of its own (a copy of n ids and positions, on the device)
        idx, pos = idx.clone(), pos.clone()
        if n == 1 and self.pad_single:
            idx, pos = torch.cat((idx, torch.zeros_like(idx))), torch.cat((pos, torch.zeros_like(pos)))
        if self.warmup_s is None:
            t0 = time.perf_counter()
            out = self.compiled(idx, pos, maxp1)
            self.warmup_s = time.perf_counter() - t0
            self.graphs_after_warmup = _graphs()
            return out[:n]
        out = self.compiled(idx, pos, maxp1)
        graphs = _graphs()
        if graphs > self.graphs_after_warmup:
            self.graphs_after_warmup = graphs
            shape = (idx.size(0), maxp1)
            if shape not in self.warned:
                self.warned.add(shape)
                print(
                    f"warning: the compiled decode step compiled again for {shape[0]} rows attending "
                    f"{shape[1]} cache positions ({graphs} graphs so far)",
                    file=sys.stderr,
                )
        return out[:n]
