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


def _project_imports(path, package_modules: set[str], name: str) -> set[str]:
    """Modules of this project that ``path`` imports, at module level or lazily inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in package_modules and t != name}
    return found


def test_no_import_circles():
    """A circle of imports works only in some import orders (a lazy import inside a function only hides it): every
    shared helper lives below all of its users."""
    modules = {}
    for root in ("litgpt_ext", "distill"):
        for path in (REPO / root).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    graph = {name: _project_imports(path, set(modules), name) for name, path in modules.items()}

    circles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(
                    " -> ".join(stack[stack.index(nxt) :] + [node, nxt]) if nxt in stack else f"{node}->{nxt}"
                )
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert circles == []


def test_every_checkpoint_read_says_where_its_tensors_go():
    """A file saved from a GPU records ``cuda:0`` for its tensors; ``torch.load`` without ``map_location`` puts them
    back there — on every rank of a multi-GPU job, and nowhere on a machine without one. Every read in the package
    names its device (the writes hold CPU tensors: training/checkpoint.py)."""
    offenders = []
    for path in sorted([*(REPO / "litgpt_ext").rglob("*.py"), *(REPO / "distill").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                if not any(k.arg == "map_location" for k in node.keywords):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
