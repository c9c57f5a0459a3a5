"""LoRA weights as a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``).

litgpt's fused-qkv LoRA keeps one ``lora_A`` of ``r * n_enabled`` rows (one r-row block per enabled projection
among q, k, v) and one ``lora_B`` whose rows are the enabled projections' outputs stacked; the update of projection
g is ``B_g @ A_g * alpha / r``. PEFT keeps separate ``q_proj`` / ``k_proj`` / ``v_proj`` adapters with the same
``alpha / r`` scaling, so each block maps one to one. Module names come from the same per-family mapping as the
full export, so the adapter's targets match the exported base model exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from litgpt.config import Config

from litgpt_ext.errors import UserError
from litgpt_ext.export.families import Family, convert_tensor
from litgpt_ext.io import atomic_write_json, save_safetensors


def _hf_modules(family: Family, config: Config, module: str, rows: int) -> list[str]:
    """HF module names for a litgpt module (three for a fused qkv)."""
    dummy = torch.empty((rows, 0))
    return [name.removesuffix(".weight") for name in convert_tensor(family, config, module + ".weight", dummy)]


def peft_tensors(family: Family, config: Config, lora: dict[str, torch.Tensor], lora_params: dict) -> tuple[dict, set]:
    if family.peft_modules is None:
        raise UserError(
            f"PEFT export is not supported for {family.name} ({family.no_peft}); use --format full",
            field="format",
        )
    r = int(lora_params["lora_r"])
    modules = sorted({name.rsplit(".", 1)[0] for name in lora})
    tensors, targets = {}, set()
    for module in modules:
        A, B = lora[f"{module}.lora_A"], lora[f"{module}.lora_B"]
        if module.endswith("attn.qkv"):
            enabled = [bool(lora_params.get(k, False)) for k in ("lora_query", "lora_key", "lora_value")]
            sizes = [
                config.n_head * config.head_size,
                config.n_query_groups * config.head_size,
                config.n_query_groups * config.head_size,
            ]
            names = _hf_modules(family, config, module, sum(sizes))
            parts = [(n, s) for n, s, on in zip(names, sizes, enabled) if on]
            b_blocks = B.split([s for _, s in parts])
            for g, ((name, _), b) in enumerate(zip(parts, b_blocks)):
                tensors[f"base_model.model.{name}.lora_A.weight"] = A[g * r : (g + 1) * r]
                tensors[f"base_model.model.{name}.lora_B.weight"] = b
                targets.add(name.rsplit(".", 1)[-1])
        else:
            (name,) = _hf_modules(family, config, module, B.shape[0])
            tensors[f"base_model.model.{name}.lora_A.weight"] = A
            tensors[f"base_model.model.{name}.lora_B.weight"] = B
            targets.add(name.rsplit(".", 1)[-1])
    return tensors, targets


def adapter_config(lora_params: dict, targets: set[str], base_model: str | None) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": int(lora_params["lora_r"]),
        "lora_alpha": lora_params["lora_alpha"],
        "lora_dropout": lora_params.get("lora_dropout", 0.0),
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
    }


def write_adapter(out_dir: Path, tensors: dict, config: dict, dtype: torch.dtype) -> None:
    save_safetensors(
        {k: v.to(dtype).contiguous().clone() for k, v in tensors.items()},
        out_dir / "adapter_model.safetensors",
        metadata={"format": "pt"},
    )
    atomic_write_json(out_dir / "adapter_config.json", config)
