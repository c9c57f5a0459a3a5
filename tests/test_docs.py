"""The README's and docs/' commands stay copy-paste correct: every ``litgpt-ext`` line in a shell code block
(continuation lines joined, comments dropped) parses with the CLI as it stands (``--print_config``: the flags exist,
take what is written, and the command is in the table), and every docs/ page the README links to exists."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "2>", "2>&1", "<", "&"}


SHELL_BLOCKS = ("bash", "sh", "shell")
"""Fenced blocks of these languages hold commands; plain blocks hold pictures, output and error examples."""


def fenced_lines(text: str) -> list[str]:
    """The lines of the shell code blocks, with backslash continuations joined."""
    lines, inside, fenced, pending = [], False, False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            inside, pending = fenced and line.strip()[3:].strip() in SHELL_BLOCKS, ""
            continue
        if not inside:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return lines


def commands(path) -> list[tuple[str, list[str]]]:
    """``(the line, the arguments after litgpt-ext)`` for each runnable ``litgpt-ext`` line."""
    found = []
    for line in fenced_lines(path.read_text(encoding="utf-8")):
        if "litgpt-ext " not in line or line.lstrip().startswith(("error:", "#")):
            continue
        try:
            tokens = shlex.split(line.replace("$ litgpt-ext", "litgpt-ext"), comments=True)
        except ValueError:
            continue
        starts = [i for i, t in enumerate(tokens) if t.endswith("litgpt-ext")]
        if not starts:
            continue
        args = tokens[starts[0] + 1 :]
        for i, token in enumerate(args):
            if token in SHELL_OPERATORS or token.startswith((">", "2>")):
                args = args[:i]
                break
        if not args or args[0].startswith("-") or "--help" in args or "-h" in args or "..." in args:
            continue  # `litgpt-ext --help` and elided examples
        found.append((line.strip(), args))
    return found


ALL = [(page.name, line, args) for page in PAGES for line, args in commands(page)]


def test_the_docs_hold_commands_to_check():
    assert len(ALL) >= 40, len(ALL)
    assert {args[0] for _, _, args in ALL} >= {"distill_query", "finetune_sft", "finetune_kd", "generate_batch"}


@pytest.mark.parametrize(("page", "line", "args"), ALL, ids=[f"{p}:{a[0]}:{i}" for i, (p, _, a) in enumerate(ALL)])
def test_each_command_parses(page, line, args, capsys, monkeypatch):
    from litgpt_ext import cli
    from litgpt_ext.cli_args import CompactErrorParser

    # main() records the process's invocation (hyperparameters.yaml re-parses it) and the parser's context: both
    # are process-wide, so they are put back for the tests that run later in this worker
    monkeypatch.setattr(cli, "_current", cli._current)
    for name in ("command", "function", "argv"):
        monkeypatch.setattr(CompactErrorParser, name, getattr(CompactErrorParser, name, None))
    import torch

    precision = torch.get_float32_matmul_precision()  # main() sets litgpt's ("high"), as litgpt's CLI does
    with pytest.raises(SystemExit) as stop:
        try:
            cli.main([*args, "--print_config"])
        finally:
            torch.set_float32_matmul_precision(precision)
    captured = capsys.readouterr()
    assert stop.value.code in (0, None), f"{page}: {line}\n{captured.err[-1500:]}"


def test_links_to_docs_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\((docs/[^)#]+|[^)#/:]+\.md)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            base = REPO if page.name == "README.md" else page.parent
            assert (base / target).is_file(), f"{page.name} links to {target}, which does not exist"
