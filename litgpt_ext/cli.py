"""``litgpt-ext``: litgpt's command table plus commands registered under the entry-point group ``litgpt_ext.commands``.

Every litgpt command runs exactly as under ``litgpt`` (same functions, same parser settings). Extensions, this
project's included, are found only through the entry-point group, so another package adds a command by declaring::

    [project.entry-points."litgpt_ext.commands"]
    my_command = "my_package.module:function"

A registered name that shadows a litgpt command, or one registered twice, is refused with a clear error rather
than silently overriding: users must be able to trust that ``litgpt-ext generate`` is litgpt's ``generate``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from litgpt_ext.errors import EXIT_USER_ERROR, UserError

ENTRY_POINT_GROUP = "litgpt_ext.commands"


class CommandClashError(UserError):
    """Two sources claim the same command name."""


@dataclass(frozen=True)
class Invocation:
    """The command being run and the arguments that followed its name (used to save ``hyperparameters.yaml``)."""

    name: str
    function: Callable
    args: tuple[str, ...]


_current: Invocation | None = None


def current_invocation() -> Invocation | None:
    """The command this process was started as, or None when the code is called from Python."""
    return _current


def litgpt_commands() -> dict[str, Callable]:
    """litgpt's own command table, taken from ``litgpt.__main__`` so it stays in sync with the installed litgpt."""
    from litgpt.__main__ import PARSER_DATA

    return dict(PARSER_DATA)


def litgpt_command_names() -> set[str]:
    """The names in litgpt's command table, read from the source of ``litgpt.__main__`` without importing it
    (importing litgpt costs seconds: it imports Lightning); imported when the source does not have the table."""
    import ast
    from importlib.util import find_spec

    try:
        package = find_spec("litgpt")  # a top-level spec: found without importing the package
        source = os.path.join(os.path.dirname(package.origin), "__main__.py")
        with open(source, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PARSER_DATA" for t in node.targets):
                names = {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
                if names and len(names) == len(node.value.keys):
                    return names
    except (OSError, SyntaxError, AttributeError, TypeError):
        pass
    return set(litgpt_commands())


def _describe(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    source = f" (from {dist.name})" if dist is not None else ""
    return f"'{ep.value}'{source}"


def extension_entry_points() -> list[EntryPoint]:
    """Entry points in our group, deduplicated (an editable install may expose the same dist twice on sys.path)."""
    seen: dict[tuple[str, str], EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        seen.setdefault((ep.name, ep.value), ep)
    return sorted(seen.values(), key=lambda ep: ep.name)


def command_table() -> dict[str, Callable]:
    """litgpt's commands plus every registered extension; raises :class:`CommandClashError` on a name clash."""
    table = litgpt_commands()
    origin: dict[str, str] = {name: "litgpt" for name in table}
    for ep in extension_entry_points():
        if ep.name in origin:
            owner = "a litgpt command" if origin[ep.name] == "litgpt" else f"already registered by {origin[ep.name]}"
            raise CommandClashError(
                f"command '{ep.name}' registered by {_describe(ep)} clashes with {owner}; rename the entry point",
                field=ENTRY_POINT_GROUP,
            )
        try:
            function = ep.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            warnings.warn(f"litgpt-ext: skipping command '{ep.name}' from {_describe(ep)}: {exc}", stacklevel=2)
            continue
        table[ep.name] = function
        origin[ep.name] = _describe(ep)
    return table


def requested_table(argv: Sequence[str]) -> dict[str, Callable]:
    """The command table ``argv`` needs. A registered extension named first on the command line, that neither
    shadows a litgpt command nor is registered twice, is loaded alone: the command then starts without importing
    litgpt's and every other extension's modules. Anything else (a litgpt command, ``--help``) gets the full table.
    Both parse the command's arguments the same way: one subcommand of the same ``CLI``."""
    name = argv[0] if argv and not argv[0].startswith("-") else None
    if name is not None:
        matches = [ep for ep in extension_entry_points() if ep.name == name]
        if len(matches) == 1 and name not in litgpt_command_names():
            return {name: matches[0].load()}
    return command_table()


def _configure_like_litgpt() -> None:
    """Apply the same global settings as ``litgpt.__main__.main`` so commands behave identically (torch's only when
    the command imported torch: a command that does not compute with it need not pay a second to import it)."""
    from jsonargparse import set_config_read_mode, set_docstring_parse_options

    set_docstring_parse_options(attribute_docstrings=True)
    set_config_read_mode(urls_enabled=True)
    warnings.filterwarnings(
        action="ignore",
        message=r"The epoch parameter in `scheduler.step\(\)` was not necessary and is being deprecated.*",
        category=UserWarning,
        module=r".*torch\.optim\.lr_scheduler.*",
    )
    if "torch" in sys.modules:
        sys.modules["torch"].set_float32_matmul_precision("high")


def _record_invocation(table: dict[str, Callable], argv: Sequence[str]) -> None:
    global _current
    for i, token in enumerate(argv):
        if token in table:
            _current = Invocation(token, table[token], tuple(argv[i + 1 :]))
            return
        if not token.startswith("-"):
            return


def _normalized(table: dict[str, Callable], argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` with the command's arguments rewritten as :func:`litgpt_ext.cli_args.normalize` does, and the
    command's name."""
    from litgpt_ext.cli_args import normalize

    for i, token in enumerate(argv):
        if token in table:
            return argv[: i + 1] + normalize(table[token], argv[i + 1 :]), token
        if not token.startswith("-"):
            break
    return argv, None


def _unreachable(err: BaseException) -> bool:
    """A network failure (a litgpt command such as ``download`` run offline), not a bug."""
    import socket

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        module = type(err).__module__.split(".")[0]
        if module in ("httpx", "httpcore", "requests", "urllib3") or isinstance(
            err, (socket.gaierror, ConnectionError)
        ):
            return True
        if module == "huggingface_hub" and "connect" in str(err).lower() + type(err).__name__.lower():
            return True
        err = err.__cause__ or err.__context__
    return False


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``litgpt-ext``; user errors and parser errors become one or two lines on stderr and exit code 2."""
    from jsonargparse import CLI

    from litgpt_ext.cli_args import CompactErrorParser
    from litgpt_ext.lazy_imports import defer_torchmetrics

    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    defer_torchmetrics()  # Lightning imports it only to read its version: ~3 s and ~150 MB saved per command
    try:
        table = requested_table(argv)
        _configure_like_litgpt()
        argv, command = _normalized(table, argv)
        _record_invocation(table, argv)
        CompactErrorParser.command, CompactErrorParser.function = command, table.get(command) if command else None
        CompactErrorParser.argv = argv
        CLI(table, args=argv, parser_class=CompactErrorParser)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except Exception as err:
        if not _unreachable(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(
            f"error: {command or 'litgpt-ext'}: cannot reach the network ({type(err).__name__}: {first})",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USER_ERROR) from None


def main_in_process(argv: Sequence[str]) -> int:
    """:func:`main` in this process, for a caller that runs many commands (a study's smoke run, the tests): the same
    parsing, one-line errors and exit code, without a new interpreter importing torch and Lightning each time.
    What ``main`` sets for the whole process — the invocation it records, the parser's context, the matmul precision,
    the default dtype — is put back after it, and ``sys.argv`` is the command line meanwhile (litgpt's own commands
    read it to record their hyperparameters). For commands that start no processes of their own (one device)."""
    import torch

    from litgpt_ext.cli_args import CompactErrorParser

    global _current
    saved = (_current, {n: getattr(CompactErrorParser, n, None) for n in ("command", "function", "argv")},
             torch.get_float32_matmul_precision(), torch.get_default_dtype(), sys.argv)  # fmt: skip
    argv = [str(a) for a in argv]
    sys.argv = ["litgpt-ext", *argv]
    if "litgpt_ext.prompts" in sys.modules:  # its one-line announcements are once per command, as in a new process
        sys.modules["litgpt_ext.prompts"].reset_announcements()
    try:
        main(argv)
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        _current = saved[0]
        for name, value in saved[1].items():
            setattr(CompactErrorParser, name, value)
        torch.set_float32_matmul_precision(saved[2])
        torch.set_default_dtype(saved[3])
        sys.argv = saved[4]


if __name__ == "__main__":
    main()
