"""A short model card (``README.md``) saying what the model is and how it was trained — never a secret."""

from __future__ import annotations

from pathlib import Path

import yaml

from litgpt_ext.hparams import redact
from litgpt_ext.io import atomic_write_text

_SHOWN = (
    "mode",
    "precision",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_query",
    "lora_key",
    "lora_value",
    "lora_projection",
    "lora_mlp",
    "lora_head",
    "seed",
)


def _flat(prefix: str, value) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flat(f"{prefix}.{k}" if prefix else k, v)]
    return [(prefix, str(value))]


def model_card(checkpoint_dir: Path, family_name: str, fmt: str, hparams: dict | None, base_model: str | None) -> str:
    rows = []
    if hparams:
        hp = redact(hparams)
        rows = [(k, str(hp[k])) for k in _SHOWN if hp.get(k) is not None]
        for group in ("train", "optimizer", "data"):
            if isinstance(hp.get(group), (dict, str)):
                rows += [(k, v) for k, v in _flat(group, hp[group]) if v not in ("None", "")]
    front = {"library_name": "peft" if fmt == "peft" else "transformers", "tags": ["litgpt", "distillation"]}
    if base_model:
        front["base_model"] = base_model
    table = "\n".join(f"| `{k}` | `{v}` |" for k, v in rows) or "| (no hyperparameters.yaml) | |"
    load = (
        (
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
            f"base = AutoModelForCausalLM.from_pretrained({base_model!r})\nmodel = PeftModel.from_pretrained(base, "
            "'THIS_DIR')"
        )
        if fmt == "peft"
        else (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained('THIS_DIR')\n"
            "tokenizer = AutoTokenizer.from_pretrained('THIS_DIR')"
        )
    )
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {checkpoint_dir.name}\n\n"
        f"A {family_name} model exported from the litgpt checkpoint `{checkpoint_dir.name}` with "
        f"`litgpt-ext export_hf --format {fmt}`.\n\n## Training\n\n| setting | value |\n| --- | --- |\n{table}\n\n"
        f"## Use\n\n```python\n{load}\n```\n"
    )


def write_model_card(out_dir: Path, *args) -> None:
    atomic_write_text(out_dir / "README.md", model_card(*args))
