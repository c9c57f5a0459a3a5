"""Prompt styles: the ones litgpt lacks, and the one rule every command uses to pick and apply a style.

The styles here are ordinary ``litgpt.prompts.PromptStyle`` subclasses, so a checkpoint's ``prompt_style.yaml`` names
them by class path and litgpt's ``generate``/``chat`` apply them like any other.
"""

from __future__ import annotations

from pathlib import Path

from litgpt.prompts import PromptStyle, has_prompt_style, load_prompt_style

from litgpt_ext.errors import UserError


class QA(PromptStyle):
    """``Question: {question}\\nAnswer:`` — the Q/A data format's prompt; the answer follows after a space."""

    def apply(self, prompt: str, *, sys_prompt: str | None = None, **kwargs: str) -> str:
        return f"Question: {prompt}\nAnswer:"

    def stop_tokens(self, tokenizer) -> tuple[list[int], ...]:
        return ([tokenizer.eos_id],)


def style_from_name(name: str) -> PromptStyle:
    """A litgpt style by name, ``default`` for the raw text; an unknown name is a one-line error."""
    from litgpt.prompts import prompt_styles

    if name == "default":
        return PromptStyle()
    if name == "chat_template":
        raise UserError("chat_template needs the checkpoint whose template it is", field="prompt_style")
    if name not in prompt_styles:
        raise UserError(
            f"unknown prompt style {name!r}; use default, chat_template or one of {sorted(prompt_styles)}",
            field="prompt_style",
        )
    return PromptStyle.from_name(name)


def data_style(kind: str) -> PromptStyle:
    """The style finetune_sft trains a data format with when none is given: QA for Q/A files (``qa``), alpaca for
    litgpt JSON (``litgpt``). Every command that reads those formats without a style falls back to it."""
    return QA() if kind == "qa" else style_from_name("alpaca")


def resolve_prompt_style(
    name: str | PromptStyle | None, checkpoint_dir: Path, config=None, fallback=None
) -> PromptStyle:
    """The style a command applies to prompts, decided the way ``litgpt generate`` decides it.

    ``None`` or ``auto``: the checkpoint's ``prompt_style.yaml`` (what it was finetuned with), else ``fallback()``
    when given (e.g. :func:`data_style` of the input's format), else litgpt's style for the model's name (the
    raw text for unknown models); ``default``: the raw text; ``chat_template``: the checkpoint's own Jinja chat
    template (:class:`litgpt_ext.chat_template.ChatTemplateStyle`); else a litgpt style name.
    """
    from litgpt_ext.chat_template import ChatTemplateStyle

    def bound(style: PromptStyle) -> PromptStyle:  # a chat template style knows its template only from here
        unbound = isinstance(style, ChatTemplateStyle) and style.template is None
        return ChatTemplateStyle.from_checkpoint(checkpoint_dir) if unbound else style

    if isinstance(name, PromptStyle):
        return bound(name)
    if name == "chat_template":
        return ChatTemplateStyle.from_checkpoint(checkpoint_dir)
    if name not in (None, "auto"):
        return style_from_name(name)
    if has_prompt_style(checkpoint_dir):
        return bound(load_prompt_style(checkpoint_dir))
    if fallback is not None:
        return fallback()
    if config is None:
        from litgpt.config import Config

        config = Config.from_file(Path(checkpoint_dir) / "model_config.yaml")
    return PromptStyle.from_config(config)


def apply_style(style: PromptStyle, prompt: str, input: str = "", system: str | None = None) -> str:
    """``style.apply`` with an optional litgpt ``input`` and system prompt.

    Chat styles place a system prompt themselves; styles that have no place for one (the raw text, Alpaca's fixed
    header, Q/A) would drop it silently, so for those it is put before the prompt, separated by a blank line.
    """
    extra = {"input": input} if input else {}
    if not system:
        return style.apply(prompt, **extra)
    text = style.apply(prompt, sys_prompt=system, **extra)
    if system in text:
        return text
    return style.apply(f"{system}\n\n{prompt}", **extra)


def chat_data_style(checkpoint_dir: Path) -> PromptStyle:
    """The style chat data is rendered with when none is given: the checkpoint's own chat template when it has
    one (an instruct student), else alpaca (single-turn conversations only)."""
    from litgpt_ext.chat_template import ChatTemplateStyle, has_chat_template

    if has_chat_template(checkpoint_dir):
        return ChatTemplateStyle.from_checkpoint(checkpoint_dir)
    return data_style("litgpt")
