"""Objectives: each knows how to collate a batch and compute ``(loss, metrics)``; the loop knows nothing else."""

from litgpt_ext.training.objectives.base import Objective
from litgpt_ext.training.objectives.sft import SFTObjective

__all__ = ["Objective", "SFTObjective"]
