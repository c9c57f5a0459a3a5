"""A short model card (``README.md``) saying what the model is and how it was trained — never a secret."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class PromptFormat:
    """How the exported model expects to be prompted (what it was trained with)."""

    style: str
    """The litgpt prompt style's class name (or the ORM prompt template's description)."""
    example: str
    """The exact text of one prompt, with ``{your prompt}`` where the user's text goes."""
    template_source: str
    """Where the export's ``chat_template`` came from, or ``none: why``."""
    has_template: bool
    multi_turn: bool = False
    """The template renders later turns (the style has a multi-turn form)."""


def _fence(text: str) -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}text\n{text}\n{fence}"


def _prm_usage(fmt: str, base: str, reward: dict) -> str:
    """How to read step scores with transformers: the pieces tokenized as finetune_prm tokenized them."""
    labels = reward["num_labels"]
    load = (
        f"model = AutoModelForTokenClassification.from_pretrained({base}, num_labels={labels})\n"
        "model = PeftModel.from_pretrained(model, 'THIS_DIR')"
        if fmt == "peft"
        else "model = AutoModelForTokenClassification.from_pretrained('THIS_DIR')"
    )
    score = "logits.softmax(-1)[0, ends, 1]" if labels == 2 else "logits[0, ends, 0].sigmoid()"
    sep = reward.get("step_separator", "\n")
    return (
        "import torch\nfrom transformers import AutoModelForTokenClassification, AutoTokenizer\n"
        + ("from peft import PeftModel\n" if fmt == "peft" else "")
        + f"tokenizer = AutoTokenizer.from_pretrained({base if fmt == 'peft' else repr('THIS_DIR')})\n{load}\n"
        "prompt, steps = 'Question: ...\\nSQL steps:\\n', ['FROM ...', 'WHERE ...', 'SELECT ...']\n"
        "encode = lambda text: tokenizer(text, add_special_tokens=False)['input_ids']\n"
        "ids = tokenizer(prompt)['input_ids']  # with the BOS token, if the tokenizer adds one\n"
        "ends = []\n"
        "for k, step in enumerate(steps):\n"
        "    ids += encode(step)\n"
        "    ends.append(len(ids) - 1)  # the score of step k is read at its last token\n"
        f"    if k + 1 < len(steps):\n        ids += encode({sep!r})  # the step separator, on its own\n"
        "with torch.no_grad():\n    logits = model(input_ids=torch.tensor([ids])).logits\n"
        f"step_scores = {score}  # P(step correct)\n"
        "score = step_scores.min()  # the min aggregate (also: prod, last, mean)"
    )


def _usage(fmt: str, base_model: str | None, prompt: PromptFormat | None, reward: dict | None) -> str:
    base = repr(base_model or "BASE_MODEL_DIR")
    if reward is not None and reward.get("reward") == "process":
        return _prm_usage(fmt, base, reward)
    if reward is not None:
        labels = reward["num_labels"]
        load = (
            f"model = AutoModelForSequenceClassification.from_pretrained({base}, num_labels={labels}, "
            "pad_token_id=tokenizer.pad_token_id)\nmodel = PeftModel.from_pretrained(model, 'THIS_DIR')"
            if fmt == "peft"
            else "model = AutoModelForSequenceClassification.from_pretrained('THIS_DIR')"
        )
        score = "logits.softmax(-1)[:, 1]" if labels == 2 else "logits[:, 0].sigmoid()"
        return (
            "import torch\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            + ("from peft import PeftModel\n" if fmt == "peft" else "")
            + f"tokenizer = AutoTokenizer.from_pretrained({base if fmt == 'peft' else repr('THIS_DIR')})\n{load}\n"
            "text = " + repr(prompt.example if prompt else "...") + "  # fill in the fields\n"
            "with torch.no_grad():\n    logits = model(**tokenizer(text, return_tensors='pt')).logits\n"
            f"score = {score}  # P(correct)"
        )
    tokenizer_dir = base if fmt == "peft" else repr("THIS_DIR")
    load = (
        f"model = AutoModelForCausalLM.from_pretrained({base})\nmodel = PeftModel.from_pretrained(model, 'THIS_DIR')"
        if fmt == "peft"
        else "model = AutoModelForCausalLM.from_pretrained('THIS_DIR')"
    )
    head = "from transformers import AutoModelForCausalLM, AutoTokenizer\n" + (
        "from peft import PeftModel\n" if fmt == "peft" else ""
    )
    if prompt is not None and prompt.has_template and fmt != "peft":
        make = (
            "messages = [{'role': 'user', 'content': 'your prompt'}]\n"
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt', "
            "return_dict=True)"
        )
    else:
        text = prompt.example.replace("{your prompt}", "your prompt") if prompt else "your prompt"
        make = f"prompt = {text!r}  # the prompt format above\ninputs = tokenizer(prompt, return_tensors='pt')"
    return (
        f"{head}tokenizer = AutoTokenizer.from_pretrained({tokenizer_dir})\n{load}\n{make}\n"
        "out = model.generate(**inputs, max_new_tokens=128, do_sample=False)\n"
        "print(tokenizer.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))"
    )


def _prompt_section(prompt: PromptFormat | None, reward: dict | None) -> str:
    if prompt is None:
        return ""
    if reward is not None and reward.get("reward") == "process":
        sep = reward.get("step_separator", "\n")
        return (
            "## Input format\n\nA process reward model: it scores every step of a candidate. The input is the prompt "
            f"followed by the steps, separated by {sep!r}; the prompt, each step and the separator are tokenized "
            "**separately** and concatenated (no separator after the last step), as TRL's `PRMTrainer` does, and the "
            "score of each step is read at the step's last token (see the code below). Prompt used in "
            f"training:\n\n{_fence(prompt.example)}\n\n"
        )
    if reward is not None:
        return (
            f"## Input format\n\nThe reward model scores one text per candidate, made from this template "
            f"({prompt.style}; fill in the fields):\n\n{_fence(prompt.example)}\n\n"
        )
    if prompt.style == "ChatTemplateStyle":
        return (
            "## Prompt format\n\nTrained with the checkpoint's own chat template (`--prompt_style chat_template`), "
            "which the tokenizer carries: `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` "
            "renders any conversation as the model saw it in training (system, user and assistant turns). One "
            f"user turn renders as:\n\n{_fence(prompt.example)}\n\n"
        )
    how = (
        f"The tokenizer's `chat_template` renders a conversation in this format ({prompt.template_source}), so "
        "`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` gives exactly this text, with an "
        "optional system message; "
        + (
            "later turns render in the style's multi-turn form, as in training."
            if prompt.multi_turn
            else "it takes one user turn (the style has no multi-turn form)."
        )
        if prompt.has_template
        else f"No chat template ({prompt.template_source}): build the prompt text by hand."
    )
    return (
        f"## Prompt format\n\nTrained with the litgpt prompt style `{prompt.style}`. A prompt is this text, with "
        f"your text in place of `{{your prompt}}`; the model answers after it and ends with EOS:\n\n"
        f"{_fence(prompt.example)}\n\n{how}\n\n"
    )


def model_card(
    checkpoint_dir: Path,
    family_name: str,
    fmt: str,
    hparams: dict | None,
    base_model: str | None,
    reward: dict | None = None,
    prompt: PromptFormat | None = None,
) -> str:
    rows = []
    if hparams:
        hp = redact(hparams)
        rows = [(k, str(hp[k])) for k in _SHOWN if hp.get(k) is not None]
        if hp.get("mode") == "full":  # the LoRA flags' defaults say nothing about a full finetune
            rows = [(k, v) for k, v in rows if not k.startswith("lora_")]
        for group in ("train", "optimizer", "data"):
            if isinstance(hp.get(group), (dict, str)):
                rows += [(k, v) for k, v in _flat(group, hp[group]) if v not in ("None", "")]
    front = {"library_name": "peft" if fmt == "peft" else "transformers", "tags": ["litgpt", "distillation"]}
    if base_model:
        front["base_model"] = base_model
    table = "\n".join(f"| `{k}` | `{v}` |" for k, v in rows) or "| (no hyperparameters.yaml) | |"
    what = (
        "process reward model" if reward is not None and reward.get("reward") == "process"
        else "reward model" if reward is not None else f"{family_name} model"
    )  # fmt: skip
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {checkpoint_dir.name}\n\n"
        f"A {what} exported from the litgpt checkpoint `{checkpoint_dir.name}` with "
        f"`litgpt-ext export_hf --format {fmt}`.\n\n{_prompt_section(prompt, reward)}"
        f"## Training\n\n| setting | value |\n| --- | --- |\n{table}\n\n"
        f"## Use\n\n```python\n{_usage(fmt, base_model, prompt, reward)}\n```\n"
    )


def write_model_card(out_dir: Path, *args, **kwargs) -> None:
    atomic_write_text(out_dir / "README.md", model_card(*args, **kwargs))
