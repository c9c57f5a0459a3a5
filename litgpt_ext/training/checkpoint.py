"""Checkpoint directories in litgpt's layout, plus the state that makes ``--resume`` exact.

A step directory holds what litgpt expects (``lit_model.pth`` or ``lit_model.pth.lora``, ``model_config.yaml``,
tokenizer files, ``hyperparameters.yaml``, ``prompt_style.yaml``) and, for resuming, ``training_state.pth``
(optimizer, scheduler, counters) and ``rng-rank{R}.pth`` (every RNG of every rank). It is written under a
``.partial`` name and renamed when complete, so a crash never leaves a directory that looks finished.

Every tensor is written from the CPU, whatever device trained it: a checkpoint saved from ``cuda:0`` would otherwise
be read back onto ``cuda:0`` — by every rank of a multi-GPU job, and not at all on a machine without a GPU. Under
FSDP the training state also holds the (gathered) model: Lightning consolidates a sharded optimizer's state only
together with its module, and reads it back the same way.
"""

from __future__ import annotations

import contextlib
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


def to_cpu(obj):
    """``obj`` (tensors in nested dicts / lists / tuples) with every tensor on the CPU, detached."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def is_fsdp(fabric: L.Fabric) -> bool:
    return isinstance(fabric.strategy, FSDPStrategy)


@contextlib.contextmanager
def full_parameters(fabric: L.Fabric, model: torch.nn.Module):
    """Every parameter of ``model`` whole inside the block, on every rank (FSDP gathers its shards; a collective, so
    all ranks enter); elsewhere the model as it is."""
    if not is_fsdp(fabric):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    wrapped = model._forward_module if hasattr(model, "_forward_module") else model
    with FullyShardedDataParallel.summon_full_params(wrapped, writeback=False):
        yield


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
        ``merge_lora`` when this checkpoint is the base of a later LoRA run. CPU tensors either way."""
        if is_fsdp(fabric):  # the full state dict only exists gathered on rank 0 (offloaded to its CPU)
            name = "lit_model.pth.lora" if self.lora else "lit_model.pth"
            fabric.save(directory / name, {"model": model}, filter={"model": lora_filter} if self.lora else None)
            if fabric.global_rank == 0 and not self.lora:
                nested = torch.load(directory / name, mmap=True, weights_only=True, map_location="cpu")
                torch.save(self._plain(nested["model"]), directory / name)
        elif fabric.global_rank == 0:
            state = unwrap(model).state_dict()
            if self.lora:
                torch.save({"model": to_cpu({k: v for k, v in state.items() if lora_filter(k, v)})},
                           directory / "lit_model.pth.lora")  # fmt: skip
            else:
                torch.save(to_cpu(self._plain(state)), directory / "lit_model.pth")

    def _save_training_state(self, fabric: L.Fabric, model, directory: Path, training_state: dict) -> None:
        """Optimizer, scheduler and progress (CPU tensors); under FSDP with the model they belong to (see the module
        docstring); and every rank's RNG state."""
        if is_fsdp(fabric):
            state = {"model": model, **training_state}
            fabric.save(directory / STATE_FILE, state, filter={"model": lora_filter} if self.lora else None)
        else:
            plain = {k: v.state_dict() if hasattr(v, "state_dict") else v for k, v in training_state.items()}
            fabric.save(directory / STATE_FILE, to_cpu(plain))
        torch.save(rng_state(), directory / f"rng-rank{fabric.global_rank}.pth")

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
        if self.extras is not None:
            with full_parameters(fabric, model):  # an objective's own module (a reward head) whole, on every rank
                if fabric.global_rank == 0:
                    self.extras(model, partial)
        if training_state is not None:
            self._save_training_state(fabric, model, partial, training_state)
        fabric.barrier()
        if fabric.global_rank == 0:
            self._save_metadata(partial)
            if merge_lora and self.lora and (self.merge_from_disk or is_fsdp(fabric)):
                from litgpt.scripts.merge_lora import merge_lora as litgpt_merge_lora

                litgpt_merge_lora(partial, pretrained_checkpoint_dir=self.source_dir, precision=self.precision)
            elif merge_lora and self.lora:
                torch.save(to_cpu(self._plain(merged_lora_state_dict(model))), partial / "lit_model.pth")
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


def restore(fabric: L.Fabric, model, optimizer, scheduler, resume_dir: Path, lora: bool, own_modules) -> dict:
    """Load a ``step-*`` checkpoint into the run (weights, an objective's own modules, optimizer, scheduler, this
    rank's RNG); returns the saved progress counters. ``own_modules`` is the objective when it adds modules of its
    own (:class:`~litgpt_ext.training.objectives.base.OwnModules`), else None."""
    if lora:
        fabric.load(resume_dir / "lit_model.pth.lora", {"model": model}, strict=False)
    else:
        fabric.load_raw(resume_dir / "lit_model.pth", model, strict=own_modules is None)
    if own_modules is not None:
        own_modules.load_extras(model, resume_dir)
    state = {"optimizer": optimizer, "scheduler": scheduler}
    if is_fsdp(fabric):
        state["model"] = model  # Lightning places a sharded optimizer's state through its module
    remainder = fabric.load(resume_dir / STATE_FILE, state, strict=not is_fsdp(fabric))
    rng_file = resume_dir / f"rng-rank{fabric.global_rank}.pth"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False, map_location="cpu"))
    return remainder["progress"]
