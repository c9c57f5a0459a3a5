"""Package direction: ``distill`` (the data side) may import ``litgpt_ext`` (the model side), never the reverse."""

from __future__ import annotations

import ast

from conftest import REPO


def test_litgpt_ext_never_imports_distill():
    offenders = []
    for path in sorted((REPO / "litgpt_ext").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n == "distill" or n.startswith("distill.")]
    assert offenders == []
