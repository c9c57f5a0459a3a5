"""Where DPO's reference log-probs come from. Three kinds, one interface (:class:`Reference`):

* ``lora_off`` (LoRA runs, the default): the policy itself with every LoRA path switched off under ``no_grad`` —
  exactly the frozen base model, with **no second copy of the weights**;
* ``precompute`` (full finetuning, the default): the reference model runs once over the training and validation
  pairs before the first step; the log-probs are stored in ``out_dir/reference_logps/<key>.pt``, keyed by a hash of
  the data and the reference weights, so ``--resume`` (or a rerun) reuses them and never recomputes. Training then
  holds no reference model and runs one forward per step fewer;
* ``live``: a separate frozen model (``--ref_checkpoint_dir``, else the starting checkpoint) is held in memory and
  runs on every batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm import tqdm

from litgpt_ext.io import atomic_path
from litgpt_ext.model.heads import unwrap
from litgpt_ext.training.objectives.pairs import pair_forward

Kind = Literal["lora_off", "precompute", "live"]


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its base weights: every LoRA layer's rank is set to 0, which litgpt's LoRA layers treat as
    "no LoRA path" (the pretrained ``linear`` alone). Nothing is copied or changed; the ranks are restored after."""
    from litgpt.lora import LoRALayer

    layers = [m for m in unwrap(model).modules() if isinstance(m, LoRALayer)]
    ranks = [m.r for m in layers]
    for layer in layers:
        layer.r = 0
    try:
        yield
    finally:
        for layer, r in zip(layers, ranks, strict=True):
            layer.r = r


def load_frozen_model(fabric, checkpoint_dir: Path, dtype: torch.dtype | None = None) -> nn.Module:
    """A litgpt model from ``checkpoint_dir`` that does not train (a teacher, a DPO reference): on the run's device,
    in ``dtype`` (default: the dtype the run computes in — :func:`~litgpt_ext.precision.run_dtype`: a frozen model
    needs no fp32 master copy, and one left in its checkpoint's dtype would run a bf16 file in a 32-true run), in eval
    mode, no gradients. Built outside Fabric's ``init_module`` (under FSDP that puts parameters on the meta device,
    and a model that Fabric never wraps is never materialised): on the meta device here, then its weights assigned
    and its non-persistent buffers (rope caches) built for real on the device."""
    from litgpt.config import Config
    from litgpt.model import GPT

    from litgpt_ext.precision import run_dtype

    config = Config.from_file(Path(checkpoint_dir) / "model_config.yaml")
    dtype = dtype or run_dtype(fabric)
    with torch.device("meta"):
        model = GPT(config)
    state = torch.load(Path(checkpoint_dir) / "lit_model.pth", mmap=True, weights_only=True, map_location="cpu")
    moved: dict[tuple, torch.Tensor] = {}  # tensors that share storage (tied embeddings) stay one tensor

    def to_run(tensor: torch.Tensor) -> torch.Tensor:
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if key not in moved:
            moved[key] = tensor.to(device=fabric.device, dtype=dtype if tensor.is_floating_point() else None)
        return moved[key]

    model.load_state_dict({k: to_run(v) for k, v in state.get("model", state).items()}, assign=True)
    with fabric.strategy.precision.tensor_init_context():  # in the dtype Fabric would build them in
        model.cos, model.sin = model.rope_cache(device=fabric.device)  # buffers no checkpoint holds, built for real
    return model.eval().requires_grad_(False)


class Reference:
    """Reference log-probs ``(B, 2)`` (chosen, rejected) of a pair batch; see the module docstring."""

    def __init__(self, kind: Kind, base_dir: Path, ref_checkpoint_dir: Path | None = None) -> None:
        self.kind, self.base_dir, self.ref_dir = kind, Path(base_dir), ref_checkpoint_dir
        self.fabric = None
        self.model: nn.Module | None = None

    def describe(self) -> dict:
        source = self.ref_dir or self.base_dir
        return {"kind": self.kind, "checkpoint": str(source) if self.kind != "lora_off" else str(self.base_dir)}

    # -- before training --------------------------------------------------------------------------------------------
    def setup(self, fabric, policy: nn.Module, datasets: dict, collate, out_dir: Path) -> None:
        self.fabric = fabric
        if self.kind == "live":
            self.model = load_frozen_model(fabric, self.ref_dir or self.base_dir)
        elif self.kind == "precompute":
            self._precompute(fabric, policy, datasets, collate, Path(out_dir))

    def _precompute(self, fabric, policy: nn.Module, datasets: dict, collate, out_dir: Path) -> None:
        path = out_dir / "reference_logps" / f"{self._key(datasets, fabric)}.pt"
        if path.is_file():
            stored = torch.load(path, weights_only=True, map_location="cpu")
            fabric.print(f"Reference log-probs: reusing {path}")
        else:
            model = load_frozen_model(fabric, self.ref_dir) if self.ref_dir else policy
            stored = {name: self._compute(fabric, model, data, collate, name) for name, data in datasets.items()}
            if fabric.global_rank == 0:
                with atomic_path(path) as tmp:
                    torch.save(stored, tmp)
                fabric.print(f"Reference log-probs: computed once, stored in {path}")
            fabric.barrier()
            del model
        for name, data in datasets.items():
            data.ref_logps = stored[name]

    def _key(self, datasets: dict, fabric) -> str:
        """Data tokens + which weights + precision: a change to any of them means other log-probs."""
        source = Path(self.ref_dir or self.base_dir) / "lit_model.pth"
        stat = source.stat()
        precision = fabric.strategy.precision.precision
        h = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{precision}".encode())
        for name, data in sorted(datasets.items()):
            h.update(f"|{name}:{data.fingerprint()}".encode())
        return h.hexdigest()[:24]

    @torch.no_grad()
    def _compute(self, fabric, model: nn.Module, data, collate, name: str) -> torch.Tensor:
        """Every rank scores every ``world``-th pair; the results are gathered and put back in order."""
        world, rank, n = fabric.world_size, fabric.global_rank, len(data)
        mine = list(range(rank, n, world))
        per_rank = math.ceil(n / world)
        out = torch.zeros(per_rank, 2, device=fabric.device)
        batch_size = 8
        was_training = model.training
        model.eval()
        as_reference = lora_disabled(model) if self.ref_dir is None else contextlib.nullcontext()
        with as_reference, fabric.autocast():
            for start in tqdm(range(0, len(mine), batch_size), desc=f"reference log-probs ({name})", disable=rank != 0):
                indices = mine[start : start + batch_size]
                batch = fabric.to_device(collate([data.samples[i] for i in indices]))
                logps = pair_forward(model, batch).answer_logps
                out[start : start + len(indices)] = torch.stack(logps.chunk(2), dim=1)
        model.train(was_training)
        gathered = fabric.all_gather(out).reshape(world, per_rank, 2) if world > 1 else out.unsqueeze(0)
        return gathered.transpose(0, 1).reshape(-1, 2)[:n].float().cpu()

    # -- during training ----------------------------------------------------------------------------------------------
    def logps(self, policy: nn.Module, batch: dict) -> torch.Tensor:
        if "ref_logps" in batch:
            return batch["ref_logps"]
        with torch.no_grad():
            if self.model is not None:
                with self.fabric.autocast():
                    logps = pair_forward(self.model, batch).answer_logps
            else:
                with lora_disabled(policy):
                    logps = pair_forward(policy, batch).answer_logps
        return torch.stack(logps.chunk(2), dim=1)
