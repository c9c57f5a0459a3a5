"""Which litgpt model features each path of this toolchain handles: one list, checked by every command at start.

A feature a path does not handle is refused before anything is read or written, in one line naming it — never a
traceback halfway through a run, and never a silently different model. Everything not listed here runs: where a
replacement forward (:mod:`litgpt_ext.model.patches`) does not apply to a module, litgpt's own forward runs it
(the guards in :mod:`litgpt_ext.model.guards`), so a feature litgpt adds later is computed by litgpt.

Export has its own table — which transformers class a litgpt architecture is (:mod:`litgpt_ext.export.families`) —
checked at the start of ``export_hf`` the same way. ``make families`` runs every path on a scaled-down config of
each distinct litgpt architecture and writes the support table in docs/models.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt_ext.errors import UserError

CommandPath = Literal["finetune_lora", "finetune_full", "generate_batch"]

_LATENT = "multi-head latent attention (latent_attention)"


def support(config, path: CommandPath) -> list[str]:
    """The features of ``config`` (a litgpt ``Config``) that ``path`` does not handle, each with the reason."""
    missing = []
    if config.latent_attention is not None:
        if path == "finetune_lora":
            missing.append(f"{_LATENT}: litgpt's LoRA model builds plain attention in its place (use --mode full)")
        if path == "generate_batch":
            missing.append(f"{_LATENT}: the slot KV cache holds grouped keys and values, not latent ones")
    return missing


def require_support(checkpoint_dir: Path, path: CommandPath):
    """The checkpoint's litgpt ``Config``; refused in one line if litgpt cannot build it, or if it has a feature
    ``path`` does not handle (see :func:`support`)."""
    from litgpt.config import Config

    where = Path(checkpoint_dir) / "model_config.yaml"
    try:
        config = Config.from_file(where)
    except (AssertionError, TypeError, ValueError, KeyError) as err:
        raise UserError(f"litgpt cannot build this model config: {err}", path=where) from None
    missing = support(config, path)
    if missing:
        raise UserError(f"{config.name!r} is not supported by {path}: " + "; ".join(missing), path=where)
    return config
