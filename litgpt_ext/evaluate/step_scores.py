"""One score per candidate from a process reward model's step scores.

* ``min`` — the weakest step (default): a candidate is as good as its first wrong step lets it be;
* ``prod`` — the product: the chance every step is right, if steps were independent (longer candidates pay more);
* ``last`` — the last step's score (the PRM read as an outcome model);
* ``mean`` — the average step score.
"""

from __future__ import annotations

import math
from typing import Literal

Aggregate = Literal["min", "prod", "last", "mean"]
AGGREGATES: tuple[str, ...] = ("min", "prod", "last", "mean")


def aggregate(step_scores: list[float], how: str = "min") -> float:
    if not step_scores:
        raise ValueError("no step scores to aggregate")
    if how == "min":
        return min(step_scores)
    if how == "prod":
        return math.prod(step_scores)
    if how == "last":
        return step_scores[-1]
    if how == "mean":
        return sum(step_scores) / len(step_scores)
    raise ValueError(f"unknown aggregate {how!r} (use one of {', '.join(AGGREGATES)})")


def first_wrong(values: list[float], threshold: float = 0.5) -> int:
    """Index of the first step below ``threshold`` (a label or a score), or -1 when there is none — ProcessBench's
    "first error" (all-correct counts as "none")."""
    return next((k for k, v in enumerate(values) if v < threshold), -1)
