"""Wrong-but-plausible candidates made from the gold query by rule, so labelled data exists without a trained model.

Each rule edits the *top-level* query only (subqueries and string literals are left alone) and returns ``None`` where
it does not apply: a wrong column, a wrong aggregate, a dropped or negated ``WHERE`` condition, a wrong join key, an
off-by-one ``LIMIT``, a swapped ``ORDER BY`` direction. A mutation can happen to return the gold's result (dropping a
condition that filters nothing); the labeller decides by running it, never by the rule's name.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from distill.sql.extract import normalize_sql

AGGREGATES = ("COUNT", "SUM", "AVG", "MIN", "MAX")
CLAUSE_ENDS = ("GROUP BY", "HAVING", "ORDER BY", "LIMIT", "UNION", "EXCEPT", "INTERSECT")


def top_level(sql: str, pattern: str) -> list[re.Match]:
    """Matches of ``pattern`` (case-insensitive) outside parentheses and quotes."""
    depth, quote, spans = 0, None, []
    mask = []
    for ch in sql:
        if quote:
            mask.append(False)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
            mask.append(False)
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        mask.append(depth == 0 and ch not in "()")
    for m in re.finditer(pattern, sql, flags=re.IGNORECASE):
        if all(mask[m.start() : m.end()]):
            spans.append(m)
    return spans


def _clause(sql: str, keyword: str) -> tuple[int, int] | None:
    """(start of the clause body, end) of a top-level clause such as WHERE, or None."""
    found = top_level(sql, rf"\b{keyword}\b")
    if not found:
        return None
    start = found[0].end()
    ends = [m.start() for end in CLAUSE_ENDS for m in top_level(sql, rf"\b{end}\b") if m.start() > start]
    return start, min(ends, default=len(sql))


def tables_in(sql: str) -> dict[str, str]:
    """alias (or table name) -> table name for ``FROM``/``JOIN`` items of the query (any depth)."""
    found = {}
    for table, alias in re.findall(r"\b(?:FROM|JOIN)\s+(\w+)(?:\s+(?:AS\s+)?(?!ON\b|WHERE\b|JOIN\b|GROUP\b|ORDER\b|LIMIT\b|INNER\b|LEFT\b)(\w+))?", sql, flags=re.IGNORECASE):  # fmt: skip
        found[table.lower()] = table
        if alias:
            found[alias.lower()] = table
    return found


def wrong_aggregate(sql: str, columns: dict[str, list[str]], rng: random.Random) -> str | None:
    calls = [
        m
        for m in top_level(sql, r"\b(COUNT|SUM|AVG|MIN|MAX)\s*(?=\()")
        if not sql[m.end() :].lstrip("( ").startswith("*")
    ]
    if not calls:
        return None
    m = rng.choice(calls)
    other = rng.choice([a for a in AGGREGATES if a != m.group(1).upper() and a != "COUNT"] or ["COUNT"])
    return sql[: m.start(1)] + other + sql[m.end(1) :]


def wrong_column(sql: str, columns: dict[str, list[str]], rng: random.Random) -> str | None:
    select = top_level(sql, r"\bSELECT\b")
    frm = top_level(sql, r"\bFROM\b")
    if not select or not frm:
        return None
    start, end = select[0].end(), frm[0].start()
    aliases = tables_in(sql)
    known = {c.lower(): t for t in set(aliases.values()) for c in columns.get(t, [])}
    refs = [m for m in re.finditer(r"\b(?:(\w+)\.)?(\w+)\b", sql[start:end]) if m.group(2).lower() in known]
    if not refs:
        return None
    m = rng.choice(refs)
    table = aliases.get((m.group(1) or "").lower()) or known[m.group(2).lower()]
    options = [c for c in columns.get(table, []) if c.lower() != m.group(2).lower()]
    if not options:
        return None
    at = start + m.start(2)
    return sql[:at] + rng.choice(options) + sql[start + m.end(2) :]


def _conjuncts(body: str) -> list[tuple[int, int]]:
    if re.search(r"\bBETWEEN\b", body, flags=re.IGNORECASE):
        return [(0, len(body))]  # BETWEEN x AND y: not a conjunction to split
    cuts = top_level(body, r"\bAND\b")
    bounds, last = [], 0
    for m in cuts:
        bounds.append((last, m.start()))
        last = m.end()
    bounds.append((last, len(body)))
    return bounds


def drop_condition(sql: str, columns: dict[str, list[str]], rng: random.Random) -> str | None:
    clause = _clause(sql, "WHERE")
    if clause is None:
        return None
    start, end = clause
    parts = _conjuncts(sql[start:end])
    if len(parts) > 1:
        dropped = rng.randrange(len(parts))
        keep = [sql[start:end][a:b].strip() for i, (a, b) in enumerate(parts) if i != dropped]
        return (sql[:start] + " " + " AND ".join(keep) + " " + sql[end:].lstrip()).strip()
    where = top_level(sql, r"\bWHERE\b")[0]
    return (sql[: where.start()].rstrip() + " " + sql[end:].lstrip()).strip()


def negate_condition(sql: str, columns: dict[str, list[str]], rng: random.Random) -> str | None:
    clause = _clause(sql, "WHERE")
    if clause is None:
        return None
    start, end = clause
    return (sql[:start] + f" NOT ({sql[start:end].strip()}) " + sql[end:].lstrip()).strip()


def wrong_join_key(sql: str, columns: dict[str, list[str]], rng: random.Random) -> str | None:
    keys = list(re.finditer(r"\bON\s+\w+\.\w+\s*=\s*(\w+)\.(\w+)", sql, flags=re.IGNORECASE))
    if not keys:
        return None
    m = rng.choice(keys)
    table = tables_in(sql).get(m.group(1).lower())
    options = [c for c in columns.get(table, []) if c.lower() != m.group(2).lower()]
    if not options:
        return None
    return sql[: m.start(2)] + rng.choice(options) + sql[m.end(2) :]


def limit_off_by_one(sql: str, columns: dict[str, list[str]], rng: random.Random) -> str | None:
    found = top_level(sql, r"\bLIMIT\s+(\d+)")
    if not found:
        return None
    m = found[-1]
    n = int(m.group(1))
    return sql[: m.start(1)] + str(n + 1 if n <= 1 or rng.random() < 0.5 else n - 1) + sql[m.end(1) :]


def swap_order(sql: str, columns: dict[str, list[str]], rng: random.Random) -> str | None:
    clause = _clause(sql, "ORDER BY")
    if clause is None:
        return None
    start, end = clause
    body = sql[start:end]
    first = body.split(",")[0]
    if re.search(r"\bDESC\b", first, flags=re.IGNORECASE):
        new_first = re.sub(r"\bDESC\b", "ASC", first, count=1, flags=re.IGNORECASE)
    elif re.search(r"\bASC\b", first, flags=re.IGNORECASE):
        new_first = re.sub(r"\bASC\b", "DESC", first, count=1, flags=re.IGNORECASE)
    else:
        new_first = first.rstrip() + " DESC" + (" " if first != first.rstrip() else "")
    return sql[:start] + new_first + body[len(first) :] + sql[end:]


RULES: dict[str, Callable[[str, dict[str, list[str]], random.Random], str | None]] = {
    "wrong_column": wrong_column,
    "wrong_aggregate": wrong_aggregate,
    "drop_condition": drop_condition,
    "negate_condition": negate_condition,
    "wrong_join_key": wrong_join_key,
    "limit_off_by_one": limit_off_by_one,
    "swap_order": swap_order,
}


def mutate(gold: str, columns: dict[str, list[str]], k: int, seed: str) -> list[tuple[str, str]]:
    """Up to ``k`` distinct ``(rule, sql)`` mutations of ``gold``, chosen reproducibly from ``seed`` (the question id)."""
    rng = random.Random(seed)
    seen = {normalize_sql(gold).lower()}
    out: list[tuple[str, str]] = []
    for _ in range(3):  # rules with random choices may yield new variants on a second pass
        for name in rng.sample(list(RULES), len(RULES)):
            if len(out) >= k:
                return out
            sql = RULES[name](gold, columns, rng)
            if sql is not None and normalize_sql(sql).lower() not in seen:
                seen.add(normalize_sql(sql).lower())
                out.append((name, " ".join(sql.split())))
    return out
