"""A litgpt prompt style as a Hugging Face ``chat_template``, so an exported student is prompted as it was trained.

litgpt styles are Python: ``style.apply(prompt, sys_prompt=...)`` returns the text the model saw. Most are a constant
text around the prompt (Alpaca's header and ``### Response:`` cue, ``Question: ...\\nAnswer:``, a chat model's turn
markers), sometimes with a slot for a system prompt. Rendering the style around sentinels recovers those pieces, and
the Jinja template puts a conversation's system and user message into them exactly as
:func:`litgpt_ext.prompts.apply_style` does (a style with no system slot gets the system prompt before the prompt,
separated by a blank line). The assistant's answer follows the cue and ends with EOS, as in training. A style whose
text is not "pieces around the prompt" has no template; the model card then shows the prompt to build by hand.

Styles with a multi-turn form (:func:`litgpt_ext.data.chat_encode.multi_turn_form`: Llama 3, the ChatML family,
Gemma) render later turns in that form, exactly as training rendered them; the other styles are single-turn, and
their template refuses a second user turn with a message saying so (transformers' ``raise_exception``) instead of
inventing a multi-turn form the model never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

from litgpt.prompts import PromptStyle

_PROMPT = "\x00PROMPT\x00"
_SYSTEM = "\x00SYSTEM\x00"


@dataclass(frozen=True)
class StylePieces:
    """The constant text around a prompt (and around a system prompt, where the style has a slot for one)."""

    before: str
    after: str
    system_before: str | None = None
    """With a system prompt: text before it, then ``system_between``, the prompt, ``system_after``."""
    system_between: str | None = None
    system_after: str | None = None


def style_pieces(style: PromptStyle) -> StylePieces | None:
    """The pieces of ``style`` (see the module docstring), or None when its text is not pieces around the prompt."""
    try:
        plain = style.apply(_PROMPT)
    except Exception:  # a style that needs more than a prompt
        return None
    if plain.count(_PROMPT) != 1 or "\x00" in plain.replace(_PROMPT, ""):
        return None
    before, after = plain.split(_PROMPT)
    try:
        with_system = style.apply(_PROMPT, sys_prompt=_SYSTEM)
    except Exception:
        with_system = plain
    if (
        with_system.count(_SYSTEM) == 1
        and with_system.count(_PROMPT) == 1
        and with_system.index(_SYSTEM) < with_system.index(_PROMPT)
    ):
        head, rest = with_system.split(_SYSTEM)
        between, tail = rest.split(_PROMPT)
        return StylePieces(before, after, head, between, tail)
    return StylePieces(before, after)


def _literal(text: str) -> str:
    """A Jinja expression that outputs ``text`` verbatim (immune to trim_blocks / lstrip_blocks)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return "{{ '" + escaped + "' }}"


def chat_template(style: PromptStyle, add_bos: bool) -> str | None:
    """A Jinja ``chat_template`` that renders ``[system?, user, assistant?]`` as ``style`` + the answer + EOS, with
    the BOS token first when litgpt's tokenizer adds one (transformers tokenizes a rendered chat without adding
    special tokens); None when the style cannot be expressed as one."""
    pieces = style_pieces(style)
    if pieces is None:
        return None
    name = type(style).__name__
    if pieces.system_before is not None:
        with_system = (
            _literal(pieces.system_before) + "{{ system }}" + _literal(pieces.system_between)
            + "{{ message['content'] }}" + _literal(pieces.system_after)
        )  # fmt: skip
    else:
        with_system = (
            _literal(pieces.before) + "{{ system }}" + _literal("\n\n") + "{{ message['content'] }}"
            + _literal(pieces.after)
        )  # fmt: skip
    plain = _literal(pieces.before) + "{{ message['content'] }}" + _literal(pieces.after)
    return (
        ("{{ bos_token }}" if add_bos else "")
        + "{%- if messages and messages[0]['role'] == 'system' -%}"
        + "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
        + "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
        + "{%- for message in turns -%}"
        + "{%- if message['role'] == 'user' and loop.index0 == 0 -%}"
        + "{%- if system -%}"
        + with_system
        + "{%- else -%}"
        + plain
        + "{%- endif -%}"
        + _later_turns(style, name)
        + "{%- elif message['role'] == 'assistant' -%}"
        + "{{ message['content'] }}{{ eos_token }}"
        + "{%- else -%}"
        + "{{ raise_exception('unsupported role ' + message['role'] + ' for the prompt style "
        + name
        + "') }}"
        + "{%- endif -%}"
        + "{%- endfor -%}"
    )


def _later_turns(style: PromptStyle, name: str) -> str:
    """Jinja ``elif`` branches for the user (and tool) turns after the first: the style's multi-turn form, or an
    exception saying the style has none."""
    from litgpt_ext.data.chat_encode import multi_turn_form

    form = multi_turn_form(style)
    if form is None:
        return (
            "{%- elif message['role'] == 'user' -%}"
            + "{{ raise_exception('this model was trained with the single-turn litgpt prompt style "
            + name
            + "; it has no form for a second user turn') }}"
        )
    strips = f" {_PROMPT} " not in form.turn("user", f" {_PROMPT} ")  # Llama 3 strips each message
    content = "{{ message['content'] | trim }}" if strips else "{{ message['content'] }}"
    branches = ""
    for role in form.roles:
        head, tail = form.turn(role, _PROMPT).split(_PROMPT)
        branches += (
            f"{{%- elif message['role'] == '{role}' and loop.index0 > 0 -%}}"
            + _literal(form.after_reply + head)
            + content
            + _literal(tail + form.cue)
        )
    return branches


def render(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "") -> str:
    """Render a chat template the way transformers does (sandboxed Jinja, ``trim_blocks`` / ``lstrip_blocks``)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=True
    )


def example_prompt(style: PromptStyle, text: str = "{your prompt}") -> str:
    """The exact text the model expects for one prompt (for the model card)."""
    return style.apply(text)
