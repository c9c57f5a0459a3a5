"""A SQL query as a chain of executable stages — the steps a process reward model scores.

* A query with a top-level ``WITH`` is its chain of CTEs, one step each (``name AS (...)``), then the final
  ``SELECT`` as the last step (Reward-SQL's decomposition).
* Any other single ``SELECT`` is split into clause stages in the order the database evaluates them:
  ``FROM``/``JOIN`` -> ``WHERE`` -> ``GROUP BY``/``HAVING`` -> ``SELECT`` -> ``ORDER BY``/``LIMIT`` (a stage is
  present only when the query has that clause). Each step is the clause's own text, whitespace collapsed, so the
  steps joined by newlines read as the query in evaluation order.
* A compound query (``UNION``/``EXCEPT``/``INTERSECT`` at the top level) or one the splitter cannot read is one step.

:func:`stage_sql` turns the first ``k`` clause stages back into a query that runs (``SELECT *`` until the select
stage is reached), so every prefix of a candidate is an executable stage; :func:`assemble` writes steps back in the
order SQL is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from distill.sql.mutate import top_level

CLAUSES = ("SELECT", "FROM", "WHERE", "GROUP BY", "HAVING", "ORDER BY", "LIMIT")
STAGE_OF = {"FROM": "from", "WHERE": "where", "GROUP BY": "group", "HAVING": "group", "SELECT": "select",
            "ORDER BY": "order", "LIMIT": "order"}  # fmt: skip
STAGES = ("from", "where", "group", "select", "order")
"""Clause stages in evaluation order."""
WRITTEN = ("select", "from", "where", "group", "order")
"""The same stages in the order SQL is written."""


@dataclass(frozen=True)
class Step:
    kind: str
    """A clause stage (``from`` ... ``order``), ``cte``, ``final`` (the SELECT after a CTE chain) or ``query``."""
    text: str


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _cte_steps(sql: str) -> list[Step] | None:
    """``WITH a AS (...), b AS (...) SELECT ...`` -> one step per CTE + the final query; None if not of that form."""
    body = sql.strip()
    match = re.match(r"WITH\s+(RECURSIVE\s+)?", body, flags=re.IGNORECASE)
    if not match or match.group(1):
        return None
    steps, i = [], match.end()
    while True:
        head = re.match(r"\s*(\w+|\"[^\"]+\")\s*(\([^()]*\))?\s+AS\s*\(", body[i:], flags=re.IGNORECASE)
        if not head:
            return None
        start, depth, j, quote = i + head.start(1), 1, i + head.end(), None
        while j < len(body) and depth:
            ch = body[j]
            if quote:
                quote = None if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            j += 1
        if depth:
            return None
        steps.append(Step("cte", _collapse(body[start:j])))
        rest = body[j:].lstrip()
        if rest.startswith(","):
            i = j + body[j:].index(",") + 1
            continue
        if not re.match(r"SELECT\b", rest, flags=re.IGNORECASE):
            return None
        steps.append(Step("final", _collapse(rest)))
        return steps


def sql_steps(sql: str) -> list[Step]:
    """The stages of ``sql`` (see the module docstring); never empty for a non-empty query."""
    sql = sql.strip().rstrip(";").strip()
    if re.match(r"WITH\b", sql, flags=re.IGNORECASE):
        return _cte_steps(sql) or [Step("query", _collapse(sql))]
    if top_level(sql, r"\b(UNION|EXCEPT|INTERSECT)\b") or not re.match(r"SELECT\b", sql, flags=re.IGNORECASE):
        return [Step("query", _collapse(sql))]
    starts = []
    for clause in CLAUSES:
        found = top_level(sql, r"\b" + clause.replace(" ", r"\s+") + r"\b")
        if len(found) > 1 and clause != "SELECT" or (clause == "SELECT" and (not found or found[0].start() != 0)):
            return [Step("query", _collapse(sql))]
        if found:
            starts.append((found[0].start(), clause))
    starts.sort()
    if [c for _, c in starts] != [c for c in CLAUSES if c in {c for _, c in starts}] or "FROM" not in dict(
        (c, s) for s, c in starts
    ):
        return [Step("query", _collapse(sql))]  # clauses out of the grammar's order, or no FROM: leave it whole
    texts: dict[str, list[str]] = {}
    for n, (at, clause) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(sql)
        texts.setdefault(STAGE_OF[clause], []).append(_collapse(sql[at:end]))
    return [Step(stage, " ".join(texts[stage])) for stage in STAGES if stage in texts]


def is_staged(steps: list[Step]) -> bool:
    return bool(steps) and all(s.kind in STAGES for s in steps)


def assemble(steps: list[Step]) -> str:
    """The query the steps make, written in SQL order (clause stages reordered; CTEs joined under one WITH)."""
    if is_staged(steps):
        by = {s.kind: s.text for s in steps}
        return " ".join(by[k] for k in WRITTEN if k in by)
    if steps and steps[-1].kind == "final" and all(s.kind == "cte" for s in steps[:-1]):
        return "WITH " + ", ".join(s.text for s in steps[:-1]) + " " + steps[-1].text
    return " ".join(s.text for s in steps)


def stage_sql(steps: list[Step], k: int) -> str | None:
    """A query that runs the first ``k`` steps (1-based): clause stages with ``SELECT *`` until the select stage,
    a CTE chain's ``SELECT * FROM`` its k-th CTE; None when the prefix is not executable on its own."""
    if k >= len(steps):
        return assemble(steps)
    if is_staged(steps):
        prefix = steps[:k]
        if not any(s.kind == "select" for s in prefix):
            prefix = [Step("select", "SELECT *"), *prefix]
        return assemble(prefix)
    if all(s.kind == "cte" for s in steps[:k]) and steps[-1].kind == "final":
        name = steps[k - 1].text.split()[0]
        return "WITH " + ", ".join(s.text for s in steps[:k]) + f" SELECT * FROM {name}"
    return None


def splice(prefix: list[Step], other: list[Step]) -> list[Step] | None:
    """``prefix`` completed by ``other``'s later steps: for clause stages, ``other``'s stages that come after the
    prefix's last one in evaluation order; for CTE chains, ``other``'s steps from the same index on. None when the
    two do not split the same way."""
    if not prefix:
        return list(other)
    if is_staged(prefix) and is_staged(other):
        last = STAGES.index(prefix[-1].kind)
        return [*prefix, *(s for s in other if STAGES.index(s.kind) > last)]
    kinds_prefix = [s.kind for s in prefix]
    if "cte" in kinds_prefix and len(other) > len(prefix) and other[-1].kind == "final" and kinds_prefix[-1] == "cte":
        return [*prefix, *other[len(prefix) :]]
    return None


def first_difference(steps: list[Step], reference: list[Step]) -> int:
    """0-based index of the first step of ``steps`` that is not the reference's step of the same position
    (``len(steps)`` when all agree and there are no fewer of them)."""
    for i, step in enumerate(steps):
        if i >= len(reference) or step != reference[i]:
            return i
    return len(steps) if len(steps) >= len(reference) else len(steps) - 1
