"""Load an ORM checkpoint (a litgpt checkpoint + ``orm_config.json`` [+ ``orm_head.pth``]) for scoring."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from litgpt.config import Config
from litgpt.model import GPT

from litgpt_ext.errors import UserError
from litgpt_ext.model.heads import on_positions
from litgpt_ext.training.objectives.orm import CONFIG_FILE, HEAD_FILE, ORMObjective


def load_orm(
    checkpoint_dir: Path, device: torch.device, dtype: torch.dtype, kind: str = "outcome"
) -> tuple[GPT, ORMObjective]:
    """The model (eval mode, ``orm_head`` attached for classifier/scalar heads) and the objective that scores with it
    (a :class:`PRMObjective` for a process reward model; ``kind`` is the one the caller needs)."""
    checkpoint_dir = Path(checkpoint_dir)
    config_file = checkpoint_dir / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(
            f"not a reward-model checkpoint (no {CONFIG_FILE}; train one with finetune_orm)", path=checkpoint_dir
        )
    cfg = json.loads(config_file.read_text())
    found = cfg.get("reward", "outcome")
    if found != kind:
        use = "prm_score (and export_hf as TokenClassification)" if found == "process" else "orm_score"
        raise UserError(f"a {found} reward model: use {use}", path=checkpoint_dir)
    if found == "process":
        from litgpt_ext.training.objectives.prm import PRMObjective

        objective = PRMObjective(cfg["head"], 1.0, cfg.get("yes_id"), cfg.get("no_id"), cfg.get("step_separator", "\n"))
    else:
        objective = ORMObjective(
            cfg["head"], "pairwise" if cfg.get("loss") == "pairwise" else "bce", 1.0, cfg.get("yes_id"),
            cfg.get("no_id"), cfg.get("orm_prompt"),
        )  # fmt: skip
    with torch.device("meta"):  # no random init: every weight comes from the checkpoint
        model = GPT(Config.from_file(checkpoint_dir / "model_config.yaml"))
        if cfg["head"] != "yes_token":
            objective.prepare_model(model)
    model = model.to_empty(device=device)
    state = torch.load(checkpoint_dir / "lit_model.pth", mmap=True, weights_only=True, map_location="cpu")
    model.load_state_dict(state.get("model", state), strict=False)
    if cfg["head"] != "yes_token":
        model.orm_head.load_state_dict(torch.load(checkpoint_dir / HEAD_FILE, weights_only=True, map_location="cpu"))
    missing = [k for k in model.state_dict() if k not in state and not k.startswith("orm_head.")]
    if missing:
        raise UserError(f"lit_model.pth lacks {len(missing)} weight(s), e.g. {missing[0]}", path=checkpoint_dir)
    model.reset_parameters()  # litgpt: recompute the RoPE cache on the real device
    return model.to(dtype=dtype).eval(), objective


@torch.inference_mode()
def score_rows(gpt: GPT, objective: ORMObjective, batch: dict) -> torch.Tensor:
    """Scores in [0, 1] of a collated batch: litgpt's forward up to the final norm, the last block's MLP and the head
    only at each row's last token (:func:`~litgpt_ext.model.heads.on_positions`)."""
    from litgpt_ext.training.objectives.orm import scores_from_logits

    hidden = on_positions(gpt, batch["input_ids"], batch["last"], lambda rows: rows)
    return scores_from_logits(objective.head, objective.head_logits(gpt, hidden))
