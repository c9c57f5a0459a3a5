"""Load an ORM checkpoint (a litgpt checkpoint + ``orm_config.json`` [+ ``orm_head.pth``]) for scoring."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from litgpt.config import Config
from litgpt.model import GPT

from litgpt_ext.errors import UserError
from litgpt_ext.heads import last_block_rows
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
    state = torch.load(checkpoint_dir / "lit_model.pth", mmap=True, weights_only=True)
    model.load_state_dict(state.get("model", state), strict=False)
    if cfg["head"] != "yes_token":
        model.orm_head.load_state_dict(torch.load(checkpoint_dir / HEAD_FILE, weights_only=True))
    missing = [k for k in model.state_dict() if k not in state and not k.startswith("orm_head.")]
    if missing:
        raise UserError(f"lit_model.pth lacks {len(missing)} weight(s), e.g. {missing[0]}", path=checkpoint_dir)
    model.reset_parameters()  # litgpt: recompute the RoPE cache on the real device
    return model.to(dtype=dtype).eval(), objective


@torch.inference_mode()
def last_token_hidden(gpt: GPT, input_ids: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Final hidden states (after ``ln_f``) at the row-major positions ``flat`` — litgpt's forward, except that the
    last block's MLP (three quarters of a block's work) runs only at those positions, since nothing else reaches a
    reward head. For scoring only: it calls the blocks directly, outside any training wrapper."""
    config = gpt.config
    T = input_ids.size(1)
    cos, sin = gpt.cos[:T].unsqueeze(0), gpt.sin[:T].unsqueeze(0)
    x = gpt.transformer.wte(input_ids)
    if config.scale_embeddings:
        x = x * torch.tensor(config.n_embd**0.5, dtype=x.dtype)

    def rope(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if config.rope_indices is None:
            return cos, sin
        return cos[..., config.rope_indices[i]], sin[..., config.rope_indices[i]]

    blocks = list(gpt.transformer.h)
    for i, block in enumerate(blocks[:-1]):
        x = block(x, *rope(i), None)
    rows = last_block_rows(blocks[-1], x, *rope(len(blocks) - 1), flat)
    return gpt.transformer.ln_f(rows)


@torch.inference_mode()
def score_rows(gpt: GPT, objective: ORMObjective, batch: dict) -> torch.Tensor:
    """Scores in [0, 1] of a collated batch (see :func:`last_token_hidden`)."""
    from litgpt_ext.training.objectives.orm import scores_from_logits

    hidden = last_token_hidden(gpt, batch["input_ids"], batch["last"])
    return scores_from_logits(objective.head, objective.head_logits(gpt, hidden))
