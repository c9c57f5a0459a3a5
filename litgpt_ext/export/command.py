"""``litgpt-ext export_hf``: a litgpt checkpoint -> a folder transformers / peft / vLLM / the Hub load as-is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import yaml
from litgpt.config import Config

from litgpt_ext.errors import UserError
from litgpt_ext.export.families import convert_tensor, detect_family, hf_config
from litgpt_ext.export.hub import push_folder
from litgpt_ext.export.model_card import PromptFormat, write_model_card
from litgpt_ext.export.peft_adapter import adapter_config, peft_tensors, write_adapter
from litgpt_ext.export.shards import ShardWriter, parse_size
from litgpt_ext.export.tokenizer_files import export_tokenizer
from litgpt_ext.io import atomic_dir, atomic_write_json
from litgpt_ext.precision import STORAGE_DTYPES


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """Memory-mapped: tensors are read from disk only when converted."""
    try:
        state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except Exception as err:
        raise UserError(f"cannot read ({type(err).__name__}: {err})", path=path) from None
    return state.get("model", state)


def _hparams(checkpoint_dir: Path) -> dict | None:
    path = checkpoint_dir / "hyperparameters.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _check_inputs(checkpoint_dir: Path, fmt: str) -> None:
    if not checkpoint_dir.is_dir():
        raise UserError("not a checkpoint directory", path=checkpoint_dir, field="checkpoint_dir")
    needed = ["model_config.yaml"] + (["lit_model.pth.lora", "hyperparameters.yaml"] if fmt == "peft" else [])
    for name in needed:
        if not (checkpoint_dir / name).is_file():
            raise UserError(f"missing {name}", path=checkpoint_dir, field="checkpoint_dir")
    if fmt == "full" and not any((checkpoint_dir / n).is_file() for n in ("lit_model.pth", "lit_model.pth.lora")):
        raise UserError("missing lit_model.pth", path=checkpoint_dir, field="checkpoint_dir")
    if not any((checkpoint_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        raise UserError("missing tokenizer.json or tokenizer.model", path=checkpoint_dir, field="checkpoint_dir")


def export_hf(
    checkpoint_dir: Path,
    out_dir: Path = Path("out/hf"),
    format: Literal["full", "peft"] = "full",
    dtype: Literal["bf16", "fp16", "fp32"] | None = None,
    max_shard_size: str = "5GB",
    base_model: str | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    overwrite: bool = False,
) -> None:
    """Export a litgpt checkpoint for Hugging Face: a full model (merging LoRA first if needed) or a PEFT adapter.

    Args:
        checkpoint_dir: litgpt checkpoint directory (lit_model.pth and/or lit_model.pth.lora, model_config.yaml,
            tokenizer files).
        out_dir: Output folder; refused if not empty unless --overwrite.
        format: ``full`` (config.json, sharded model.safetensors, tokenizer, generation config, model card) or
            ``peft`` (adapter_config.json + adapter_model.safetensors with the LoRA weights only).
        dtype: Weights dtype (default: as stored).
        max_shard_size: Largest safetensors shard (e.g. 5GB, 500MB); bigger models get an index file.
        base_model: Recorded as the base (``base_model_name_or_path`` of a PEFT adapter, the card's base_model);
            a Hub id or the folder of the exported base model.
        push_to_hub: Upload the folder to this Hub repo id (token from HF_TOKEN).
        private: Create the Hub repo as private.
        overwrite: Replace a non-empty out_dir.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    _check_inputs(checkpoint_dir, format)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError("exists and is not empty (pass --overwrite true to replace it)", path=out_dir, field="out_dir")
    config = Config.from_file(checkpoint_dir / "model_config.yaml")
    family = detect_family(config)
    hparams = _hparams(checkpoint_dir)

    reward = reward_head(checkpoint_dir)
    prompt, template = prompt_format(checkpoint_dir, config, reward)
    with atomic_dir(out_dir) as partial:
        tied = False
        if format == "full":
            target_dtype, tied = _export_full(
                checkpoint_dir, partial, config, family, dtype, parse_size(max_shard_size), reward
            )
        else:
            target_dtype = _export_peft(checkpoint_dir, partial, config, family, dtype, hparams, base_model, reward)
        write_model_card(partial, checkpoint_dir, family.name, format, hparams, base_model, reward, prompt)
        if format == "full":
            ids = export_tokenizer(checkpoint_dir, partial, config.block_size, template)
            hf = hf_config(config, family, target_dtype, ids["bos_token_id"], ids["eos_token_id"], tied)
            if reward is not None:
                hf = classification_config(hf, family, reward, ids["pad_token_id"])
            atomic_write_json(partial / "config.json", hf)
            generation = {**ids, "_from_model_config": False}
            stops = chat_stop_ids(checkpoint_dir, ids["eos_token_id"]) if reward is None else []
            if stops:  # a chat format's end of turn stops transformers' generate as it stops generate_batch
                generation["eos_token_id"] = [ids["eos_token_id"], *stops]
            atomic_write_json(partial / "generation_config.json", generation)
    print(f"exported {family.name} ({format}) -> {out_dir}")
    if push_to_hub:
        print(f"pushed to the Hub: {push_folder(out_dir, push_to_hub, private)}")


def prompt_format(checkpoint_dir: Path, config: Config, reward: dict | None) -> tuple[PromptFormat, str | None]:
    """How the model expects its input (for the card) and the ``chat_template`` the export carries.

    A causal LM: the prompt style it was trained with (``prompt_style.yaml``, else litgpt's style for the model, as
    ``generate_batch`` and ``litgpt generate`` pick it). A reward model: the template of the text it scores, the one
    training used (``orm_config.json``)."""
    orm_file = checkpoint_dir / "orm_config.json"
    if orm_file.is_file():
        cfg = json.loads(orm_file.read_text())
        if cfg.get("reward") == "process":
            sep = cfg.get("step_separator", "\n")
            example = "{prompt}" + sep.join(["{step 1}", "{step 2}", "{step n}"])
            return PromptFormat("the PRM input", example, "none: a reward model scores text", False), None
        used = cfg.get("orm_prompt")
        if used:
            return PromptFormat(
                "the ORM prompt used in training", used, "none: a reward model scores text", False
            ), None
        from litgpt_ext.data.orm import SQL_PROMPT, TEXT_PROMPT

        both = f"{SQL_PROMPT}\n\n(rows without an sql field:)\n{TEXT_PROMPT}"
        return PromptFormat("the default ORM prompts", both, "none: a reward model scores text", False), None
    from litgpt_ext.export.chat_template import example_prompt
    from litgpt_ext.export.tokenizer_files import chosen_chat_template
    from litgpt_ext.prompts import resolve_prompt_style

    style = resolve_prompt_style(None, checkpoint_dir, config)
    template, source = chosen_chat_template(checkpoint_dir, style)
    from litgpt_ext.data.chat_encode import multi_turn_form

    multi = multi_turn_form(style) is not None
    return PromptFormat(type(style).__name__, example_prompt(style), source, template is not None, multi), template


def chat_stop_ids(checkpoint_dir: Path, eos_id: int | None) -> list[int]:
    """End-of-turn tokens besides EOS of a student trained with its chat template (e.g. ``<|im_end|>``)."""
    from litgpt.prompts import has_prompt_style
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.chat_template import ChatTemplateStyle, stop_ids
    from litgpt_ext.prompts import resolve_prompt_style

    if not has_prompt_style(checkpoint_dir):
        return []
    style = resolve_prompt_style(None, checkpoint_dir)
    if not isinstance(style, ChatTemplateStyle):
        return []
    return sorted(stop_ids(style, Tokenizer(checkpoint_dir)) - {eos_id})


def _merge_if_needed(checkpoint_dir: Path) -> None:
    if (checkpoint_dir / "lit_model.pth").is_file():
        return
    if not (checkpoint_dir / "hyperparameters.yaml").is_file():
        raise UserError(
            "has LoRA weights but no hyperparameters.yaml to merge them with",
            path=checkpoint_dir,
            field="checkpoint_dir",
        )
    from litgpt.scripts.merge_lora import merge_lora

    print("merging LoRA weights into the base model (litgpt merge_lora)")
    merge_lora(checkpoint_dir)


def reward_head(checkpoint_dir: Path) -> dict | None:
    """A finetune_orm classifier/scalar head (``orm_config.json`` + ``orm_head.pth``) beside the weights, or None.
    (A ``yes_token`` reward model is the causal LM itself and exports as one.)"""
    config_file = checkpoint_dir / "orm_config.json"
    if not config_file.is_file():
        return None
    cfg = json.loads(config_file.read_text())
    if cfg.get("head") not in ("classifier", "scalar"):
        return None
    head_file = checkpoint_dir / "orm_head.pth"
    if not head_file.is_file():
        raise UserError("has orm_config.json but no orm_head.pth", path=checkpoint_dir, field="checkpoint_dir")
    return {**cfg, "weight": torch.load(head_file, weights_only=True, map_location="cpu")["weight"]}


def classification_config(hf: dict, family, reward: dict, pad_token_id: int | None) -> dict:
    """``config.json`` of ``AutoModelForSequenceClassification`` (an outcome reward model) or
    ``AutoModelForTokenClassification`` (a process reward model: a score at every position, read at step ends):
    the family's class, the label count, and the pad id transformers uses to find each row's last real token."""
    if pad_token_id is None:
        raise UserError("the tokenizer has no pad or eos token to mark padding", field="checkpoint_dir")
    num_labels = reward["num_labels"]
    labels = {0: "incorrect", 1: "correct"} if num_labels == 2 else {0: "score"}
    kind = "ForTokenClassification" if reward.get("reward") == "process" else "ForSequenceClassification"
    return {
        **hf,
        "architectures": [family.architecture.replace("ForCausalLM", kind)],
        "num_labels": num_labels,
        "id2label": {str(k): v for k, v in labels.items()},
        "label2id": {v: k for k, v in labels.items()},
        "pad_token_id": pad_token_id,
    }


def score_tensors(reward: dict) -> dict[str, torch.Tensor]:
    """The ``score`` layer's tensors: transformers' token classifiers have a bias (ours is bias-free: zeros)."""
    weight = reward["weight"]
    if reward.get("reward") == "process":
        return {"score.weight": weight, "score.bias": torch.zeros(weight.size(0), dtype=weight.dtype)}
    return {"score.weight": weight}


def _export_full(
    checkpoint_dir, out, config, family, dtype, max_bytes, reward: dict | None = None
) -> tuple[torch.dtype, bool]:
    """The weights in safetensors shards; returns their dtype and whether the LM head is written as tied to the
    embedding (:mod:`litgpt_ext.model.tied`: then ``lm_head.weight`` is left out, as transformers saves it)."""
    from litgpt_ext.model.tied import HEAD, state_is_tied

    _merge_if_needed(checkpoint_dir)
    state = _load_state(checkpoint_dir / "lit_model.pth")
    if any("lora_" in k for k in state):
        raise UserError(
            "holds unmerged LoRA tensors; run litgpt-ext merge_lora first",
            path=checkpoint_dir / "lit_model.pth",
            field="checkpoint_dir",
        )
    tied = reward is None and state_is_tied(state)
    target = STORAGE_DTYPES[dtype] if dtype else next(iter(state.values())).dtype
    writer = ShardWriter(out, max_bytes)
    for name, tensor in state.items():
        if tied and name == HEAD:
            continue
        for hf_name, value in convert_tensor(family, config, name, tensor).items():
            if reward is not None and hf_name == "lm_head.weight":
                continue  # a sequence classifier has a score head instead
            writer.add(hf_name, value.to(target))
    if reward is not None:
        for name, value in score_tensors(reward).items():
            writer.add(name, value.to(target))
    writer.close()
    return target, tied


def _export_peft(checkpoint_dir, out, config, family, dtype, hparams, base_model, reward=None) -> torch.dtype:
    """The LoRA weights as a PEFT adapter; a classifier/scalar reward model's head goes with them as PEFT's
    ``modules_to_save`` (``score``, task type ``SEQ_CLS``), so the adapter on the base model loaded as
    ``AutoModelForSequenceClassification`` scores as the reward model does."""
    lora_params = {k: v for k, v in (hparams or {}).items() if k.startswith("lora_")}
    if "lora_r" not in lora_params:
        raise UserError("hyperparameters.yaml has no lora_r", path=checkpoint_dir, field="hyperparameters.yaml")
    lora = _load_state(checkpoint_dir / "lit_model.pth.lora")
    target = STORAGE_DTYPES[dtype] if dtype else next(iter(lora.values())).dtype
    tensors, targets = peft_tensors(family, config, lora, lora_params)
    adapter = adapter_config(lora_params, targets, base_model or hparams.get("checkpoint_dir"))
    if reward is not None:
        tensors |= {f"base_model.model.{k}": v for k, v in score_tensors(reward).items()}
        task = "TOKEN_CLS" if reward.get("reward") == "process" else "SEQ_CLS"
        adapter |= {"task_type": task, "modules_to_save": ["score"]}
    write_adapter(out, tensors, adapter, target)
    return target
