"""Prompt styles litgpt lacks. They are ordinary ``litgpt.prompts.PromptStyle`` subclasses, so a checkpoint's
``prompt_style.yaml`` names them by class path and litgpt's ``generate``/``chat`` apply them like any other."""

from __future__ import annotations

from litgpt.prompts import PromptStyle


class QA(PromptStyle):
    """``Question: {question}\\nAnswer:`` — the Q/A data format's prompt; the answer follows after a space."""

    def apply(self, prompt: str, *, sys_prompt: str | None = None, **kwargs: str) -> str:
        return f"Question: {prompt}\nAnswer:"

    def stop_tokens(self, tokenizer) -> tuple[list[int], ...]:
        return ([tokenizer.eos_id],)
