"""Databases in the Spider/BIRD layout (``<db_dir>/<db_id>/<db_id>.sqlite``) and the schema text models see."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from litgpt_ext.errors import UserError


def db_path(db_dir: Path, db_id: str) -> Path:
    return Path(db_dir) / db_id / f"{db_id}.sqlite"


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro`` URI: SQLite refuses every write to the file)."""
    return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)


def schema_text(path: Path, sample_rows: int = 0) -> str:
    """The database's own ``CREATE`` statements (tables, then views and indexes, in ``sqlite_master`` order), with
    ``sample_rows`` example rows per table as SQL comments."""
    if not Path(path).is_file():
        raise UserError("database not found", path=path)
    conn = connect_ro(path)
    try:
        entries = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
            "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'view' THEN 1 ELSE 2 END, rowid"
        ).fetchall()
        parts = []
        for kind, name, sql in entries:
            text = sql.strip().rstrip(";") + ";"
            if kind == "table" and sample_rows > 0:
                cur = conn.execute(f'SELECT * FROM "{name}" LIMIT {int(sample_rows)}')
                columns = [d[0] for d in cur.description]
                rows = cur.fetchall()
                if rows:
                    shown = "\n".join("  " + ", ".join(map(repr, r)) for r in rows)
                    text += f"\n/* {len(rows)} example row(s) of {name} ({', '.join(columns)}):\n{shown}\n*/"
            parts.append(text)
        return "\n\n".join(parts)
    finally:
        conn.close()
