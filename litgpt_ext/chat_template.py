"""A checkpoint's own Jinja ``chat_template``, rendered exactly as transformers' ``apply_chat_template`` renders it.

An instruct student ships its chat format as a Jinja template in ``tokenizer_config.json``. ``--prompt_style
chat_template`` trains and generates with that template instead of a litgpt prompt style:

* :class:`ChatTemplate` renders with transformers' environment (sandboxed Jinja, ``trim_blocks`` /
  ``lstrip_blocks``, ``loopcontrols``, its ``tojson``, ``raise_exception`` and ``strftime_now``; the special
  tokens of the tokenizer config as variables), so the text, and so the token ids, are the ones transformers gets.
  ``{% generation %}`` blocks (TRL's assistant-mask markers) render their content.
* :meth:`ChatTemplate.assistant_spans` finds each assistant turn by rendering the conversation turn by turn (the
  prompt up to a turn with ``add_generation_prompt``, then the conversation through that turn): the characters in
  between are what the student learns to write, the turn's end-of-turn marker included. No string search: a
  template that does not render a conversation as a growing prefix (one that rewrites earlier turns) is an error.
* :class:`ChatTemplateStyle` is a litgpt ``PromptStyle``, so every command that applies a prompt style (generation,
  evaluation, scoring) takes the template too; it is saved as ``prompt_style.yaml`` like any other style and bound
  to the checkpoint's template when loaded (:func:`litgpt_ext.prompts.resolve_prompt_style`).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from litgpt.prompts import PromptStyle

from litgpt_ext.errors import UserError


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


@lru_cache(maxsize=16)
def compile_template(source: str):
    """The template compiled in transformers' Jinja environment (cached: rendering is per turn)."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}``: renders its body (the marks only matter to TRL's masks)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _template_source(checkpoint_dir: Path) -> tuple[str | None, dict]:
    """The checkpoint's chat template text (``chat_template.jinja``, else ``tokenizer_config.json``'s, the
    ``default`` of a named list) or None, and the tokenizer config beside it."""
    path = Path(checkpoint_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    source = config.get("chat_template")
    if (Path(checkpoint_dir) / "chat_template.jinja").is_file():  # transformers reads this one first, too
        source = (Path(checkpoint_dir) / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(source, list):
        source = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}.get("default")
    return (source if isinstance(source, str) and source.strip() else None), config


def has_chat_template(checkpoint_dir: Path) -> bool:
    """Whether the checkpoint ships a chat template (an instruct model's tokenizer does)."""
    return chat_template_text(checkpoint_dir) is not None


def chat_template_text(checkpoint_dir: Path) -> str | None:
    """The checkpoint's chat template as written, or None."""
    return _template_source(checkpoint_dir)[0]


class ChatTemplate:
    """A Jinja chat template with the special tokens it refers to (see the module docstring)."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None, origin: str = "") -> None:
        self.source = source
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.origin = origin
        try:
            self._compiled = compile_template(source)
        except Exception as err:  # jinja2.TemplateSyntaxError
            raise UserError(f"chat_template does not compile: {err}", path=origin or None) from None

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Path) -> ChatTemplate:
        """The ``chat_template`` of ``checkpoint_dir/tokenizer_config.json`` (a named list: the ``default`` one)."""
        source, config = _template_source(checkpoint_dir)
        if source is None:
            raise UserError(
                "has no chat_template (tokenizer_config.json or chat_template.jinja): pick a litgpt --prompt_style",
                path=checkpoint_dir,
                field="prompt_style",
            )
        names = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
        special = {name: _token_text(config.get(name)) for name in names}
        return cls(source, special, origin=str(Path(checkpoint_dir) / "tokenizer_config.json"))

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        from jinja2.exceptions import TemplateError

        try:
            return self._compiled.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except TemplateError as err:
            raise UserError(f"chat template: {err}") from None

    def assistant_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the ``(start, end)`` character spans of its assistant turns, in order."""
        text = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True) if i else ""
            through = self.render(messages[: i + 1])
            if not through.startswith(prompt) or not text.startswith(through):
                raise UserError(
                    f"the chat template does not render turn {i} as a continuation of the turns before it (it "
                    "rewrites earlier turns), so the assistant's tokens cannot be found; use train_on "
                    "last_assistant with a single exchange, or a litgpt --prompt_style"
                )
            spans.append((len(prompt), len(through)))
        return text, spans

    def end_of_turn(self) -> str:
        """The text the template puts right after an assistant's words (e.g. ``<|im_end|>``): the stop marker."""
        marker = "\ue000"
        probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}]
        try:
            text = self.render(probe)
        except UserError:
            return ""
        return text.split(marker, 1)[1] if marker in text else ""


class ChatTemplateStyle(PromptStyle):
    """``--prompt_style chat_template``: the checkpoint's own chat template as a litgpt prompt style.

    ``apply`` renders ``[system?, user]`` (or a list of messages) with the generation prompt, as
    ``apply_chat_template(..., add_generation_prompt=True)`` does. The rendered text carries the template's own
    special tokens (a BOS where the template writes one), so it is encoded without adding any (:func:`encode_bos`).
    """

    def __init__(self, template: ChatTemplate | None = None) -> None:
        self.template = template

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Path) -> ChatTemplateStyle:
        return cls(ChatTemplate.from_checkpoint(checkpoint_dir))

    def _bound(self) -> ChatTemplate:
        if self.template is None:
            raise UserError(
                "the chat_template prompt style is not bound to a checkpoint (load it with "
                "litgpt_ext.prompts.resolve_prompt_style)"
            )
        return self.template

    def apply(self, prompt, *, sys_prompt: str | None = None, **kwargs) -> str:
        if isinstance(prompt, list):
            messages = prompt
        else:
            messages = ([{"role": "system", "content": sys_prompt}] if sys_prompt else []) + [
                {"role": "user", "content": prompt}
            ]
        return self._bound().render(messages, add_generation_prompt=True)

    def stop_tokens(self, tokenizer) -> tuple[list[int], ...]:
        stops = [[tokenizer.eos_id]] if tokenizer.eos_id is not None else []
        stop = stop_token_id(self._bound(), tokenizer)
        if stop is not None and [stop] not in stops:
            stops.append([stop])
        return tuple(stops)


def stop_token_id(template: ChatTemplate, tokenizer) -> int | None:
    """The id of the end-of-turn token, when the text after an assistant's words starts with one special token
    (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``); None otherwise (EOS alone stops generation)."""
    tail = template.end_of_turn()
    if not tail or tokenizer.backend != "huggingface":
        return None
    added = {t.content: i for i, t in tokenizer.processor.get_added_tokens_decoder().items()}
    for content, token_id in added.items():
        if content and tail.startswith(content):
            return token_id
    return None


def encode_bos(style: PromptStyle) -> bool | None:
    """litgpt's ``bos`` argument for text rendered by ``style``: a chat template writes its own special tokens
    (``False``: add none, as transformers does); litgpt styles follow the tokenizer's rule (``None``)."""
    return False if isinstance(style, ChatTemplateStyle) else None


def stop_ids(style: PromptStyle, tokenizer) -> set[int]:
    """Every single-token stop of ``style`` (EOS, and e.g. ``<|eot_id|>`` for Llama 3 or a template's end of turn)."""
    try:
        stops = style.stop_tokens(tokenizer)
    except Exception:
        stops = ([tokenizer.eos_id],)
    return {s[0] for s in stops if len(s) == 1 and s[0] is not None}
