"""Command lines the way people type them, and parser errors a person can read.

jsonargparse is strict where users are not: ``--records r.jsonl`` for a list of paths, ``--lora_query 1`` (the
recipes this toolchain replaces write booleans as 1/0), ``--data pairs.jsonl --data.val_path v.jsonl``. And when it
refuses, it prints the usage and ten lines of union subtypes. Here:

* :func:`normalize` rewrites, before parsing, only what the parser would refuse: one value for a list flag becomes
  a one-item list (several existing files after a list-of-paths flag, as a shell glob expands, become the list),
  ``1/0/yes/no/on/off`` for a boolean become ``true/false`` (a bare boolean flag means true), the short
  ``--data PATH`` followed by ``--data.*`` options becomes the long form with the command's own DataModule, and
  ``--data.*`` options with no ``--data`` are that DataModule's (``--data.route_files '{...}'``);
* :class:`CompactErrorParser` answers any remaining mistake in at most two lines — the flag and what was given,
  then what it accepts — and exits 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

from jsonargparse import ArgumentParser

BOOL_WORDS = {"1": "true", "0": "false", "yes": "true", "no": "false", "y": "true", "n": "false", "on": "true",
              "off": "false", "true": "true", "false": "false"}  # fmt: skip


def _args_of(hint) -> tuple:
    """The members of a union (``X | None`` included), else ``(hint,)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _plain(hint):
    """``X`` of ``X | None`` (the first non-None member of a union)."""
    members = [a for a in _args_of(hint) if a is not type(None)]
    return members[0] if len(members) == 1 else hint


def _is_bool(hint) -> bool:
    return _plain(hint) is bool


def _list_item(hint):
    """The item type of a ``list[X]`` flag (``| None`` allowed), else None."""
    plain = _plain(hint)
    if typing.get_origin(plain) is list:
        (item,) = typing.get_args(plain) or (str,)
        return item
    return None


def _hints(obj) -> dict:
    try:
        return typing.get_type_hints(obj)
    except Exception:  # an annotation that cannot be resolved: leave that command's flags as typed
        return {}


def flag_types(function: Callable) -> dict[str, object]:
    """``flag name -> type`` of a command: its parameters and the fields of its dataclass groups (``train.epochs``)."""
    hints = _hints(function)
    table: dict[str, object] = {}
    for name, param in inspect.signature(function).parameters.items():
        hint = hints.get(name, param.annotation)
        table[name] = hint
        group = _plain(hint)
        if dataclasses.is_dataclass(group) and isinstance(group, type):
            field_hints = _hints(group)
            for f in dataclasses.fields(group):
                table[f"{name}.{f.name}"] = field_hints.get(f.name, f.type)
    return table


def _positionals(function: Callable) -> int:
    return sum(
        1
        for p in inspect.signature(function).parameters.values()
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


def _list_value(values: list[str], item) -> str:
    if dataclasses.is_dataclass(item):  # one JSON object for a list of them (``--teachers '{"name": ...}'``)
        return "[" + ", ".join(values) + "]"
    if item in (int, float):
        try:
            return "[" + ", ".join(str(item(v)) for v in values) + "]"
        except ValueError:
            pass
    return json.dumps(values)


def normalize(function: Callable, args: list[str]) -> list[str]:
    """``args`` (what followed the command's name) with the forms described in the module docstring rewritten."""
    types_ = flag_types(function)
    no_positionals = _positionals(function) == 0
    data_class = getattr(function, "default_data", None)
    out: list[str] = []
    names_data = any(a == "--data" or a.startswith("--data=") for a in args)
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or token == "--":
            out.append(token)
            i += 1
            continue
        name, eq, inline = token[2:].partition("=")
        if data_class and not names_data and name.startswith("data.") and name != "data.help":
            out += ["--data", data_class]  # ``--data.route_files ...`` alone: options of the command's DataModule
            names_data = True
        hint = types_.get(name)
        if hint is None:
            out.append(token)
            i += 1
            continue
        has_next = bool(eq) or (i + 1 < len(args) and not args[i + 1].startswith("--"))
        value = inline if eq else (args[i + 1] if has_next else None)
        step = 1 + (has_next and not eq)
        if _is_bool(hint):
            if value is None:
                out += [f"--{name}", "true"]  # a bare boolean flag means true
            else:
                out += [f"--{name}", BOOL_WORDS.get(value.strip().lower(), value)]
            i += step
            continue
        item = _list_item(hint)
        if item is not None and value is not None and not value.lstrip().startswith("["):
            values = [value]
            if item is Path and no_positionals and not eq:  # a shell glob: every existing file that follows
                while i + step < len(args) and not args[i + step].startswith("-") and Path(args[i + step]).exists():
                    values.append(args[i + step])
                    step += 1
            out += [f"--{name}", _list_value(values, item)]
            i += step
            continue
        if name == "data" and data_class and value is not None and _is_path_like(value):
            if any(a.startswith("--data.") for a in args):
                out += ["--data", data_class, "--data.path", value]  # the short form, with options following
                i += step
                continue
        out.append(token)
        i += 1
    return out


def _is_path_like(value: str) -> bool:
    """A ``--data`` value that names a file or folder, not a DataModule class (``SFTData``, ``litgpt.data.JSON``)."""
    return "/" in value or Path(value).suffix != "" or Path(value).exists()


# -- errors ---------------------------------------------------------------------------------------------------------
def describe(hint) -> str:
    """What a flag of type ``hint`` accepts, in words."""
    members = [a for a in _args_of(hint) if a is not type(None)]
    optional = len(members) < len(_args_of(hint))
    words = []
    for m in members:
        origin = typing.get_origin(m)
        if origin is typing.Literal:
            words.append("one of " + ", ".join(str(v) for v in typing.get_args(m)))
        elif m is bool:
            words.append("true or false (also 1/0, yes/no)")
        elif m is int:
            words.append("an integer")
        elif m is float:
            words.append("a number")
        elif m is str:
            words.append("a text")
        elif m is Path:
            words.append("a path")
        elif origin is list:
            item = (typing.get_args(m) or (str,))[0]
            words.append(f"a list of {describe(item).removeprefix('a ').removeprefix('an ')}s, e.g. [a, b] (or one)")
        elif origin is dict or m is dict:
            words.append("a mapping (--flag.key value, or {key: value})")
        elif isinstance(m, type):
            words.append(f"a {m.__name__} (a class name, then --flag.option value)")
        else:
            words.append(str(m))
    text = " or ".join(dict.fromkeys(words)) or "a value"
    return text + (" (or null)" if optional else "")


def _given(message: str, argv: list[str], key: str) -> str | None:
    match = re.search(r"(?:Given value|Got value): (.*)", message)
    if match:
        return match.group(1).strip()
    flag = "--" + key
    for n, token in enumerate(argv):
        if token == flag and n + 1 < len(argv):
            return argv[n + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def explain(message: str, command: str | None, function: Callable | None, argv: list[str]) -> str:
    """At most two lines for a jsonargparse error: the flag and what was given, then what it accepts."""
    where = f"{command}: " if command else ""
    match = re.search(r'(?:Parser key|Key) "([^"]+)"', message)
    if match and "is required" in message:
        key = match.group(1).removeprefix(f"{command}.") if command else match.group(1)
        return f"error: {where}{key} is required ({command or 'the command'} --help shows how to pass it)"
    if match:
        key = match.group(1).removeprefix(f"{command}.") if command else match.group(1)
        hint = flag_types(function).get(key) if function is not None else None
        given = _given(message, argv, key)
        first = f"error: {where}--{key}: " + (f"cannot take {given!r}" if given is not None else "invalid value")
        if key == "data" and getattr(function, "default_data", None):
            cls = function.default_data
            return (
                f"{first}\nuse --data PATH, or --data {cls} --data.path PATH with more --data.* options "
                f"(or another DataModule class)"
            )
        if hint is not None:
            return f"{first}\nexpected {describe(hint)}"
        detail = [line.strip() for line in message.splitlines()[1:] if line.strip()]
        return first + (f"\n{detail[0]}" if detail else "")
    if message.startswith("Unrecognized arguments:"):
        flags = message.split(":", 1)[1].strip()
        return f"error: {where}unknown argument(s) {flags}\nsee: litgpt-ext {command or ''} --help".rstrip()
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return f"error: {where}{lines[0] if lines else message}"


class CompactErrorParser(ArgumentParser):
    """jsonargparse's parser, with errors in at most two lines (see :func:`explain`) and exit code 2."""

    command: str | None = None
    function: Callable | None = None
    argv: list[str] = []

    def error(self, message: str, ex: Exception | None = None) -> typing.NoReturn:
        from jsonargparse._common import debug_mode_active

        if not self.exit_on_error or debug_mode_active() or callable(getattr(self, "_error_handler", None)):
            super().error(message, ex)
        sys.stderr.write(explain(message, CompactErrorParser.command, CompactErrorParser.function, self.argv) + "\n")
        self.exit(2)
