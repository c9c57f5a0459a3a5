"""Text-to-SQL data: extraction, mutations, the read-only sandbox, labelling rules, versions, resume, the Hub."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from distill.sql.candidates import distill_sql_candidates
from distill.sql.extract import extract_sql
from distill.sql.label import distill_sql_label
from distill.sql.results import canonical, digests
from distill.sql.sandbox import Sandbox
from litgpt_ext.errors import UserError

sys.path.insert(0, str(REPO / "artifacts" / "sql_fixture"))
from build_fixture import build  # noqa: E402


@pytest.fixture(scope="module")
def fixture(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("sql") / "fixture")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _candidates(path: Path, rows: dict[str, list[str]]) -> Path:
    path.write_text("".join(json.dumps({"id": k, "generations": v}) + "\n" for k, v in rows.items()))
    return path


def _db(tmp_path: Path, name: str = "t", sql: str = "") -> tuple[Path, Path]:
    """A one-database db_dir made from SQL text."""
    db_dir = tmp_path / "dbs"
    (db_dir / name).mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_dir / name / f"{name}.sqlite")
    conn.executescript(
        sql
        or """
        CREATE TABLE t (id INTEGER, name TEXT, score REAL);
        INSERT INTO t VALUES (1, 'a', 0.1), (2, 'b', 0.2), (3, 'c', 0.30000000000000004), (4, 'a', 1.5);
        """
    )
    conn.commit()
    conn.close()
    return db_dir, db_dir / name / f"{name}.sqlite"


def _questions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- extraction --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "sql"),
    [
        ("Here:\n```sql\nSELECT 1;\n```\nor better\n```sql\nSELECT 2\n```", "SELECT 2"),  # the last fenced block
        ("```SQL\nselect name from t\n", "select name from t"),  # unclosed fence of a cut-off generation
        ("The answer is SELECT id FROM t WHERE x = 1; hope it helps", "SELECT id FROM t WHERE x = 1; hope it helps"),
        ("with q as (select 1) select * from q```", "with q as (select 1) select * from q"),
        ("I cannot answer that.", ""),
        ("", ""),
    ],
)
def test_extract_sql(text, sql):
    assert extract_sql(text) == sql


# -- mutations ----------------------------------------------------------------------------------------------------------
def test_each_mutation_rule_applies_where_it_should():
    import random

    from distill.sql.mutate import RULES, mutate

    columns = {"students": ["id", "name", "year", "major_id"], "majors": ["id", "name", "dept"]}
    gold = (
        "SELECT m.name, COUNT(s.id) FROM majors AS m JOIN students AS s ON s.major_id = m.id "
        "WHERE s.year = 4 AND m.dept = 'Science' GROUP BY m.id ORDER BY COUNT(s.id) DESC LIMIT 3"
    )
    made = {name: rule(gold, columns, random.Random(0)) for name, rule in RULES.items()}
    assert all(sql and sql != gold for sql in made.values()), made
    assert "LIMIT 2" in made["limit_off_by_one"] or "LIMIT 4" in made["limit_off_by_one"]
    assert "ORDER BY COUNT(s.id) ASC" in made["swap_order"]
    assert "WHERE NOT (s.year = 4 AND m.dept = 'Science')" in made["negate_condition"]
    assert made["drop_condition"].count("AND") == 0 and "WHERE" in made["drop_condition"]
    aggregates = r"\b(COUNT|SUM|AVG|MIN|MAX)\("
    assert re.findall(aggregates, made["wrong_aggregate"]) != re.findall(aggregates, gold)
    assert "ON s.major_id = m." in made["wrong_join_key"] and "ON s.major_id = m.id" not in made["wrong_join_key"]
    # subqueries and string literals are left alone; rules that do not apply return None
    nested = "SELECT name FROM students WHERE id NOT IN (SELECT student_id FROM enrollments WHERE grade > 5)"
    assert RULES["swap_order"](nested, columns, random.Random(0)) is None
    assert RULES["negate_condition"](nested, columns, random.Random(0)).endswith("WHERE grade > 5))")
    assert mutate(gold, columns, 4, "q1") == mutate(gold, columns, 4, "q1")  # reproducible per question id
    assert len({sql for _, sql in mutate(gold, columns, 7, "q1")}) == 7


# -- the sandbox ---------------------------------------------------------------------------------------------------------
ATTACKS = {
    "drop": "DROP TABLE orders",
    "delete": "DELETE FROM orders",
    "cte_delete": "WITH x AS (SELECT 1) DELETE FROM orders",
    "attach_create": "ATTACH DATABASE '{evil}' AS evil; CREATE TABLE evil.t(x)",
    "vacuum_into": "VACUUM INTO '{evil}'",
    "pragma": "PRAGMA writable_schema = 1",
    "pragma_function": "SELECT * FROM pragma_table_info('orders')",
    "load_extension": "SELECT load_extension('/nonexistent.so')",
    "endless_cte": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
    "cross_join": "SELECT count(*) FROM order_items a, order_items b, order_items c, order_items d",
}


def test_sandbox_blocks_writes_and_runaways_and_leaves_the_file_unchanged(fixture, tmp_path):
    db = fixture / "database" / "shop" / "shop.sqlite"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    evil = tmp_path / "evil.db"
    tasks = [(k, str(db), sql.format(evil=evil)) for k, sql in ATTACKS.items()] + [
        (k, str(db), "SELECT COUNT(*) FROM orders") for k in ("ok",)
    ]
    t0 = time.monotonic()
    with Sandbox(workers=2, timeout_s=1.5) as sandbox:
        results = dict(sandbox.run(tasks))
    elapsed = time.monotonic() - t0
    assert results["ok"] == {"ok": True, "rows": [[120]], "truncated": False, "seconds": results["ok"]["seconds"]}
    for name in ATTACKS:
        assert not results[name]["ok"] and results[name]["error"], name
    assert results["endless_cte"]["error"] == "timeout" and results["cross_join"]["error"] == "timeout"
    assert "not authorized" in results["cte_delete"]["error"] and "not authorized" in results["load_extension"]["error"]
    assert elapsed < 2 * 1.5 + 3  # the two runaways ran side by side, each stopped at its timeout
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not evil.exists()


def test_sandbox_kills_a_worker_that_overruns(tmp_path):
    """A worker stuck outside SQLite's VM (here: opening a FIFO that nobody writes) cannot be interrupted by the
    progress handler; it is killed at timeout + grace and replaced, and the run goes on."""
    db_dir, db = _db(tmp_path)
    fifo = tmp_path / "stuck.sqlite"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with Sandbox(workers=1, timeout_s=0.5, grace_s=0.5) as sandbox:
        out = dict(sandbox.run([("stuck", str(fifo), "SELECT 1"), ("next", str(db), "SELECT COUNT(*) FROM t")]))
    assert out["stuck"] == {"ok": False, "error": "timeout (worker killed)", "seconds": 0.5}
    assert out["next"]["rows"] == [[4]]
    assert time.monotonic() - t0 < 10


# -- labelling rules -----------------------------------------------------------------------------------------------------
def test_result_canonical_form_and_tolerance():
    assert canonical(3) == canonical(3.0) and canonical(0.1 + 0.2) == canonical(0.3) and canonical(-0.0) == 0.0
    a, b = digests([[1, "x"], [2, "y"]]), digests([[2, "y"], [1.0, "x"]])
    assert a["multiset"] == b["multiset"] and a["ordered"] != b["ordered"]
    assert digests([[1], [1]])["set"] == digests([[1]])["set"]
    assert digests([[1], [1]])["multiset"] != digests([[1]])["multiset"]


def test_label_rules_ordered_multiset_float_errors_and_gold_failures(tmp_path):
    db_dir, _ = _db(tmp_path)
    questions = _questions(
        tmp_path / "q.jsonl",
        [
            {"id": "sum", "db_id": "t", "question": "total score?", "gold_sql": "SELECT SUM(score) FROM t"},
            {"id": "ord", "db_id": "t", "question": "ids by score", "gold_sql": "SELECT id FROM t ORDER BY score DESC"},
            {"id": "bag", "db_id": "t", "question": "names", "gold_sql": "SELECT name FROM t"},
            {"id": "bad", "db_id": "t", "question": "broken gold", "gold_sql": "SELECT nope FROM t"},
        ],
    )
    candidates = _candidates(
        tmp_path / "c.jsonl",
        {
            "sum": [
                "```sql\nSELECT 0.1 + 0.2 + 0.3 + 1.5 - 0.0000000000000001\n```",  # equal within the tolerance
                "SELECT SUM(id) FROM t",  # runs, different: negative
                "SELECT SUM(score) FROM missing_table",  # error: excluded (v2), kept in eval
                "no sql here",
            ],
            "ord": ["SELECT id FROM t ORDER BY score ASC", "SELECT id FROM t ORDER BY score DESC, id"],
            "bag": ["SELECT name FROM t ORDER BY name", "SELECT DISTINCT name FROM t", "SELECT name FROM t WHERE 0"],
            "bad": ["SELECT 1"],
        },
    )
    out = tmp_path / "v2"
    distill_sql_label(questions=questions, db_dir=db_dir, candidates=[candidates], out_dir=out, version="v2", workers=2)
    rows = {(r["question_id"], r["sql"]): r for r in _jsonl(out / "train.jsonl")}
    assert rows[("sum", "SELECT 0.1 + 0.2 + 0.3 + 1.5 - 0.0000000000000001")]["label"] == 1
    assert rows[("sum", "SELECT SUM(id) FROM t")]["label"] == 0
    assert rows[("ord", "SELECT id FROM t ORDER BY score ASC")]["label"] == 0  # gold ORDER BY: order matters
    assert rows[("ord", "SELECT id FROM t ORDER BY score DESC, id")]["label"] == 1
    assert rows[("bag", "SELECT name FROM t ORDER BY name")]["label"] == 1  # multiset: order ignored
    assert rows[("bag", "SELECT DISTINCT name FROM t")]["label"] == 0  # duplicates matter in a multiset
    empty = rows[("bag", "SELECT name FROM t WHERE 0")]
    assert empty["label"] == 0 and empty["exec_score"] == 0.5 and empty["data"] == []
    assert rows[("sum", "SELECT SUM(id) FROM t")]["exec_score"] == 1.0
    assert all(r["schema"].startswith("CREATE TABLE t") for r in rows.values())
    reasons = {(q["reason"], q.get("question_id")) for q in _jsonl(out / "quarantine.jsonl")}
    assert {("exec_error", "sum"), ("no_sql", "sum"), ("gold_failed", "bad")} <= reasons
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dropped"]["gold_failed"] == 1 and summary["positives"] == 3

    # --compare multiset forces order-insensitivity; --include_errors keeps failures as negatives
    distill_sql_label(
        questions=questions, db_dir=db_dir, candidates=[candidates], out_dir=tmp_path / "ms", version="v2",
        compare="multiset", include_errors=True, workers=1,
    )  # fmt: skip
    rows = {(r["question_id"], r["sql"]): r for r in _jsonl(tmp_path / "ms" / "train.jsonl")}
    assert rows[("ord", "SELECT id FROM t ORDER BY score ASC")]["label"] == 1
    failed = rows[("sum", "SELECT SUM(score) FROM missing_table")]
    assert failed["label"] == 0 and failed["exec_score"] == 0.0
    assert "exec_error" not in json.loads((tmp_path / "ms" / "summary.json").read_text())["dropped"]


def test_versions_v1_balance_and_eval_fingerprints(fixture, tmp_path):
    prompts, mutations = tmp_path / "prompts.jsonl", tmp_path / "mutations.jsonl"
    questions, db_dir = fixture / "questions.jsonl", fixture / "database"
    distill_sql_candidates(questions=questions, db_dir=db_dir, output=prompts, mutate=5, mutations_output=mutations)
    first = _jsonl(prompts)[0]
    assert "CREATE TABLE majors" in first["prompt"] and "How many students are there?" in first["prompt"]
    evidence = [p for p in _jsonl(prompts) if p["id"] == "flights-19"][0]["prompt"]
    assert "How many long-haul flights are there? long-haul refers to distance > 1500" in evidence
    assert all(m["generations"][0] == q["gold_sql"] for m, q in zip(_jsonl(mutations), _jsonl(questions)))
    cache = tmp_path / "exec_cache.jsonl"
    common = dict(questions=questions, db_dir=db_dir, candidates=[mutations], cache=cache, workers=2)
    distill_sql_label(out_dir=tmp_path / "v1", version="v1", **common)
    v1 = _jsonl(tmp_path / "v1" / "train.jsonl")
    per_q: dict[str, list[int]] = {}
    for r in v1:
        per_q.setdefault(r["question_id"], []).append(r["label"])
    assert len(per_q) >= 30
    assert all(labels.count(1) == labels.count(0) >= 1 for labels in per_q.values())  # balanced, both labels
    distill_sql_label(out_dir=tmp_path / "v1b", version="v1", **common)  # seeded: the same rows again
    assert _jsonl(tmp_path / "v1b" / "train.jsonl") == v1
    assert json.loads((tmp_path / "v1b" / "summary.json").read_text())["executions"]["executed"] == 0
    distill_sql_label(out_dir=tmp_path / "eval", version="eval", split="test", **common)
    ev = _jsonl(tmp_path / "eval" / "test.jsonl")
    assert len(ev) > len(v1) and all("fingerprint" in r for r in ev)
    golds = [r for r in ev if r["label"] == 1]
    assert all(r["fingerprint"] for r in golds)


def test_bad_input_is_located(fixture, tmp_path):
    q = _questions(tmp_path / "q.jsonl", [{"id": "x", "db_id": "nowhere", "question": "?", "gold_sql": "SELECT 1"}])
    with pytest.raises(UserError, match=r"q.jsonl:1: db_id: database not found"):
        distill_sql_label(questions=q, db_dir=fixture / "database", candidates=[q], out_dir=tmp_path / "o")
    q = _questions(tmp_path / "q.jsonl", [{"id": "x", "db_id": "shop", "question": "?"}])
    with pytest.raises(UserError, match=r"q.jsonl:1: gold_sql: missing"):
        distill_sql_label(questions=q, db_dir=fixture / "database", candidates=[q], out_dir=tmp_path / "o")
    with pytest.raises(UserError, match="timeout_s: must be > 0"):
        distill_sql_label(questions=q, db_dir=fixture / "database", candidates=[q], timeout_s=0)


def test_kill_9_then_rerun_executes_nothing_twice(fixture, tmp_path):
    """Slow candidates (each sleeps ~0.2 s inside SQLite) are labelled by a subprocess that is killed mid-run; the
    rerun executes only what the cache lacks."""
    questions, db_dir = fixture / "questions.jsonl", fixture / "database"
    slow = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < {}) SELECT COUNT(*) FROM r"
    gens = {q["id"]: [slow.format(300_000 + i)] for i, q in enumerate(_jsonl(questions))}
    candidates = _candidates(tmp_path / "c.jsonl", gens)
    out = tmp_path / "out"
    args = [
        sys.executable, "-m", "litgpt_ext", "distill_sql_label", "--questions", str(questions), "--db_dir", str(db_dir),
        "--candidates", f"[{candidates}]", "--out_dir", str(out), "--version", "v2", "--workers", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = out / "exec_cache.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and (not cache.exists() or cache.read_text().count("\n") < 70):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len({r["key"] for r in _jsonl(cache)})
    assert 60 <= done_before < 120, done_before
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["executions"]["cached"] == done_before
    assert summary["executions"]["executed"] == 120 - done_before
    keys = [r["key"] for r in _jsonl(cache)]
    assert len(keys) == len(set(keys)) == 120  # nothing executed twice


def test_hub_round_trip_without_network(fixture, tmp_path, monkeypatch):

    questions, db_dir = fixture / "questions.jsonl", fixture / "database"
    mutations = tmp_path / "m.jsonl"
    distill_sql_candidates(
        questions=questions, db_dir=db_dir, output=tmp_path / "p.jsonl", mutate=3, mutations_output=mutations
    )
    remote = tmp_path / "remote"
    calls = []

    class FakeApi:
        def __init__(self, token, endpoint=None):
            calls.append(("init", token))

        def create_repo(self, **kw):
            calls.append(("create_repo", kw))

        def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
            import shutil

            shutil.copytree(folder_path, remote / repo_id)
            return f"https://hub.example/datasets/{repo_id}/commit/1"

    def fake_snapshot_download(repo_id, repo_type, local_dir, token=None):
        import shutil

        assert repo_type == "dataset"
        shutil.copytree(remote / repo_id, local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    distill_sql_label(
        questions=questions, db_dir=db_dir, candidates=[mutations], out_dir=tmp_path / "out", version="v2",
        source="mutations", push_to_hub="me", workers=1,
    )  # fmt: skip
    repo = "me/dataset_orm_mutations_train_v2"
    assert calls[1] == ("create_repo", {"repo_id": repo, "repo_type": "dataset", "private": True, "exist_ok": True})
    card = (remote / repo / "README.md").read_text()
    assert "hf_secret_token" not in card + (remote / repo / "summary.json").read_text()
    import yaml

    meta = yaml.safe_load(card.split("---")[1])
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/train.jsonl"}]
    # the real datasets loader reads the card's config from the uploaded folder
    import datasets  # a test extra, installed torch-safely

    loaded = datasets.load_dataset(str(remote / repo))
    assert loaded["train"].num_rows == len(_jsonl(tmp_path / "out" / "train.jsonl"))
    distill_sql_label(from_hub=repo, out_dir=tmp_path / "pulled")
    assert (tmp_path / "pulled" / "train.jsonl").read_text() == (tmp_path / "out" / "train.jsonl").read_text()
