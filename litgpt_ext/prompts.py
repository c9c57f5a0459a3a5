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
    """The style a command applies to prompts; the first time a process picks one for a checkpoint, one line says
    which and why (see :func:`choose_prompt_style`)."""
    style, reason = choose_prompt_style(name, checkpoint_dir, config, fallback)
    key = (str(Path(checkpoint_dir).resolve()), type(style).__name__, reason)
    if key not in _announced:
        _announced.add(key)
        print(f"prompt style: {type(style).__name__} ({reason})", flush=True)
    return style


_announced: set[tuple[str, str, str]] = set()


def reset_announcements() -> None:
    """Announce every choice again: a new command run in the same process (:func:`litgpt_ext.cli.main_in_process`)
    says what it picked as a new process would."""
    _announced.clear()


def choose_prompt_style(
    name: str | PromptStyle | None, checkpoint_dir: Path, config=None, fallback=None
) -> tuple[PromptStyle, str]:
    """``(style, why)``: the style a command applies to prompts, decided as a user of an instruct model expects.

    An explicit name (``default``: the raw text; ``chat_template``: the checkpoint's own Jinja template; else a
    litgpt style name) is used as given. ``None`` or ``auto`` look, in order, at the checkpoint's
    ``prompt_style.yaml`` (what it was finetuned with), its chat template (``chat_template.jinja`` or
    ``tokenizer_config.json``: an instruct model is trained and prompted in its own format), litgpt's style for the
    model's name (what ``litgpt generate`` / ``chat`` use); only a base model with none of these gets ``fallback()``
    (the data format's default, :func:`data_style`: Alpaca for litgpt JSON) or else the raw text.
    """
    from litgpt_ext.chat_template import ChatTemplateStyle, has_chat_template

    def bound(style: PromptStyle) -> PromptStyle:  # a chat template style knows its template only from here
        unbound = isinstance(style, ChatTemplateStyle) and style.template is None
        return ChatTemplateStyle.from_checkpoint(checkpoint_dir) if unbound else style

    if isinstance(name, PromptStyle):
        return bound(name), "as given"
    if name == "chat_template":
        return ChatTemplateStyle.from_checkpoint(checkpoint_dir), "--prompt_style chat_template"
    if name not in (None, "auto"):
        return style_from_name(name), f"--prompt_style {name}"
    if has_prompt_style(checkpoint_dir):
        return bound(load_prompt_style(checkpoint_dir)), f"{Path(checkpoint_dir) / 'prompt_style.yaml'}"
    if has_chat_template(checkpoint_dir):
        return ChatTemplateStyle.from_checkpoint(checkpoint_dir), f"the chat template of {checkpoint_dir}"
    if config is None:
        from litgpt.config import Config

        config = Config.from_file(Path(checkpoint_dir) / "model_config.yaml")
    from litgpt.prompts import Default

    style = PromptStyle.from_config(config)
    if type(style) not in (PromptStyle, Default):
        return style, f"litgpt's style for {config.name}"
    if fallback is not None:
        return fallback(), f"{config.name} has no prompt_style.yaml, chat template or litgpt style: the data's default"
    return style, f"{config.name} has no prompt_style.yaml, chat template or litgpt style: the raw text"


def apply_style(style: PromptStyle, prompt: str, input: str = "", system: str | None = None) -> str:
    """``style.apply`` with an optional litgpt ``input`` and system prompt.

    Only Alpaca-like styles have a place for ``input``; litgpt's chat styles (and a chat template) take the
    instruction alone and would drop it silently, so for those it follows the instruction after a blank line.
    Likewise chat styles place a system prompt themselves; styles that have no place for one (the raw text,
    Alpaca's fixed header, Q/A) would drop it, so for those it is put before the prompt, separated by a blank line.
    """
    if input and not _keeps_input(style):
        prompt, input = f"{prompt}\n\n{input}", ""
    extra = {"input": input} if input else {}
    if not system:
        return style.apply(prompt, **extra)
    text = style.apply(prompt, sys_prompt=system, **extra)
    if system in text:
        return text
    return style.apply(f"{system}\n\n{prompt}", **extra)


def _keeps_input(style: PromptStyle) -> bool:
    probe = "\ue001INPUT\ue001"
    return probe in style.apply("x", input=probe)
