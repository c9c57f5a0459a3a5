"""One optimizer step's worth of micro-batches: the loss and metrics summed on the device as they come (no host sync
per micro-batch), read once when a log row is written."""

from __future__ import annotations

import torch


class StepAccumulator:
    """Sums ``loss / accum`` and each metric ``/ accum`` over a step's micro-batches, and the tokens they held."""

    def __init__(self, device: torch.device, accum: int) -> None:
        self.accum = accum
        self.loss = torch.zeros((), device=device)
        self.metrics: dict[str, torch.Tensor] = {}
        self.tokens = torch.zeros((), device=device, dtype=torch.long)

    def add(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], tokens: torch.Tensor) -> None:
        self.loss += loss.detach() / self.accum
        for key, value in metrics.items():
            self.metrics[key] = self.metrics.get(key, 0.0) + value.detach().float() / self.accum
        self.tokens += tokens

    def take_tokens(self) -> int:
        """The tokens counted since the last call (one device sync), and the count restarts."""
        taken = int(self.tokens)
        self.tokens.zero_()
        return taken

    def means(self) -> dict[str, float]:
        """The step's loss and metrics as numbers (one device sync each)."""
        return {"loss": float(self.loss), **{k: float(v) for k, v in self.metrics.items()}}

    def next_step(self) -> None:
        """Forget the finished step's loss and metrics (the tokens are taken separately)."""
        self.loss.zero_()
        self.metrics.clear()
