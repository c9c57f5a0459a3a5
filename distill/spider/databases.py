"""SQLite databases built from Spider's ``tables.json``: empty ones for exact-set-match, filled ones for execution.

Spider's ``.sqlite`` files are not on PyPI, but its schema file is: every table's original name, its columns with
their types, the primary keys and the foreign keys. From it this module writes

* ``database/<db_id>/<db_id>.sqlite`` — the schema only (what exact-set-match reads: table and column names);
* ``test_suite/<db_id>/<db_id>.sqlite`` and ``<db_id>_<k>.sqlite`` — the same schema filled with deterministic
  generated rows, ``suite_size`` databases per schema. Spider's execution check (``exec_eval.eval_exec_match``) runs
  the gold and the predicted query on *every* ``.sqlite`` in the database's folder and counts a match only when all
  agree — the test-suite evaluation of Zhong et al. (2020), whose suites are likewise generated databases.

How rows are made (seeded by ``seed``, the schema's name and the database's index; the seed is recorded): tables are
filled parents first (foreign keys point at rows that exist: a child's key is drawn from its parent's values), primary
keys are unique (integer keys count up, as real ids do), a few non-key cells are NULL, and the values a gold query
compares a column with (``name = 'France'``, ``age > 30``) are planted in that column often, with their neighbours for
numbers (29, 30, 31), so that filters select some rows in some databases and not in others — a query that only
happens to agree with the gold on empty results cannot pass every database. Short tables of 3 to ``max_rows`` rows keep
each query's check fast.
"""

from __future__ import annotations

import random
import re
import sqlite3
import zlib
from collections import defaultdict
from pathlib import Path

from litgpt_ext.errors import UserError

SQL_TYPES = {"text": "text", "number": "number", "time": "time", "boolean": "boolean", "others": "text"}
_LITERAL = r"('(?:[^']|'')*'|\"[^\"]*\"|-?\d+(?:\.\d+)?)"
_COMPARISON = re.compile(
    r"(?:\w+\.)?(\w+)\s*(?:=|!=|<>|>=|<=|>|<|\bnot\s+like\b|\blike\b)\s*" + _LITERAL, flags=re.IGNORECASE
)
_BETWEEN = re.compile(r"(?:\w+\.)?(\w+)\s+between\s+" + _LITERAL + r"\s+and\s+" + _LITERAL, flags=re.IGNORECASE)
_STRING = re.compile(r"'((?:[^']|'')*)'|\"([^\"]*)\"")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Schema:
    """One ``tables.json`` entry, checked: the tables, their columns with types, the keys."""

    def __init__(self, entry: dict, path: Path, where: str) -> None:
        try:
            self.db_id: str = entry["db_id"]
            self.tables: list[str] = list(entry["table_names_original"])
            names = entry["column_names_original"]
            types = entry["column_types"]
            keys = entry["primary_keys"]
            foreign = entry["foreign_keys"]
        except (KeyError, TypeError) as err:
            raise UserError(f"not a Spider schema entry (missing {err})", path=path, line=where) from None
        if len(names) != len(types):
            raise UserError(f"{len(names)} column names but {len(types)} types", path=path, line=where)
        self.columns: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
        """table index -> ``[(column id, name, type)]`` (column 0 is Spider's ``*``)."""
        for cid, ((table, name), kind) in enumerate(zip(names, types)):
            if table >= 0:
                if table >= len(self.tables):
                    raise UserError(f"column {cid} names table {table} of {len(self.tables)}", path=path, line=where)
                self.columns[table].append((cid, name, SQL_TYPES.get(kind, "text")))
        self.table_of = {cid: t for t, cols in self.columns.items() for cid, _, _ in cols}
        self.primary: dict[int, list[int]] = defaultdict(list)
        for key in keys:  # an int per key column; newer releases group a composite key as a list
            for cid in key if isinstance(key, list) else [key]:
                self.primary[self.table_of[cid]].append(cid)
        self.foreign: dict[int, int] = {}
        """column id -> the column it references."""
        for child, parent in foreign:
            if child in self.table_of and parent in self.table_of:
                self.foreign.setdefault(child, parent)

    def create_statements(self) -> list[str]:
        """``CREATE TABLE`` per table in Spider's style (original names quoted, keys declared)."""
        statements = []
        for t, table in enumerate(self.tables):
            if table.lower().startswith("sqlite_"):
                continue  # SQLite's own (world_1 lists sqlite_sequence, made by AUTOINCREMENT): never created by hand
            cols = self.columns.get(t, [])
            name_of = {cid: name for cid, name, _ in cols}
            parts = [f"{_quote(name)} {kind}" for _, name, kind in cols]
            if self.primary.get(t):
                parts.append(f"PRIMARY KEY ({', '.join(_quote(name_of[c]) for c in self.primary[t])})")
            for cid, _, _ in cols:
                if cid in self.foreign:
                    parent = self.foreign[cid]
                    ptable, pname = self.tables[self.table_of[parent]], self._name(parent)
                    parts.append(f"FOREIGN KEY ({_quote(name_of[cid])}) REFERENCES {_quote(ptable)}({_quote(pname)})")
            statements.append(f"CREATE TABLE {_quote(table)} (\n  " + ",\n  ".join(parts) + "\n)")
        return statements

    def _name(self, cid: int) -> str:
        return next(name for c, name, _ in self.columns[self.table_of[cid]] if c == cid)

    def fill_order(self) -> list[int]:
        """Tables with their parents first (a cycle is broken at the table listed first)."""
        done: list[int] = []
        visiting: set[int] = set()

        def visit(t: int) -> None:
            if t in done or t in visiting:
                return
            visiting.add(t)
            for cid, _, _ in self.columns.get(t, []):
                if cid in self.foreign:
                    visit(self.table_of[self.foreign[cid]])
            visiting.discard(t)
            done.append(t)

        for t in range(len(self.tables)):
            visit(t)
        return done


def read_schemas(path: Path) -> dict[str, Schema]:
    """``{db_id: Schema}`` of a ``tables.json``; a malformed entry is one line naming it."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("file not found", path=path, field="tables") from None
    except ValueError as err:
        raise UserError(f"not JSON ({err})", path=path, field="tables") from None
    if not isinstance(data, list):
        raise UserError("expected a JSON list of schemas (Spider's tables.json)", path=path)
    schemas = {}
    for n, entry in enumerate(data, start=1):
        if not isinstance(entry, dict):
            raise UserError("expected a JSON object", path=path, line=f"record {n}")
        schema = Schema(entry, path, f"record {n}")
        schemas[schema.db_id] = schema
    return schemas


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def planted_values(queries: list[str]) -> tuple[dict[str, list], list[str]]:
    """What the queries compare columns with: ``({column name lower: [values]}, [every string literal])``."""
    by_column: dict[str, list] = defaultdict(list)
    strings: list[str] = []
    for query in queries:
        for column, literal in _COMPARISON.findall(query):
            if literal[0] in "'\"":
                value = literal[1:-1].replace("''", "'").strip("%")
                by_column[column.lower()].append(value)
            else:
                number = _number(float(literal))
                by_column[column.lower()] += [number, number - 1, number + 1]
        for column, low, high in _BETWEEN.findall(query):
            if low[0] not in "'\"" and high[0] not in "'\"":
                lo, hi = float(low), float(high)
                by_column[column.lower()] += [_number(v) for v in (lo - 1, lo, (lo + hi) / 2, hi, hi + 1)]
        strings += [(a or b).replace("''", "'").strip("%") for a, b in _STRING.findall(query)]
    return dict(by_column), sorted(set(strings))


def _word(name: str) -> str:
    """A column's name as a value's stem (``Home Town`` -> ``home_town 3``): readable, and never a planted value."""
    return re.sub(r"\W+", "_", name.lower()).strip("_") or "value"


class _Values:
    """Cell values of one database: generated by type, with the gold queries' values planted."""

    def __init__(self, rng: random.Random, schema: Schema, queries: list[str]) -> None:
        by_name, self.strings = planted_values(queries)
        self.rng = rng
        self.planted = {cid: list(by_name.get(name.lower(), [])) for cols in schema.columns.values()
                        for cid, name, _ in cols}  # fmt: skip
        for child, parent in schema.foreign.items():  # `SourceAirport = 'APG'` needs APG among the airport codes
            self.planted[parent] += self.planted[child]

    def cell(self, cid: int, name: str, kind: str) -> object:
        rng = self.rng
        planted = self.planted[cid]
        if planted and rng.random() < 0.5:
            return rng.choice(planted)
        if rng.random() < 0.05:
            return None
        if kind == "number":
            # small integers mostly: they meet the ids of other tables (joins the schema does not declare)
            return rng.randint(1, 30) if rng.random() < 0.8 else round(rng.uniform(0, 1000), 1)
        if kind == "time":
            return f"{rng.randint(1990, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        if kind == "boolean":
            return rng.choice(["T", "F"])
        if self.strings and rng.random() < 0.15:
            return rng.choice(self.strings)
        return f"{_word(name)} {rng.randint(1, 8)}"

    def key(self, cid: int, name: str, kind: str, row: int) -> object:
        """A primary-key cell: integers count up from 1 (ids), text keys take the planted values first (an airport
        code a query asks for), then the column's word with the row's number."""
        if kind == "number":
            return row + 1
        planted = sorted({str(v) for v in self.planted[cid]})
        return planted[row] if row < len(planted) else f"{_word(name)} {row + 1}"


def fill(conn: sqlite3.Connection, schema: Schema, rng: random.Random, queries: list[str], max_rows: int) -> int:
    """Insert generated rows into every table of ``schema`` (already created in ``conn``); returns the row count."""
    values = _Values(rng, schema, queries)
    rows_of: dict[int, list[dict[int, object]]] = {}
    total = 0
    for t in schema.fill_order():
        cols = schema.columns.get(t, [])
        if not cols or schema.tables[t].lower().startswith("sqlite_"):
            continue
        n = rng.randint(3, max_rows)
        key_cols = schema.primary.get(t, [])
        seen_keys: set[tuple] = set()
        rows: list[dict[int, object]] = []
        for _ in range(n * 4):  # some tries are dropped as duplicate keys
            if len(rows) == n:
                break
            row: dict[int, object] = {}
            for cid, name, kind in cols:
                parent = schema.foreign.get(cid)
                parent_rows = rows_of.get(schema.table_of[parent]) if parent is not None else None
                if parent_rows:
                    row[cid] = rng.choice(parent_rows)[parent]
                elif cid in key_cols:
                    row[cid] = values.key(cid, name, kind, len(rows))
                else:
                    row[cid] = values.cell(cid, name, kind)
            key = tuple(row[c] for c in key_cols)
            if key_cols and (key in seen_keys or any(v is None for v in key)):
                continue
            seen_keys.add(key)
            rows.append(row)
        rows_of[t] = rows
        ids = [cid for cid, _, _ in cols]
        columns = ", ".join(_quote(name) for _, name, _ in cols)
        conn.executemany(
            f"INSERT INTO {_quote(schema.tables[t])} ({columns}) VALUES ({', '.join('?' * len(ids))})",
            [tuple(r[c] for c in ids) for r in rows],
        )
        total += len(rows)
    return total


def build(path: Path, schema: Schema, rng: random.Random | None = None, queries=(), max_rows: int = 0) -> int:
    """Write one database at ``path`` (renamed into place when complete): the schema, filled when ``rng`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        for statement in schema.create_statements():
            conn.execute(statement)
        rows = fill(conn, schema, rng, list(queries), max_rows) if rng is not None else 0
        conn.commit()
    except sqlite3.Error as err:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot build the database: {err}", field=schema.db_id) from None
    conn.close()
    tmp.replace(path)
    return rows


def seed_of(seed: int, db_id: str, index: int) -> int:
    """The seed of one database of the suite: stable across runs and Python versions (no ``hash()``)."""
    return zlib.crc32(f"{seed}:{db_id}:{index}".encode())


def suite_paths(suite_dir: Path, db_id: str, suite_size: int) -> list[Path]:
    folder = Path(suite_dir) / db_id
    return [folder / (f"{db_id}.sqlite" if k == 0 else f"{db_id}_{k}.sqlite") for k in range(suite_size)]
