"""Checkpoint directories in litgpt's layout, plus the state that makes ``--resume`` exact.

A step directory holds what litgpt expects (``lit_model.pth`` or ``lit_model.pth.lora``, ``model_config.yaml``,
tokenizer files, ``hyperparameters.yaml``, ``prompt_style.yaml``) and, for resuming, ``training_state.pth``
(optimizer, scheduler, counters) and ``rng-rank{R}.pth`` (every RNG of every rank). It is written under a
``.partial`` name and renamed when complete, so a crash never leaves a directory that looks finished.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.strategies import FSDPStrategy
from litgpt.lora import lora_filter
from litgpt.prompts import PromptStyle, save_prompt_style

from litgpt_ext.checkpoint_files import copy_checkpoint_files
from litgpt_ext.io import atomic_write_text
from litgpt_ext.model.heads import unwrap

STATE_FILE = "training_state.pth"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def merged_lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What litgpt's ``merge_lora`` writes (base weights + ``B @ A * scaling``, LoRA tensors dropped, ``linear.``
    taken out of the keys), computed from the live model instead of reloading the base checkpoint from disk.

    Only the merged weights are new tensors; every other entry is the model's own, so the merge costs a few MB
    rather than a second copy of the model (litgpt's script maps the base checkpoint and touches all of it)."""
    from litgpt.lora import LoRALinear

    gpt = unwrap(model)
    merged = {}
    with torch.no_grad():
        for name, module in gpt.named_modules():
            if not isinstance(module, LoRALinear) or module.r == 0 or module.merged:
                continue
            if any(getattr(module, "enable_lora", [True])):  # litgpt's qkv layer may have LoRA on none of q, k, v
                weight = module.linear.weight
                merged[f"{name}.linear.weight"] = weight + module.get_lora_AB().to(weight.device, weight.dtype)
    return {k.replace("linear.", ""): merged.get(k, v) for k, v in gpt.state_dict().items() if not lora_filter(k, v)}


@dataclass
class CheckpointWriter:
    """Writes checkpoint directories for one run (same base model, hyperparameters and prompt style)."""

    source_dir: Path
    """The base checkpoint: its config and tokenizer files are copied into every directory."""
    hparams: dict
    """Already scrubbed of secrets."""
    prompt_style: PromptStyle | None
    lora: bool
    precision: str | None = None
    exclude_prefixes: tuple[str, ...] = ()
    """Keys of modules an objective added (a reward head): kept out of ``lit_model.pth``."""
    extras: Any = None
    """``extras(model, directory)`` writes the objective's own files (rank 0)."""
    merge_from_disk: bool = False
    """Merge LoRA into the base checkpoint read from disk (litgpt's ``merge_lora``) rather than from the live model:
    a quantized base (QLoRA) holds no full-precision weights to add the LoRA product to."""

    def _plain(self, state: dict) -> dict:
        return {k: v for k, v in state.items() if not k.startswith(self.exclude_prefixes)}

    def _save_model(self, fabric: L.Fabric, model: torch.nn.Module, directory: Path) -> None:
        """LoRA: only the LoRA tensors, as ``{"model": ...}`` (litgpt's ``.lora`` layout). Full: a *flat* state dict,
        as litgpt's converted and merged checkpoints hold — the form every litgpt tool reads, including
        ``merge_lora`` when this checkpoint is the base of a later LoRA run."""
        if self.lora:
            fabric.save(directory / "lit_model.pth.lora", {"model": model}, filter={"model": lora_filter})
        elif isinstance(fabric.strategy, FSDPStrategy):  # the full state dict only exists gathered on rank 0
            fabric.save(directory / "lit_model.pth", {"model": model})
            if fabric.global_rank == 0:
                nested = torch.load(directory / "lit_model.pth", mmap=True, weights_only=True)
                torch.save(self._plain(nested["model"]), directory / "lit_model.pth")
        elif fabric.global_rank == 0:
            torch.save(self._plain(unwrap(model).state_dict()), directory / "lit_model.pth")

    def _save_metadata(self, directory: Path) -> None:
        copy_checkpoint_files(self.source_dir, directory)
        atomic_write_text(directory / "hyperparameters.yaml", yaml.safe_dump(self.hparams, sort_keys=False))
        if self.prompt_style is not None:
            save_prompt_style(self.prompt_style, directory)

    def write(
        self,
        fabric: L.Fabric,
        model: torch.nn.Module,
        directory: Path,
        training_state: dict | None = None,
        merge_lora: bool = False,
    ) -> Path:
        """Write a complete checkpoint directory (atomically renamed into place) and return its path."""
        partial = directory.with_name(directory.name + ".partial")
        if fabric.global_rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        fabric.barrier()
        self._save_model(fabric, model, partial)
        if self.extras is not None and fabric.global_rank == 0:
            self.extras(model, partial)
        if training_state is not None:
            fabric.save(partial / STATE_FILE, training_state)
            torch.save(rng_state(), partial / f"rng-rank{fabric.global_rank}.pth")
        fabric.barrier()
        if fabric.global_rank == 0:
            self._save_metadata(partial)
            if merge_lora and self.lora and (self.merge_from_disk or isinstance(fabric.strategy, FSDPStrategy)):
                from litgpt.scripts.merge_lora import merge_lora as litgpt_merge_lora

                litgpt_merge_lora(partial, pretrained_checkpoint_dir=self.source_dir, precision=self.precision)
            elif merge_lora and self.lora:
                torch.save(self._plain(merged_lora_state_dict(model)), partial / "lit_model.pth")
            shutil.rmtree(directory, ignore_errors=True)
            partial.rename(directory)
        fabric.barrier()
        return directory


def step_dirs(out_dir: Path) -> list[tuple[int, Path]]:
    """Completed ``step-*`` checkpoints with resumable state, oldest first."""
    found = []
    for path in Path(out_dir).glob("step-*"):
        match = _STEP_DIR.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_resume_dir(resume: bool | str | Path, out_dir: Path) -> Path | None:
    """``auto``/``True``: newest step checkpoint in ``out_dir`` (auto may find none); a path: that checkpoint."""
    from litgpt_ext.errors import UserError

    if resume is False or resume is None:
        return None
    if resume in (True, "auto"):
        dirs = step_dirs(out_dir)
        if not dirs and resume is True:
            raise UserError("no resumable step-* checkpoint found", path=out_dir, field="resume")
        return dirs[-1][1] if dirs else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"not a resumable checkpoint (no {STATE_FILE})", path=path, field="resume")
    return path


def prune_step_dirs(out_dir: Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    for _, path in step_dirs(out_dir)[:-keep_last] if keep_last > 0 else step_dirs(out_dir):
        shutil.rmtree(path, ignore_errors=True)
