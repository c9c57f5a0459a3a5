"""How a row's tokens are drawn and when it ends: one object, one set of defaults.

``generate_batch``'s flags, ``finetune_kd``'s ``--gen.*`` (on-policy and sequence-KD samples), ``--eval.test``'s
greedy answers and the engine itself all take a :class:`Sampling`; a command that prefers other defaults says so
where it declares its flag (on-policy KD samples at temperature 1 from the whole distribution, as GKD does), never
by a second copy of the fields. :func:`spread_sampling` turns the fields into a command's own flags
(``--temperature``), as ``generate_batch`` has always taken them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from litgpt_ext.flag_groups import spread_group
from litgpt_ext.generate.repetition import RepetitionControls


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How each row's tokens are chosen and when it ends (the engine's per-row settings)."""

    max_new_tokens: int = 128
    """Tokens generated at most per sample."""
    min_new_tokens: int = 0
    """EOS cannot end a sample before this many tokens (transformers' ``min_new_tokens``: the EOS logit is masked
    until then; stop strings still apply)."""
    temperature: float = 0.8
    """Sampling temperature; 0 is greedy."""
    top_k: int | None = 50
    """Keep the k most likely tokens (None: all)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    repetition_penalty: float = 1.0
    """transformers' repetition penalty: the logits of tokens already in the row (prompt included) are divided by it
    when positive, multiplied when negative; 1.0 is off."""
    no_repeat_ngram_size: int = 0
    """Forbid any n-gram of this size from occurring twice in a row (prompt included), as transformers'
    ``no_repeat_ngram_size``; 0 is off."""
    stop: list[str] | None = None
    """Stop strings (the text is cut before them)."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def repetition(self) -> RepetitionControls:
        return RepetitionControls(self.repetition_penalty, self.no_repeat_ngram_size)

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    def check(self, prefix: str = "", max_temperature: float | None = None) -> Sampling:
        """Every field's range, as one-line errors naming ``prefix + field`` (``gen.top_p``); returns self."""
        from litgpt_ext.checks import above, at_least, within

        at_least(f"{prefix}max_new_tokens", self.max_new_tokens, 1)
        at_least(f"{prefix}min_new_tokens", self.min_new_tokens, 0)
        if max_temperature is None:
            at_least(f"{prefix}temperature", self.temperature, 0.0)
        else:
            within(f"{prefix}temperature", self.temperature, 0.0, max_temperature)
        at_least(f"{prefix}top_k", self.top_k, 1)
        within(f"{prefix}top_p", self.top_p, 0.0, 1.0, low_open=True)
        above(f"{prefix}repetition_penalty", self.repetition_penalty, 0.0)
        at_least(f"{prefix}no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        return self


def greedy(max_new_tokens: int) -> Sampling:
    """Greedy decoding of up to ``max_new_tokens`` (evaluation's answers)."""
    return Sampling(max_new_tokens=max_new_tokens, temperature=0.0, top_k=None)


def _field_help(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass's fields (what jsonargparse shows for ``--group.field``)."""
    import docstring_parser

    return {p.arg_name: " ".join((p.description or "").split()) for p in docstring_parser.parse_from_object(cls).params}


def spread_sampling(function: Callable) -> Callable:
    """Decorate ``command(..., sampling: Sampling)``: its public signature has every :class:`Sampling` field as a flag
    of its own in place of ``sampling`` (``--temperature 0``), documented from the fields' docstrings, and a call
    gathers them into one ``sampling``."""
    import textwrap

    command = spread_group(function, "sampling", Sampling)
    help_ = _field_help(Sampling)
    entries = []
    for f in dataclasses.fields(Sampling):
        entries += textwrap.wrap(f"{f.name}: {help_[f.name]}", width=112, initial_indent=" " * 8,
                                 subsequent_indent=" " * 12)  # fmt: skip
    # the function documents ``sampling`` on one line of its Args; the fields' entries take that line's place
    lines = (function.__doc__ or "").split("\n")
    at_doc = next(i for i, line in enumerate(lines) if line.strip().startswith("sampling:"))
    command.__doc__ = "\n".join(lines[:at_doc] + entries + lines[at_doc + 1 :])
    return command
