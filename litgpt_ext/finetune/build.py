"""The trainable model of a finetune run: litgpt's GPT (LoRA or full, tied embeddings kept tied, groups frozen) as the
flags describe it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from litgpt_ext.errors import UserError
from litgpt_ext.finetune.flags import CommonFlags
from litgpt_ext.model.patches import LITGPT_OWN, FastPaths
from litgpt_ext.training.freeze import apply_freezing, parameter_table
from litgpt_ext.training.objectives.base import Objective, OwnModules

Mode = Literal["lora", "full"]


@dataclasses.dataclass
class ModelSpec:
    """How to build the trainable model from the base checkpoint."""

    checkpoint_dir: Path
    mode: Mode = "lora"
    lora: dict = dataclasses.field(default_factory=dict)
    """lora_r, lora_alpha, lora_dropout, lora_query, ... (litgpt's names)."""
    frozen_groups: set[str] = dataclasses.field(default_factory=set)
    layers_not_to_freeze: list[int] | None = None
    fast: FastPaths = FastPaths()
    """Which of the faster paths the run takes (``--fast_forwards``); installed by :func:`launch._main`."""


def model_spec(checkpoint_dir: Path, mode: Mode, flags: CommonFlags) -> ModelSpec:
    """The :class:`ModelSpec` of a finetune command from its flags (``lora_*``, ``freeze_*``, ``layers_not_to_freeze``
    — the same names as litgpt's finetune scripts, shared by every method — and ``fast_forwards``)."""
    frozen, keep = flags.frozen_groups(), flags.layers_not_to_freeze
    if mode == "lora" and (frozen or keep):
        raise UserError(
            "freeze_* and layers_not_to_freeze apply to --mode full (LoRA freezes the base already)", field="mode"
        )
    fast = FastPaths() if flags.fast_forwards else LITGPT_OWN
    return ModelSpec(Path(checkpoint_dir), mode, flags.lora(), frozen, keep, fast)


def build_model(fabric: L.Fabric, spec: ModelSpec, objective: Objective) -> torch.nn.Module:
    from lightning.fabric.strategies import FSDPStrategy

    # Skip random init only where FSDP materialises parameters itself (reset_parameters); elsewhere new weights
    # that the base checkpoint does not hold (LoRA A/B, heads) would stay uninitialised memory.
    empty_init = isinstance(fabric.strategy, FSDPStrategy)
    if spec.mode == "lora":
        from litgpt.lora import GPT, Config, mark_only_lora_as_trainable

        config = Config.from_file(spec.checkpoint_dir / "model_config.yaml", **spec.lora)
        with fabric.init_module(empty_init=empty_init):
            model = GPT(config)
        mark_only_lora_as_trainable(model)
    else:
        from litgpt.config import Config
        from litgpt.model import GPT

        from litgpt_ext.model.tied import checkpoint_is_tied, tie_embeddings

        config = Config.from_file(spec.checkpoint_dir / "model_config.yaml")
        with fabric.init_module(empty_init=empty_init):
            model = GPT(config)
        if checkpoint_is_tied(spec.checkpoint_dir):  # stays tied (one parameter), as the model was made
            tie_embeddings(model)
            fabric.print("tied embeddings: lm_head shares transformer.wte's weight")
        apply_freezing(model, spec.frozen_groups, spec.layers_not_to_freeze)
    if isinstance(objective, OwnModules):
        objective.prepare_model(model)
    fabric.print(parameter_table(model))
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("every parameter is frozen; nothing to train", field="freeze_*")
    return model
