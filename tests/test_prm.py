"""Process reward models: step tokenization, losses against their formulas, SQL step labels (rule-made and
Monte-Carlo), BIRD/Spider files as published, prm_score, rerank aggregates, TokenClassification export, learning."""

from __future__ import annotations

import json
import math
import sqlite3
import sys

import pytest
import torch
from litgpt.tokenizer import Tokenizer

from conftest import REPO
from distill.sql.steps import assemble, sql_steps, stage_sql
from litgpt_ext.data.batches import prm_collate
from litgpt_ext.data.encode import batch_encode
from litgpt_ext.data.prm import PrmData, encode_steps
from litgpt_ext.errors import UserError
from litgpt_ext.training.objectives.prm import PRMObjective

sys.path.insert(0, str(REPO / "artifacts" / "sql_fixture"))
from build_fixture import build  # noqa: E402


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sql_fixture(tmp_path_factory):
    return build(tmp_path_factory.mktemp("prm_sql") / "fixture")


# -- steps and tokens -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("separator", ["\n", "\n\n### Step:", " ки\n"])
def test_step_positions_are_the_last_token_of_each_step(tiny_checkpoint, separator):
    tok = Tokenizer(tiny_checkpoint)
    prompt, steps = "Question: how many?\nSQL steps:\n", ["FROM students", "WHERE year > 2", "SELECT COUNT(*)"]
    (encoded,) = encode_steps(tok, [(prompt, steps)], separator, None)
    sep = batch_encode(tok, [separator], bos=False)[0]
    assert len(sep) > (1 if separator != "\n" else 0)  # the multi-token separators really are several tokens
    expected, ends = batch_encode(tok, [prompt], bos=None)[0], []
    for k, step in enumerate(steps):
        expected += batch_encode(tok, [step], bos=False)[0]
        ends.append(len(expected) - 1)
        if k < len(steps) - 1:
            expected += sep
    assert encoded.input_ids == expected and encoded.positions == ends
    assert encoded.input_ids[-1] == expected[ends[-1]]  # no separator after the last step
    assert not tok.use_bos or encoded.input_ids[:1] == [tok.bos_id]
    # a length limit cuts the prompt's start first, then the last steps
    (cut,) = encode_steps(tok, [(prompt, steps)], separator, len(expected) - 3)
    assert len(cut.input_ids) <= len(expected) - 3 and cut.dropped == 0 and len(cut.positions) == 3
    (tiny,) = encode_steps(tok, [(prompt, steps)], separator, ends[1] - len(expected) + len(expected) // 2)
    assert tiny.dropped >= 1 and all(p < len(tiny.input_ids) for p in tiny.positions)


def test_sql_steps_clause_stages_and_cte_chain():
    steps = sql_steps("SELECT name, COUNT(*) FROM t JOIN u ON t.id = u.t_id WHERE x > 1 GROUP BY name HAVING COUNT(*) > 2 ORDER BY name LIMIT 3")  # fmt: skip
    assert [(s.kind, s.text) for s in steps] == [
        ("from", "FROM t JOIN u ON t.id = u.t_id"),
        ("where", "WHERE x > 1"),
        ("group", "GROUP BY name HAVING COUNT(*) > 2"),
        ("select", "SELECT name, COUNT(*)"),
        ("order", "ORDER BY name LIMIT 3"),
    ]
    assert stage_sql(steps, 2) == "SELECT * FROM t JOIN u ON t.id = u.t_id WHERE x > 1"
    assert assemble(steps).startswith("SELECT name, COUNT(*) FROM t JOIN")
    cte = sql_steps("WITH a AS (SELECT * FROM t WHERE x > 1), b AS (SELECT name FROM a) SELECT COUNT(*) FROM b")
    assert [s.kind for s in cte] == ["cte", "cte", "final"] and cte[1].text == "b AS (SELECT name FROM a)"
    assert stage_sql(cte, 1) == "WITH a AS (SELECT * FROM t WHERE x > 1) SELECT * FROM a"
    assert [s.kind for s in sql_steps("SELECT a FROM t UNION SELECT b FROM u")] == ["query"]
    # the subquery's WHERE is not a top-level clause
    nested = sql_steps("SELECT name FROM t WHERE id IN (SELECT t_id FROM u WHERE y = 'a b')")
    assert [s.kind for s in nested] == ["from", "where", "select"]


# -- losses ------------------------------------------------------------------------------------------------------
def _samples():
    return [
        {"id": "a", "input_ids": torch.tensor([1, 40, 41, 42, 43, 44]), "positions": torch.tensor([2, 5]),
         "step_labels": torch.tensor([1.0, 0.0])},
        {"id": "b", "input_ids": torch.tensor([1, 45, 46]), "positions": torch.tensor([2]),
         "step_labels": torch.tensor([1.0])},
    ]  # fmt: skip


@pytest.mark.parametrize("head", ["classifier", "scalar", "yes_token"])
def test_each_head_loss_equals_its_formula(tiny_checkpoint, head):
    from litgpt.config import Config
    from litgpt.model import GPT

    model = GPT(Config.from_file(tiny_checkpoint / "model_config.yaml"))
    model.load_state_dict(torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True))
    model.eval()
    objective = PRMObjective(head, 2.0, 50, 60)
    torch.manual_seed(0)
    objective.prepare_model(model)
    batch = prm_collate(_samples())
    assert batch["flat"].tolist() == [2, 5, 6 + 2] and batch["step_labels"].tolist() == [1, 0, 1]
    with torch.no_grad():
        loss, metrics = objective.compute(model, batch)
        original = model.lm_head
        model.lm_head = torch.nn.Identity()
        hidden = model(batch["input_ids"]).reshape(-1, model.config.n_embd)[batch["flat"]]
        model.lm_head = original
    with torch.no_grad():
        logits = model.lm_head(hidden)[:, [60, 50]] if head == "yes_token" else model.orm_head(hidden)
    labels, weights = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([2.0, 1.0, 2.0])
    if head == "scalar":
        p = torch.sigmoid(logits[:, 0])
        per = -(labels * p.log() + (1 - labels) * (1 - p).log())
    else:
        per = -torch.log_softmax(logits, -1)[torch.arange(3), labels.long()]
    assert loss.item() == pytest.approx(float((per * weights).sum() / weights.sum()), abs=1e-5)
    # soft labels are target probabilities: 0.25 of the way from the 0-loss to the 1-loss, linearly
    soft = prm_collate([{**_samples()[1], "step_labels": torch.tensor([0.25])}])
    one, zero = (prm_collate([{**_samples()[1], "step_labels": torch.tensor([v])}]) for v in (1.0, 0.0))
    unit = PRMObjective(head, 1.0, 50, 60)
    if head != "yes_token":
        unit.prepare_model(model)
        model.orm_head.load_state_dict(dict(model.orm_head.state_dict()))
    with torch.no_grad():
        l_soft, l_one, l_zero = (unit.compute(model, b)[0].item() for b in (soft, one, zero))
    assert l_soft == pytest.approx(0.25 * l_one + 0.75 * l_zero, abs=1e-5)
    assert 0 <= metrics["step_accuracy"] <= 1


def test_prm_data_located_errors_and_split(tiny_checkpoint, tmp_path):
    tok = Tokenizer(tiny_checkpoint)
    good = {"prompt": "Q", "completions": ["a", "b"], "labels": [True, False], "question_id": "q"}

    def setup(rows, **kw):
        data = PrmData(_write(tmp_path / "rows.jsonl", rows), **kw)
        data.connect(tok, batch_size=2)
        data.setup()
        return data

    cases = [
        ({**good, "labels": [True]}, "rows.jsonl:line 2: labels: 1 labels for 2 steps"),
        ({**good, "completions": ["a", " "]}, "rows.jsonl:line 2: completions: step 2 is empty"),
        ({**good, "labels": [True, "yes"]}, "rows.jsonl:line 2: labels: label 2 is 'yes', expected a boolean"),
        ({**good, "labels": [True, 0.5]}, "fractions need --data.soft_labels true"),
        ({**good, "prompt": ["x"]}, "rows.jsonl:line 2: prompt: expected a string, got list"),
        ({**good, "completions": "a\nb"}, "rows.jsonl:line 2: completions: expected a non-empty list"),
    ]
    for bad, message in cases:
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace("*", r"\*")):
            setup([good, bad])
    soft = setup([{**good, "labels": [1, 0.5], "question_id": f"q{i}"} for i in range(40)], soft_labels=True)
    assert soft.train_dataset[0]["step_labels"].tolist() == [1.0, 0.5]
    groups_train = {s["group"] for s in soft.train_dataset}
    assert groups_train and not groups_train & {s["group"] for s in soft.val_dataset}


# -- SQL step labels ------------------------------------------------------------------------------------------------
def test_mutation_labels_make_the_changed_clause_the_first_negative_step(sql_fixture, tmp_path):
    from distill.sql.candidates import distill_sql_candidates
    from distill.sql.label import distill_sql_label
    from distill.sql.steps import first_difference

    q, db = sql_fixture / "questions.jsonl", sql_fixture / "database"
    distill_sql_candidates(questions=q, db_dir=db, output=tmp_path / "p.jsonl", template="{question}", mutate=6,
                           mutations_output=tmp_path / "m.jsonl")  # fmt: skip
    distill_sql_label(questions=q, db_dir=db, candidates=[tmp_path / "m.jsonl"], out_dir=tmp_path / "prm",
                      version="v2", target="prm")  # fmt: skip
    rows = _jsonl(tmp_path / "prm" / "train.jsonl")
    gold = {r["id"]: r["gold_sql"] for r in _jsonl(q)}
    rules = {(m["id"], " ".join(s.split())): r for m in _jsonl(tmp_path / "m.jsonl")
             for r, s in zip(m["rules"], m["generations"])}  # fmt: skip
    checked = set()
    for row in rows:
        assert len(row["labels"]) == len(row["completions"]) and row["prompt"].startswith("Question: ")
        if row["label"] == 1:
            assert all(row["labels"]) and row["label_source"] == "outcome"
            continue
        assert row["label_source"] == "mutation"
        changed = first_difference(sql_steps(row["sql"]), sql_steps(gold[row["question_id"]]))
        first_negative = row["labels"].index(False)
        assert first_negative == min(changed, len(row["labels"]) - 1)
        assert all(row["labels"][:first_negative]) and not any(row["labels"][first_negative:])
        rule = rules[(row["question_id"], " ".join(row["sql"].split()))]
        kind = sql_steps(row["sql"])[first_negative].kind
        if rule in ("negate_condition", "wrong_column", "swap_order"):
            assert kind == {"negate_condition": "where", "wrong_column": "select", "swap_order": "order"}[rule]
            checked.add(rule)
    assert checked == {"negate_condition", "wrong_column", "swap_order"}
    # sampled candidates that are wrong have no step labels without rollouts: quarantined, located
    sample = _write(tmp_path / "s.jsonl", [{"id": "school-01", "generations": ["SELECT name FROM majors"]}])
    distill_sql_label(questions=q, db_dir=db, candidates=[sample], out_dir=tmp_path / "prm2", version="v2",
                      target="prm")  # fmt: skip
    quarantine = _jsonl(tmp_path / "prm2" / "quarantine.jsonl")
    assert any(r["reason"] == "no_step_labels" for r in quarantine)
    with pytest.raises(UserError, match="--rollouts needs --student"):
        distill_sql_label(questions=q, db_dir=db, candidates=[sample], out_dir=tmp_path / "x", target="prm",
                          rollouts=2)  # fmt: skip


def _mc_db(tmp_path):
    db_dir = tmp_path / "dbs"
    (db_dir / "m").mkdir(parents=True)
    conn = sqlite3.connect(db_dir / "m" / "m.sqlite")
    conn.executescript(
        """
        CREATE TABLE t (id INTEGER, name TEXT, score REAL);
        INSERT INTO t VALUES (1, 'a', 0.1), (2, 'b', 0.2), (3, 'c', 0.3);
        CREATE TABLE u (id INTEGER, name TEXT, score REAL);
        INSERT INTO u VALUES (1, 'x', 0.5), (2, 'y', 0.9);
        """
    )
    conn.commit()
    conn.close()
    return db_dir


@pytest.mark.parametrize("mc", ["hard", "soft"])
def test_monte_carlo_labels_on_a_known_case(tiny_checkpoint, tmp_path, mc):
    """Rollouts come from the student's cached samples (the cache is what a rerun reads: here written by hand, so
    the answer is known): a prefix that some completion takes to the gold is positive, one that none can is 0."""
    from distill.sql.label import distill_sql_label
    from distill.sql.step_labels import rollout_file

    db_dir = _mc_db(tmp_path)
    q = _write(tmp_path / "q.jsonl", [{"id": "q1", "db_id": "m", "question": "names above 0.15",
                                       "gold_sql": "SELECT name FROM t WHERE score > 0.15"}])  # fmt: skip
    prompts = _write(tmp_path / "p.jsonl", [{"id": "q1", "prompt": "names above 0.15"}])
    candidates = _write(tmp_path / "c.jsonl", [{"id": "q1", "generations": [
        "SELECT name FROM t WHERE score > 0.25",  # right table, wrong filter
        "SELECT name FROM u WHERE score > 0.15",  # wrong table: no completion reaches the gold
        "SELECT name FROM t WHERE score > 0.15",  # correct
    ]}])  # fmt: skip
    settings = {"max_new_tokens": 16, "temperature": 0.8, "prompt_style": "default", "seed": 42}
    out = tmp_path / "out"
    out.mkdir()
    samples = ["```sql\nSELECT name FROM t WHERE score > 0.15\n```", "SELECT id FROM t", "no sql here"]
    _write(rollout_file(out, tiny_checkpoint, 3, settings), [{"id": "q1", "generations": samples}])
    distill_sql_label(questions=q, db_dir=db_dir, candidates=[candidates], out_dir=out, version="v2", target="prm",
                      rollouts=3, mc=mc, student=tiny_checkpoint, prompts=prompts, rollout_max_new_tokens=16,
                      rollout_prompt_style="default")  # fmt: skip
    rows = {r["sql"]: r for r in _jsonl(out / "train.jsonl")}
    wrong_filter = rows["SELECT name FROM t WHERE score > 0.25"]
    wrong_table = rows["SELECT name FROM u WHERE score > 0.15"]
    assert wrong_filter["completions"] == ["FROM t", "WHERE score > 0.25", "SELECT name"]
    if mc == "hard":
        assert wrong_filter["labels"] == [True, False, False]
        assert wrong_table["labels"] == [False, False, False]
        assert rows["SELECT name FROM t WHERE score > 0.15"]["labels"] == [True, True, True]
    else:  # 1 of the 3 rollouts from "FROM t" reaches the gold
        assert wrong_filter["labels"] == [pytest.approx(1 / 3, abs=1e-4), 0.0, 0.0]
        assert wrong_table["labels"] == [0.0, 0.0, 0.0]
    assert wrong_filter["label_source"] == "mc"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["executions"]["rollouts"]["questions"] == 1


def test_bird_and_spider_files_as_published(tmp_path):
    from distill.sql.candidates import distill_sql_candidates
    from distill.sql.label import distill_sql_label

    db_dir = _mc_db(tmp_path)
    bird = [{"question_id": 7, "db_id": "m", "question": "How many rows?", "evidence": "rows are in t",
             "SQL": "SELECT COUNT(*) FROM t", "difficulty": "simple"}]  # fmt: skip
    spider = [{"db_id": "m", "question": "How many rows?", "query": "SELECT COUNT(*) FROM t", "query_toks": []},
              {"db_id": "m", "question": "Names?", "query": "SELECT name FROM t", "query_toks": []}]  # fmt: skip
    (tmp_path / "bird_train.json").write_text(json.dumps(bird, indent=2))
    (tmp_path / "train_spider.json").write_text(json.dumps(spider))
    for name, ids in (("bird_train.json", ["7"]), ("train_spider.json", ["0", "1"])):
        prompts = tmp_path / f"{name}.prompts.jsonl"
        distill_sql_candidates(questions=tmp_path / name, db_dir=db_dir, output=prompts, template="{question}",
                               mutate=2, mutations_output=tmp_path / f"{name}.m.jsonl")  # fmt: skip
        assert [r["id"] for r in _jsonl(prompts)] == ids
        for target in ("orm", "prm"):
            distill_sql_label(questions=tmp_path / name, db_dir=db_dir, candidates=[tmp_path / f"{name}.m.jsonl"],
                              out_dir=tmp_path / f"{name}-{target}", version="v2", target=target)  # fmt: skip
            rows = _jsonl(tmp_path / f"{name}-{target}" / "train.jsonl")
            assert rows and {r["question_id"] for r in rows} == set(ids)
    assert _jsonl(tmp_path / "bird_train.json.prompts.jsonl")[0]["prompt"] == "How many rows? rows are in t"
    (tmp_path / "bad.json").write_text(json.dumps([{"db_id": "m", "question": "x", "SQL": ""}]))
    with pytest.raises(UserError, match=r"bad.json:record 1: question_id: missing"):
        distill_sql_candidates(questions=tmp_path / "bad.json", db_dir=db_dir, output=tmp_path / "o.jsonl")
    (tmp_path / "bad.json").write_text(json.dumps([{"db_id": "nope", "question": "x", "query": "SELECT 1"}]))
    with pytest.raises(UserError, match=r"bad.json:record 1: db_id: database not found"):
        distill_sql_candidates(questions=tmp_path / "bad.json", db_dir=db_dir, output=tmp_path / "o.jsonl")


# -- scoring, rerank, export ----------------------------------------------------------------------------------------
def _prm_checkpoint(factory_dir, tmp_path, head="classifier", name="llama"):
    """A PRM checkpoint without training: the tiny model plus a random head."""
    import shutil

    from litgpt.config import Config

    from litgpt_ext.training.objectives.orm import CONFIG_FILE, HEAD_FILE

    ckpt = tmp_path / f"prm-{name}-{head}"
    shutil.copytree(factory_dir, ckpt)
    torch.manual_seed(0)
    n_embd = Config.from_file(ckpt / "model_config.yaml").n_embd
    torch.save({"weight": torch.randn(2 if head == "classifier" else 1, n_embd) * 0.5}, ckpt / HEAD_FILE)
    (ckpt / CONFIG_FILE).write_text(json.dumps(PRMObjective(head, 1.0, None, None, "\n").config()))
    return ckpt


def _step_rows(n=24):
    import random

    rng = random.Random(5)
    words = ["FROM t", "WHERE x > 1", "SELECT name", "ORDER BY name", "GROUP BY a", "SELECT COUNT(*)"]
    return [{"id": f"q{i // 3}#{i % 3}", "question_id": f"q{i // 3}", "prompt": f"Question {i}?\nSQL steps:\n",
             "completions": rng.sample(words, rng.randint(1, 4))} for i in range(n)]  # fmt: skip


def test_prm_score_batched_equals_one_at_a_time_resumes_and_refuses_an_orm(tiny_checkpoint, tmp_path):
    from litgpt_ext.reward.score import orm_score, prm_score

    ckpt = _prm_checkpoint(tiny_checkpoint, tmp_path)
    rows = _write(tmp_path / "c.jsonl", [*_step_rows(), {"id": "bad", "prompt": "Q", "completions": []}])
    prm_score(ckpt, input=rows, output=tmp_path / "batched.jsonl", batch_size=8, window=16, aggregate="prod")
    prm_score(ckpt, input=rows, output=tmp_path / "single.jsonl", batch_size=1, aggregate="prod")
    batched = {r["id"]: r for r in _jsonl(tmp_path / "batched.jsonl")}
    single = {r["id"]: r for r in _jsonl(tmp_path / "single.jsonl")}
    assert "completions: expected a non-empty list" in batched.pop("bad")["error"]
    single.pop("bad")
    assert batched.keys() == single.keys() and len(batched) == 24
    for rid, row in batched.items():
        assert len(row["step_scores"]) == len(row["completions"]) and row["aggregate"] == "prod"
        assert max(abs(a - b) for a, b in zip(row["step_scores"], single[rid]["step_scores"])) < 1e-5
        assert row["score"] == pytest.approx(math.prod(row["step_scores"]), abs=1e-5)
    lines = (tmp_path / "batched.jsonl").read_text().splitlines()
    (tmp_path / "batched.jsonl").write_text("\n".join(lines[:5]) + "\n")
    prm_score(ckpt, input=rows, output=tmp_path / "batched.jsonl", batch_size=8)
    assert sorted(r["id"] for r in _jsonl(tmp_path / "batched.jsonl")) == sorted([*batched, "bad"])
    with pytest.raises(UserError, match="a process reward model: use prm_score"):
        orm_score(ckpt, input=rows, output=tmp_path / "o.jsonl")


def test_rerank_reports_every_aggregate_beside_the_orm(tmp_path):
    from litgpt_ext.reward.rerank import orm_rerank

    labels = [
        {"id": "q1#0", "question_id": "q1", "label": 0, "exec_score": 1.0, "fingerprint": "A"},
        {"id": "q1#1", "question_id": "q1", "label": 1, "exec_score": 1.0, "fingerprint": "B"},
        {"id": "q2#0", "question_id": "q2", "label": 1, "exec_score": 1.0, "fingerprint": "C"},
        {"id": "q2#1", "question_id": "q2", "label": 0, "exec_score": 1.0, "fingerprint": "D"},
    ]
    steps = {  # min picks q1#1 and q2#0; prod: q1#1 and q2#1; last: q1#0 and q2#1; mean: q1#0 and q2#1
        "q1#0": [0.2, 0.9, 0.95], "q1#1": [0.6, 0.6, 0.7],
        "q2#0": [0.5, 0.5, 0.5, 0.5], "q2#1": [0.95, 0.9, 0.4, 0.9],
    }  # fmt: skip
    _write(tmp_path / "labels.jsonl", labels)
    _write(tmp_path / "prm.jsonl", [{"id": k, "step_scores": v, "score": min(v)} for k, v in steps.items()])
    _write(tmp_path / "orm.jsonl", [{"id": k, "score": s} for k, s in zip(steps, [0.9, 0.1, 0.9, 0.1])])
    orm_rerank(scored=[tmp_path / "orm.jsonl", tmp_path / "prm.jsonl"], labels=tmp_path / "labels.jsonl",
               output=tmp_path / "r.json")  # fmt: skip
    acc = json.loads((tmp_path / "r.json").read_text())["execution_accuracy"]
    assert acc == pytest.approx({"first": 0.5, "self_consistency": 0.5, "orm": 0.5, "prm_min": 1.0, "prm_prod": 0.5,
                                 "prm_last": 0.0, "prm_mean": 0.0, "oracle": 1.0})  # fmt: skip
    orm_rerank(scored=tmp_path / "prm.jsonl", labels=tmp_path / "labels.jsonl", output=tmp_path / "r2.json")
    assert "orm" not in json.loads((tmp_path / "r2.json").read_text())["execution_accuracy"]


@pytest.mark.parametrize("model", ["llama", "qwen2", "mistral"])
def test_export_token_classification_matches_our_step_logits(tiny_factory, tmp_path, model):
    from transformers import AutoModelForTokenClassification

    from litgpt_ext.export.command import export_hf
    from litgpt_ext.reward.model import load_orm

    ckpt = _prm_checkpoint(tiny_factory(model=model), tmp_path, "classifier", model)
    export_hf(ckpt, out_dir=tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"][0].endswith("ForTokenClassification") and config["num_labels"] == 2
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "process reward model" in card and "last token" in card and "AutoModelForTokenClassification" in card
    hf = AutoModelForTokenClassification.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ours, objective = load_orm(ckpt, torch.device("cpu"), torch.float32, "process")
    tok = Tokenizer(ckpt)
    rows = [(r["prompt"], r["completions"]) for r in _step_rows(3)]
    samples = [{"id": str(i), "input_ids": torch.tensor(t.input_ids), "positions": torch.tensor(t.positions),
                "step_labels": torch.zeros(len(t.positions))}
               for i, t in enumerate(encode_steps(tok, rows, "\n", None))]  # fmt: skip
    batch = prm_collate(samples, pad_id=config["pad_token_id"])
    with torch.no_grad():
        mine = objective.logits(ours, batch)
        mask = (torch.arange(batch["input_ids"].size(1)) < batch["lengths"][:, None]).long()
        theirs = hf(input_ids=batch["input_ids"], attention_mask=mask).logits.reshape(-1, 2)[batch["flat"]]
    torch.testing.assert_close(theirs, mine, rtol=0, atol=1e-4)


def test_prm_learns_the_sql_fixture_and_reranks_held_out_questions(tiny_checkpoint, sql_fixture, tmp_path):
    """On the fixture's mutation rows: step AUROC and first-error accuracy climb well past the untrained model's, and
    on the held-out questions' candidates PRM best-of-N (min) is at least as good as an ORM trained alike."""
    from distill.sql.candidates import distill_sql_candidates
    from distill.sql.label import distill_sql_label
    from litgpt_ext.data.split import in_val
    from litgpt_ext.finetune import orm, prm
    from litgpt_ext.reward.rerank import orm_rerank
    from litgpt_ext.reward.score import orm_score, prm_score
    from litgpt_ext.training.args import EvalArgs, TrainArgs

    q, db = sql_fixture / "questions.jsonl", sql_fixture / "database"
    distill_sql_candidates(questions=q, db_dir=db, output=tmp_path / "p.jsonl", template="{question}", mutate=6,
                           mutations_output=tmp_path / "m.jsonl")  # fmt: skip
    for target in ("orm", "prm"):
        distill_sql_label(questions=q, db_dir=db, candidates=[tmp_path / "m.jsonl"], out_dir=tmp_path / target,
                          version="v2", target=target, cache=tmp_path / "exec.jsonl")  # fmt: skip
        distill_sql_label(questions=q, db_dir=db, candidates=[tmp_path / "m.jsonl"], out_dir=tmp_path / target,
                          version="eval", split="test", target=target, cache=tmp_path / "exec.jsonl")  # fmt: skip
    common = dict(
        mode="full", precision="32-true", pos_weight="auto",
        train=TrainArgs(global_batch_size=16, micro_batch_size=16, max_steps=60, epochs=None, lr_warmup_steps=5,
                        log_interval=1, save_interval=1000, max_seq_length=None),
        eval=EvalArgs(interval=60, max_iters=100, initial_validation=True),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 2e-3, "weight_decay": 0.0}},
    )  # fmt: skip
    from litgpt_ext.data.orm import OrmData

    prm_data = PrmData(tmp_path / "prm" / "train.jsonl", val_split_fraction=0.3)
    prm.setup(tiny_checkpoint, data=prm_data, out_dir=tmp_path / "prm_model", **common)
    orm_data = OrmData(tmp_path / "orm" / "train.jsonl", val_split_fraction=0.3)
    orm.setup(tiny_checkpoint, data=orm_data, out_dir=tmp_path / "orm_model", **common)
    val = [r for r in _jsonl(tmp_path / "prm_model" / "metrics.jsonl") if "val_step_auroc" in r]
    first, last = val[0], val[-1]
    assert last["val_step_auroc"] >= first["val_step_auroc"] + 0.15, val
    assert last["val_first_error_accuracy"] >= first["val_first_error_accuracy"] + 0.2, val
    assert (tmp_path / "prm_model" / "eval" / "roc-step-000060.png").is_file()
    # rerank the candidates of the questions both models held out (the same seeded split by question_id)
    held_out = [r for r in _jsonl(tmp_path / "prm" / "test.jsonl") if in_val(r["question_id"], 42, 0.3)]
    assert len({r["question_id"] for r in held_out}) >= 4
    keep = {r["id"] for r in held_out}
    for target, score in (("prm", prm_score), ("orm", orm_score)):
        rows = [r for r in _jsonl(tmp_path / target / "test.jsonl") if r["id"] in keep]
        _write(tmp_path / f"{target}_held.jsonl", rows)
        score(tmp_path / f"{target}_model" / "final", input=tmp_path / f"{target}_held.jsonl",
              output=tmp_path / f"{target}_scored.jsonl")  # fmt: skip
    orm_rerank(scored=[tmp_path / "orm_scored.jsonl", tmp_path / "prm_scored.jsonl"],
               labels=tmp_path / "orm_held.jsonl", output=tmp_path / "rerank.json")  # fmt: skip
    acc = json.loads((tmp_path / "rerank.json").read_text())["execution_accuracy"]
    assert acc["prm_min"] >= acc["orm"], acc


def test_lora_prm_as_a_peft_adapter_scores_as_prm_score(tiny_checkpoint, tmp_path):
    """A LoRA PRM exported with --format peft: the head (with its zero bias) travels as modules_to_save, task type
    TOKEN_CLS, and the adapter on the exported base gives prm_score's step scores at each step's last token."""
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification

    from litgpt_ext.export.command import export_hf
    from litgpt_ext.finetune import prm
    from litgpt_ext.reward.score import prm_score
    from litgpt_ext.training.args import EvalArgs, TrainArgs

    rows = [{**r, "labels": [k % 2 == 0 for k in range(len(r["completions"]))]} for r in _step_rows(24)]
    data = _write(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "prm"
    prm.setup(
        tiny_checkpoint, data=data, out_dir=out, mode="lora", lora_r=4, precision="32-true",
        train=TrainArgs(max_steps=3, epochs=None, global_batch_size=8, micro_batch_size=8, save_interval=None,
                        lr_warmup_steps=0),
        eval=EvalArgs(interval=1000, max_iters=1, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 5e-2}},
    )  # fmt: skip
    export_hf(tiny_checkpoint, out_dir=tmp_path / "base")
    export_hf(out / "final", out_dir=tmp_path / "adapter", format="peft", base_model=str(tmp_path / "base"))
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "TOKEN_CLS" and adapter["modules_to_save"] == ["score"]
    base = AutoModelForTokenClassification.from_pretrained(tmp_path / "base", num_labels=2, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    prm_score(out / "final", input=data, output=tmp_path / "scored.jsonl", batch_size=4)
    tok = Tokenizer(out / "final")
    for row in _jsonl(tmp_path / "scored.jsonl")[:6]:
        (tokens,) = encode_steps(tok, [(row["prompt"], row["completions"])], "\n", None)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tokens.input_ids])).logits
        theirs = logits.softmax(-1)[0, tokens.positions, 1].tolist()
        assert max(abs(a - b) for a, b in zip(theirs, row["step_scores"])) < 1e-4


def test_cli_bad_row_is_one_line_and_a_typed_separator_is_unescaped(tiny_checkpoint, tmp_path):
    from conftest import run_cli
    from litgpt_ext.finetune.prm import unescape

    assert unescape(r"\n\n### Step:") == "\n\n### Step:" and unescape("\n") == "\n"
    rows = _write(tmp_path / "rows.jsonl", [{"prompt": "Q", "completions": ["a", "b"], "labels": [True, False]},
                                            {"prompt": "Q", "completions": ["a", "b"], "labels": [True]}])  # fmt: skip
    result = run_cli("finetune_prm", tiny_checkpoint, "--data", rows, "--step_separator", r"\n",
                     "--out_dir", tmp_path / "o", "--precision", "32-true")  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("rows.jsonl:line 2: labels: 1 labels for 2 steps")
    assert not (tmp_path / "o" / "final").exists()
