"""Load an ORM checkpoint (a litgpt checkpoint + ``orm_config.json`` [+ ``orm_head.pth``]) for scoring."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from litgpt.config import Config
from litgpt.model import GPT

from litgpt_ext.errors import UserError
from litgpt_ext.training.objectives.orm import CONFIG_FILE, HEAD_FILE, ORMObjective


def load_orm(checkpoint_dir: Path, device: torch.device, dtype: torch.dtype) -> tuple[GPT, ORMObjective]:
    """The model (eval mode, ``orm_head`` attached for classifier/scalar heads) and the objective that scores with it."""
    checkpoint_dir = Path(checkpoint_dir)
    config_file = checkpoint_dir / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(
            f"not a reward-model checkpoint (no {CONFIG_FILE}; train one with finetune_orm)", path=checkpoint_dir
        )
    cfg = json.loads(config_file.read_text())
    objective = ORMObjective(
        cfg["head"], "pairwise" if cfg.get("loss") == "pairwise" else "bce", 1.0, cfg.get("yes_id"), cfg.get("no_id"),
        cfg.get("orm_prompt"),
    )  # fmt: skip
    with torch.device("meta"):  # no random init: every weight comes from the checkpoint
        model = GPT(Config.from_file(checkpoint_dir / "model_config.yaml"))
        if cfg["head"] != "yes_token":
            objective.prepare_model(model)
    model = model.to_empty(device=device)
    state = torch.load(checkpoint_dir / "lit_model.pth", mmap=True, weights_only=True)
    model.load_state_dict(state.get("model", state), strict=False)
    if cfg["head"] != "yes_token":
        model.orm_head.load_state_dict(torch.load(checkpoint_dir / HEAD_FILE, weights_only=True))
    missing = [k for k in model.state_dict() if k not in state and not k.startswith("orm_head.")]
    if missing:
        raise UserError(f"lit_model.pth lacks {len(missing)} weight(s), e.g. {missing[0]}", path=checkpoint_dir)
    model.reset_parameters()  # litgpt: recompute the RoPE cache on the real device
    return model.to(dtype=dtype).eval(), objective
