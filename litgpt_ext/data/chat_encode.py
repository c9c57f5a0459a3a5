"""Conversations -> ``input_ids`` + ``labels`` (loss on assistant turns only), with a chat template or a litgpt style.

Two renderers, one contract (:class:`Renderer`: ``encode`` a conversation for training, ``prompt_ids`` for
generation):

* :class:`TemplateRenderer` (``--prompt_style chat_template``): the conversation is rendered once by the checkpoint's
  Jinja template and tokenized as one text without added special tokens — the ids transformers'
  ``apply_chat_template(tokenize=True)`` returns. The label mask comes from the turn-by-turn rendering
  (:meth:`litgpt_ext.chat_template.ChatTemplate.assistant_spans`): a token is supervised when it starts inside an
  assistant turn's span (its words and the template's end-of-turn marker). With a sentencepiece-only tokenizer
  (no ``tokenizer.json``) each span is tokenized on its own.
* :class:`StyleRenderer` (a litgpt prompt style): the first exchange is exactly litgpt's single-turn rendering
  (``style.apply`` with the system prompt, litgpt's BOS rule, the answer followed by EOS), so a one-exchange
  conversation gives the same ids as the same example in alpaca JSON. Later turns use the style's multi-turn form
  (:func:`multi_turn_form`: Llama 3's headers, ChatML's ``<|im_start|>`` turns, Gemma's ``<start_of_turn>``); a style
  with no such form refuses a multi-turn conversation in one line instead of inventing a format.

Truncation (:func:`encode_conversations`): whole turns are dropped from the front (the system prompt stays) until
the conversation fits; if even its last exchange does not fit, that exchange is kept from its start and cut at
``max_seq_length``; a conversation whose last prompt alone fills the context is dropped with one line naming it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from litgpt.prompts import PromptStyle

from litgpt_ext.chat_template import ChatTemplateStyle
from litgpt_ext.data.chat import Conversation
from litgpt_ext.data.encode import batch_encode, with_eos
from litgpt_ext.errors import UserError
from litgpt_ext.prompts import apply_style

TrainOn = Literal["all_assistant", "last_assistant"]


@dataclass(frozen=True)
class TurnForm:
    """How a litgpt chat style writes turns after the first exchange."""

    turn: Callable[[str, str], str]
    """``(role, content)`` -> the text of a user (or tool) turn."""
    cue: str
    """The assistant's header, after which it answers."""
    after_reply: str = ""
    """Text between an answer's EOS and the next turn."""
    roles: tuple[str, ...] = ("user", "tool")


def _multi_turn_forms() -> list[tuple[type, TurnForm]]:
    from litgpt.prompts import ChatML, Gemma, Llama3

    return [
        (
            Llama3,
            TurnForm(
                lambda role, text: f"<|start_header_id|>{role}<|end_header_id|>\n\n{text.strip()}<|eot_id|>",
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
        ),
        (
            ChatML,
            TurnForm(lambda role, text: f"<|im_start|>{role}\n{text}<|im_end|>\n", "<|im_start|>assistant\n", "\n"),
        ),
        (
            Gemma,
            TurnForm(
                lambda role, text: f"<start_of_turn>user\n{text}<end_of_turn>\n",
                "<start_of_turn>model\n",
                "\n",
                ("user",),
            ),
        ),
    ]


def multi_turn_form(style: PromptStyle) -> TurnForm | None:
    """The multi-turn form of a litgpt style (by class, so Qwen2_5, SmolLM2, ... inherit ChatML's), else None."""
    for cls, form in _multi_turn_forms():
        if isinstance(style, cls):
            return form
    return None


class Renderer:
    """Turns conversations into token ids. A conversation it cannot render is a :class:`UserError` without a
    location; :func:`located` adds the file and row."""

    tokenizer: object

    def encode(self, messages: list[dict], train_on: TrainOn) -> tuple[list[int], list[bool]]:
        """Ids of the whole conversation and, per id, whether the loss is on it."""
        raise NotImplementedError

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Ids that prompt the model for the next assistant turn (the conversation ends with a user/tool turn)."""
        raise NotImplementedError

    def reply_ids(self, messages: list[dict], reply: str) -> list[int]:
        """Ids of ``reply`` as the assistant's next turn after ``messages`` (what ``prompt_ids`` leads to), its
        end (EOS, or the template's end-of-turn marker) included: a preference pair's completion."""
        raise NotImplementedError


class TemplateRenderer(Renderer):
    def __init__(self, style: ChatTemplateStyle, tokenizer) -> None:
        self.template, self.tokenizer = style._bound(), tokenizer

    def _ids_and_starts(self, text: str) -> tuple[list[int], list[int]] | None:
        if self.tokenizer.backend != "huggingface":
            return None
        enc = self.tokenizer.processor.encode(text, add_special_tokens=False)
        return list(enc.ids), [start for start, _ in enc.offsets]

    def encode(self, messages, train_on):
        text, spans = self.template.assistant_spans(messages)
        if train_on == "last_assistant":
            spans = spans[-1:]
        found = self._ids_and_starts(text)
        if found is None:  # sentencepiece: the spans' pieces, each tokenized on its own
            cuts = sorted({0, len(text), *(s for s, _ in spans), *(e for _, e in spans)})
            pieces = [text[a:b] for a, b in zip(cuts, cuts[1:])]
            ids, mask = [], []
            for a, piece_ids in zip(cuts, batch_encode(self.tokenizer, pieces, bos=False)):
                ids += piece_ids
                mask += [any(s <= a < e for s, e in spans)] * len(piece_ids)
            return ids, mask
        ids, starts = found
        lefts = [s for s, _ in spans]  # in order: turn by turn
        mask = []
        for start in starts:
            k = bisect.bisect_right(lefts, start) - 1
            mask.append(k >= 0 and start < spans[k][1])
        return ids, mask

    def prompt_ids(self, messages):
        text = self.template.render(messages, add_generation_prompt=True)
        return self._plain_ids(text)

    def _plain_ids(self, text: str) -> list[int]:
        found = self._ids_and_starts(text)
        return found[0] if found is not None else batch_encode(self.tokenizer, [text], bos=False)[0]

    def reply_ids(self, messages, reply):
        prompt = self.template.render(messages, add_generation_prompt=True)
        full = self.template.render(messages + [{"role": "assistant", "content": reply}])
        if not full.startswith(prompt):
            raise UserError("the chat template does not render the reply as a continuation of its prompt")
        return self._plain_ids(full[len(prompt) :])


class StyleRenderer(Renderer):
    def __init__(self, style: PromptStyle, tokenizer) -> None:
        self.style, self.tokenizer = style, tokenizer
        self.form = multi_turn_form(style)

    def _pieces(self, messages: list[dict], for_prompt: bool) -> list[tuple[str, str]]:
        """``(text, kind)`` with kind ``first`` (litgpt's prompt: BOS rule), ``turn`` or ``reply`` (+ EOS)."""
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        body = messages[1:] if system is not None else list(messages)
        name = type(self.style).__name__
        if not body or body[0]["role"] != "user":
            raise UserError(f"the {name} prompt style needs the conversation to start with a user turn")
        pieces: list[tuple[str, str]] = []
        expect_reply = False
        for i, message in enumerate(body):
            role = message["role"]
            if role == "system":
                raise UserError(f"the {name} prompt style has a system prompt only as the first turn")
            if expect_reply:
                if role != "assistant":
                    raise UserError(
                        f"the {name} prompt style renders alternating user/assistant turns; turn {i} is a second "
                        f"{role} turn in a row (--prompt_style chat_template renders any order)",
                    )
                pieces.append((message["content"], "reply"))
                expect_reply = False
                continue
            if role == "assistant":
                raise UserError(f"the {name} prompt style needs a user turn before each assistant turn")
            if not pieces:
                pieces.append((apply_style(self.style, message["content"], system=system), "first"))
            else:
                if self.form is None:
                    raise UserError(
                        f"the {name} prompt style has no multi-turn form; this conversation has more than one "
                        "exchange (use --prompt_style chat_template, or a chat style such as Llama3 or ChatML)",
                    )
                if role not in self.form.roles:
                    raise UserError(f"the {name} prompt style has no {role} turn")
                text = self.form.after_reply + self.form.turn(role, message["content"]) + self.form.cue
                pieces.append((text, "turn"))
            expect_reply = True
        if for_prompt and not expect_reply:
            raise UserError("the conversation ends with an assistant turn: nothing to answer")
        return pieces

    def _ids(self, pieces: list[tuple[str, str]]) -> list[tuple[list[int], str]]:
        tok = self.tokenizer
        first = batch_encode(tok, [t for t, k in pieces if k == "first"], bos=None)
        rest = batch_encode(tok, [t for t, k in pieces if k != "first"], bos=False)
        out, fi, ri = [], iter(first), iter(rest)
        for _, kind in pieces:
            ids = next(fi) if kind == "first" else next(ri)
            if kind == "reply":
                ids = with_eos(ids, tok.eos_id)
            out.append((ids, kind))
        return out

    def encode(self, messages, train_on):
        while messages and messages[-1]["role"] != "assistant":  # trailing prompts have nothing to learn
            messages = messages[:-1]
        encoded = self._ids(self._pieces(messages, for_prompt=False))
        last = max(i for i, (_, kind) in enumerate(encoded) if kind == "reply")
        ids, mask = [], []
        for i, (piece, kind) in enumerate(encoded):
            ids += piece
            mask += [kind == "reply" and (train_on == "all_assistant" or i == last)] * len(piece)
        return ids, mask

    def prompt_ids(self, messages):
        return [i for piece, _ in self._ids(self._pieces(messages, for_prompt=True)) for i in piece]

    def reply_ids(self, messages, reply):
        self._pieces(messages, for_prompt=True)  # the prompt must be one this style can render
        return self._ids([(reply, "reply")])[0][0]


def located(call: Callable, path: Path | None, where: str):
    """``call()``, with a :class:`UserError` it raises given the file and row it is about (``where`` alone when
    it already names the file: ``pairs.jsonl:line 3``)."""
    try:
        return call()
    except UserError as err:
        if err.path is not None:
            raise
        if path is None:
            raise UserError(err.reason, path=where, field=err.field) from None
        raise UserError(err.reason, path=path, line=where, field=err.field) from None


def renderer_for(style: PromptStyle, tokenizer) -> Renderer:
    return (
        TemplateRenderer(style, tokenizer) if isinstance(style, ChatTemplateStyle) else StyleRenderer(style, tokenizer)
    )


def _exchange_starts(messages: list[dict]) -> tuple[list[dict], list[int]]:
    """The system turn (as a list) and the indices of the rest where an exchange (a user turn) begins."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(head) :]
    starts = [i for i, m in enumerate(body) if m["role"] == "user" and any(x["role"] == "assistant" for x in body[i:])]
    return head, starts or [0]


def fit_conversation(
    renderer: Renderer, messages: list[dict], max_seq_length: int | None, train_on: TrainOn
) -> tuple[list[int], list[bool], str | None]:
    """``(ids, mask, what was cut)`` (see the module docstring); ids are empty when it cannot be trained on."""
    ids, mask = renderer.encode(messages, train_on)
    if not max_seq_length or len(ids) <= max_seq_length:
        return ids, mask, None
    head, starts = _exchange_starts(messages)
    body = messages[len(head) :]
    for start in starts[1:]:
        ids, mask = renderer.encode(head + body[start:], train_on)
        if len(ids) <= max_seq_length:
            return ids, mask, "turns"
    first = mask.index(True) if True in mask else len(mask)
    if first >= max_seq_length:
        return [], [], "dropped"
    return ids[:max_seq_length], mask[:max_seq_length], "reply"


def encode_conversations(
    renderer: Renderer,
    conversations: list[Conversation],
    path: Path,
    max_seq_length: int | None = None,
    train_on: TrainOn = "all_assistant",
    ignore_index: int = -100,
) -> tuple[dict, dict]:
    """The packed dataset (:func:`litgpt_ext.data.pretokenized.pack`'s layout) and counts of what was cut."""
    from litgpt_ext.data.pretokenized import pack

    if train_on not in ("all_assistant", "last_assistant"):
        raise UserError("use all_assistant or last_assistant", field="train_on")
    samples, ids = [], []
    counts = {"turns_dropped": 0, "reply_truncated": 0, "dropped": 0}
    for conv in conversations:
        seq, mask, cut = located(
            partial(fit_conversation, renderer, conv.messages, max_seq_length, train_on), path, conv.where
        )
        if cut == "dropped":
            counts["dropped"] += 1
            print(f"{path}:{conv.where}: dropped: its last prompt alone fills max_seq_length {max_seq_length}")
            continue
        if cut:
            counts["turns_dropped" if cut == "turns" else "reply_truncated"] += 1
        samples.append({"input_ids": seq, "labels": [t if keep else ignore_index for t, keep in zip(seq, mask)]})
        ids.append(conv.id or conv.where)
    return pack(samples, ids), counts
