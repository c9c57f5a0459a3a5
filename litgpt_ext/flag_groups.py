"""A dataclass of flags spread into a command's signature: ``--lora_r`` and ``--temperature`` as users type them in
litgpt, one object in the code.

A command is a plain function whose signature is its CLI (jsonargparse reads it). Where several commands share a
group of flags (every finetune command's :class:`~litgpt_ext.finetune.flags.CommonFlags`, every generator's
:class:`~litgpt_ext.generate.settings.Sampling`), the function takes the group as one parameter and
:func:`spread_group` gives its public signature the group's fields in that parameter's place; a call gathers them
back into one object.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable


def spread_group(
    function: Callable, param: str, group: type, fields: list | None = None, defaults: dict | None = None
) -> Callable:
    """``function(..., param: group, ...)`` with ``group``'s ``fields`` (default: all, in order) as parameters of its
    own where ``param`` was, with ``defaults`` overriding the fields' defaults; the docstring is left to the caller."""
    hints = typing.get_type_hints(group)
    fields = fields or list(dataclasses.fields(group))
    defaults = defaults or {}
    parameters = list(inspect.signature(function, eval_str=True).parameters.values())
    at = [p.name for p in parameters].index(param)
    spread = []
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        spread.append(inspect.Parameter(f.name, kind, default=defaults.get(f.name, default), annotation=hints[f.name]))
    signature = inspect.Signature(parameters[:at] + spread + parameters[at + 1 :], return_annotation=None)
    names = {f.name for f in fields}

    @functools.wraps(function)
    def command(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        gathered = group(**{name: values.pop(name) for name in list(values) if name in names})
        return function(**values, **{param: gathered})

    del command.__wrapped__  # the public signature is the one above, not the function's
    command.__signature__ = signature
    return command
