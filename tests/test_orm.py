"""finetune_orm: each head's loss against its formula, the Yes-token check, saving/loading the head, resume, learning."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from litgpt.tokenizer import Tokenizer

from litgpt_ext.data.batches import orm_collate
from litgpt_ext.errors import UserError
from litgpt_ext.finetune import orm
from litgpt_ext.training.args import EvalArgs, TrainArgs
from litgpt_ext.training.objectives.orm import ORMObjective, group_pairwise_loss, pairwise_loss

TOWNS = ["Ivel", "Orra", "Bask", "Tume", "Lira", "Marn", "Sobe", "Kest"]
GOOD = ["salt", "glass", "wool", "iron"]
BAD = ["fish", "bread", "rope", "wine"]


def _rows_file(path, n=240, seed=0):
    """A rule the label follows: the answer is one of four goods (positive) or one of four others (negative)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        rows.append(
            {
                "id": f"r{i}",
                "question_id": f"q{i // 4}",
                "prompt": f"What does {rng.choice(TOWNS)} sell?",
                "response": rng.choice(GOOD if label else BAD),
                "label": label,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _model(tiny_checkpoint):
    from litgpt.config import Config
    from litgpt.model import GPT

    model = GPT(Config.from_file(tiny_checkpoint / "model_config.yaml"))
    model.load_state_dict(torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True))
    return model.eval()


def _hidden(model, input_ids):
    original = model.lm_head
    model.lm_head = torch.nn.Identity()
    try:
        return model(input_ids)
    finally:
        model.lm_head = original


def _batch(labels=(1, 0, 1)):
    samples = [
        {"input_ids": torch.tensor([1, 40, 41, 42, 43]), "label": labels[0], "group": "a"},
        {"input_ids": torch.tensor([1, 44, 45]), "label": labels[1], "group": "a"},
        {"input_ids": torch.tensor([1, 46, 47, 48]), "label": labels[2], "group": "b"},
    ]
    return orm_collate(samples, pad_id=0)


@pytest.mark.parametrize("head", ["classifier", "scalar", "yes_token"])
def test_each_head_loss_equals_its_formula(tiny_checkpoint, head):
    model = _model(tiny_checkpoint)
    objective = ORMObjective(head, "bce", pos_weight=2.0, yes_id=50, no_id=60)
    objective.prepare_model(model)
    batch = _batch()
    with torch.no_grad():
        loss, metrics = objective.compute(model, batch)
        hidden = _hidden(model, batch["input_ids"])
        last = torch.stack([hidden[i, n - 1] for i, n in enumerate(batch["lengths"].tolist())])
        labels = batch["labels"].float()
        weights = torch.where(labels == 1, 2.0, 1.0)
        if head == "classifier":
            logits = last @ model.orm_head.weight.T
            per_row = -(torch.log_softmax(logits, -1)[torch.arange(3), batch["labels"]])
            scores = torch.softmax(logits, -1)[:, 1]
        elif head == "scalar":
            s = (last @ model.orm_head.weight.T)[:, 0]
            per_row = -(labels * torch.log(torch.sigmoid(s)) + (1 - labels) * torch.log(1 - torch.sigmoid(s)))
            scores = torch.sigmoid(s)
        else:
            full = model.lm_head(last)
            two = full[:, [60, 50]]  # [No, Yes]
            per_row = -(torch.log_softmax(two, -1)[torch.arange(3), batch["labels"]])
            scores = torch.exp(full[:, 50]) / (torch.exp(full[:, 50]) + torch.exp(full[:, 60]))
        expected = (per_row * weights).sum() / weights.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert float(metrics["accuracy"]) == float(((scores > 0.5).long() == batch["labels"]).float().mean())
    out = objective.val_outputs(model, batch)
    torch.testing.assert_close(out["scores"], scores, rtol=1e-5, atol=1e-6)
    assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()


def test_pairwise_loss_on_a_pair_and_within_groups():
    assert float(pairwise_loss(torch.tensor([2.0]), torch.tensor([0.5]))) == pytest.approx(
        -math.log(1 / (1 + math.exp(-1.5)))
    )
    logits = torch.tensor([2.0, 0.5, 1.0, -1.0])
    labels = torch.tensor([1, 0, 1, 0])
    groups = torch.tensor([7, 7, 8, 8])  # pairs only inside a group: (2.0, 0.5) and (1.0, -1.0)
    expected = -(F.logsigmoid(torch.tensor(1.5)) + F.logsigmoid(torch.tensor(2.0))) / 2
    assert group_pairwise_loss(logits, labels, groups) == pytest.approx(float(expected))


def test_yes_token_must_be_one_token(tiny_checkpoint):
    tok = Tokenizer(tiny_checkpoint)
    single = next(w for w in (" the", " sell", " salt", " is") if len(tok.encode(w, bos=False)) == 1)
    assert orm.answer_token_ids(tok, single, " a")[0] == tok.encode(single, bos=False).tolist()[0]
    with pytest.raises(UserError, match=r"yes_token: ' Xqzqxv' is \d+ tokens of this tokenizer, not one"):
        orm.answer_token_ids(tok, " Xqzqxv", " a")
    with pytest.raises(UserError, match="the yes and no answers are the same token"):
        orm.answer_token_ids(tok, single, single)


def _train_args(steps, **kw):
    settings = dict(
        max_steps=steps,
        epochs=None,
        global_batch_size=16,
        micro_batch_size=8,
        lr_warmup_steps=2,
        save_interval=None,
        log_interval=1,
    )
    return TrainArgs(**{**settings, **kw})


def test_classifier_learns_saves_its_head_and_litgpt_reads_the_weights(tiny_checkpoint, tmp_path):
    """Full finetuning, classifier head: val AUROC climbs past 0.85; the head is saved beside a plain checkpoint."""
    from litgpt.config import Config
    from litgpt.model import GPT

    out = tmp_path / "orm"
    orm.setup(
        tiny_checkpoint,
        data=_rows_file(tmp_path / "rows.jsonl"),
        out_dir=out,
        head="classifier",
        mode="full",
        pos_weight="auto",
        precision="32-true",
        train=_train_args(40),
        eval=EvalArgs(interval=20, max_iters=100, initial_validation=True),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 2e-3, "weight_decay": 0.0}},
    )
    val = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if "val_auroc" in r]
    assert val[-1]["val_auroc"] >= 0.85, val
    assert {"val_accuracy", "val_precision", "val_recall", "val_f1", "val_score_pos", "val_score_neg"} <= set(val[-1])
    assert (out / "eval" / "roc-step-000040.png").is_file() and (out / "eval" / "scores-step-000040.png").is_file()
    assert json.loads((out / "best" / "best.json").read_text())["mode"] == "max"
    final = out / "final"
    config = json.loads((final / "orm_config.json").read_text())
    assert config["head"] == "classifier" and config["num_labels"] == 2
    head = torch.load(final / "orm_head.pth", weights_only=True)
    assert head["weight"].shape[0] == 2
    state = torch.load(final / "lit_model.pth", weights_only=True)
    assert not any(k.startswith("orm_head") for k in state)
    GPT(Config.from_file(final / "model_config.yaml")).load_state_dict(state)  # strict: a plain litgpt checkpoint

    # best-of-4 with the trained model: candidate 0 is always wrong, one of the others right
    from litgpt_ext.reward.rerank import orm_rerank
    from litgpt_ext.reward.score import orm_score

    rng = random.Random(7)
    labels = []
    for q in range(20):
        right = rng.randint(1, 3)
        for k in range(4):
            good = k == right
            labels.append(
                {
                    "id": f"t{q}#{k}",
                    "question_id": f"t{q}",
                    "prompt": f"What does {rng.choice(TOWNS)} sell?",
                    "response": rng.choice(GOOD if good else BAD),
                    "label": int(good),
                    "exec_score": 1.0,
                    "fingerprint": f"{q}-{k}",
                }
            )
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    orm_score(final, input=tmp_path / "eval.jsonl", output=tmp_path / "scored.jsonl", batch_size=16)
    orm_rerank(scored=tmp_path / "scored.jsonl", labels=tmp_path / "eval.jsonl", output=tmp_path / "rerank.json")
    accuracy = json.loads((tmp_path / "rerank.json").read_text())["execution_accuracy"]
    assert accuracy["first"] == 0.0 and accuracy["orm"] >= 0.8 and accuracy["oracle"] == 1.0, accuracy


def test_lora_scalar_pairwise_and_resume(tiny_checkpoint, tmp_path):
    common = dict(
        data=_rows_file(tmp_path / "rows.jsonl", n=96),
        head="scalar",
        loss="pairwise",
        mode="lora",
        lora_r=4,
        precision="32-true",
        eval=EvalArgs(interval=1000, max_iters=4, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
    )
    orm.setup(tiny_checkpoint, out_dir=tmp_path / "a", train=_train_args(4, save_interval=2), **common)
    orm.setup(tiny_checkpoint, out_dir=tmp_path / "b", train=_train_args(4, save_interval=2), **common)
    step2 = tmp_path / "b" / "step-000002"
    assert (step2 / "orm_head.pth").is_file() and (step2 / "lit_model.pth.lora").is_file()
    import shutil

    shutil.rmtree(tmp_path / "b" / "step-000004")
    orm.setup(tiny_checkpoint, out_dir=tmp_path / "b", train=_train_args(4, save_interval=2), resume=step2, **common)

    def losses(d):
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 1e-5 for s in a)
    assert json.loads((tmp_path / "a" / "final" / "orm_config.json").read_text())["loss"] == "pairwise"


def test_bad_flags_and_rows(tiny_checkpoint, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "p", "response": "r", "label": 1}\n{"prompt": "p", "response": "r", "label": 3}\n')
    with pytest.raises(UserError, match=r"rows.jsonl:line 2: label: expected 0/1, got 3"):
        orm.setup(tiny_checkpoint, data=rows, out_dir=tmp_path / "o", precision="32-true")
    with pytest.raises(UserError, match="--loss pairwise needs --head scalar"):
        orm.setup(tiny_checkpoint, data=rows, head="classifier", loss="pairwise")
    with pytest.raises(UserError, match="pos_weight: must be > 0 or auto"):
        orm.setup(tiny_checkpoint, data=rows, pos_weight=0.0)


# -- scoring, reranking, export -------------------------------------------------------------------------------------------
def _orm_checkpoint(factory_dir, tmp_path, head="classifier", model="llama"):
    """A reward-model checkpoint without training: the tiny model plus a random head (scores are what they are)."""
    import shutil

    from litgpt_ext.training.objectives.orm import CONFIG_FILE, HEAD_FILE

    ckpt = tmp_path / f"orm-{model}-{head}"
    shutil.copytree(factory_dir, ckpt)
    objective = ORMObjective(head, "bce", 1.0, 50, 60, None)
    torch.manual_seed(0)
    if head != "yes_token":
        from litgpt.config import Config

        n_embd = Config.from_file(ckpt / "model_config.yaml").n_embd
        torch.save({"weight": torch.randn(2 if head == "classifier" else 1, n_embd) * 0.5}, ckpt / HEAD_FILE)
    (ckpt / CONFIG_FILE).write_text(json.dumps(objective.config()))
    return ckpt


def _candidates(path, n=30):
    rng = random.Random(3)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(GOOD + BAD + TOWNS) for _ in range(rng.randint(1, 12)))
        rows.append({"id": f"q{i // 3}#{i % 3}", "question_id": f"q{i // 3}", "question": "What?", "sql": words})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("head", ["classifier", "scalar", "yes_token"])
def test_orm_score_batched_equals_one_at_a_time_and_resumes(tiny_checkpoint, tmp_path, head):
    from litgpt_ext.reward.score import orm_score

    ckpt = _orm_checkpoint(tiny_checkpoint, tmp_path, head)
    rows = _candidates(tmp_path / "c.jsonl")
    orm_score(ckpt, input=rows, output=tmp_path / "batched.jsonl", batch_size=8, window=16)
    orm_score(ckpt, input=rows, output=tmp_path / "single.jsonl", batch_size=1)
    batched = {r["id"]: r for r in map(json.loads, (tmp_path / "batched.jsonl").read_text().splitlines())}
    single = {r["id"]: r for r in map(json.loads, (tmp_path / "single.jsonl").read_text().splitlines())}
    assert batched.keys() == single.keys() and len(batched) == 30
    for rid, row in batched.items():
        assert abs(row["score"] - single[rid]["score"]) < 1e-5 and 0 <= row["score"] <= 1
        assert row["sql"] == single[rid]["sql"] and row["question_id"] == single[rid]["question_id"]
    # resume: a truncated output is completed, nothing scored twice; shards cover the input once
    lines = (tmp_path / "batched.jsonl").read_text().splitlines()
    (tmp_path / "batched.jsonl").write_text("\n".join(lines[:10]) + "\n")
    orm_score(ckpt, input=rows, output=tmp_path / "batched.jsonl", batch_size=8)
    again = [json.loads(line) for line in (tmp_path / "batched.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in again) == sorted(batched)
    for shard in ("0/2", "1/2"):
        orm_score(ckpt, input=rows, output=tmp_path / "sharded.jsonl", batch_size=4, shard=shard)
    from litgpt_ext.generate.merge import generate_merge

    generate_merge(inputs=sorted(tmp_path.glob("sharded.shard-*.jsonl")), output=tmp_path / "merged.jsonl")
    merged = [json.loads(line) for line in (tmp_path / "merged.jsonl").read_text().splitlines()]
    assert [r["id"] for r in merged] == [json.loads(line)["id"] for line in rows.read_text().splitlines()]


def test_rerank_picks_and_accuracy(tmp_path):
    from litgpt_ext.reward.rerank import orm_rerank

    labels = [
        # q1: first wrong; two candidates share a (wrong) result, the ORM prefers the right one
        {"id": "q1#0", "question_id": "q1", "label": 0, "exec_score": 1.0, "fingerprint": "A"},
        {"id": "q1#1", "question_id": "q1", "label": 0, "exec_score": 1.0, "fingerprint": "A"},
        {"id": "q1#2", "question_id": "q1", "label": 1, "exec_score": 1.0, "fingerprint": "B"},
        # q2: the highest score fails to execute, so the tier puts the running candidate first
        {"id": "q2#0", "question_id": "q2", "label": 1, "exec_score": 1.0, "fingerprint": "C"},
        {"id": "q2#1", "question_id": "q2", "label": 0, "exec_score": 0.0, "fingerprint": None},
        # q3: nothing right
        {"id": "q3#0", "question_id": "q3", "label": 0, "exec_score": 0.5, "fingerprint": "D"},
    ]
    scores = {"q1#0": 0.2, "q1#1": 0.3, "q1#2": 0.9, "q2#0": 0.1, "q2#1": 0.99, "q3#0": 0.5}
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    (tmp_path / "scored.jsonl").write_text("".join(json.dumps({"id": k, "score": v}) + "\n" for k, v in scores.items()))
    orm_rerank(scored=tmp_path / "scored.jsonl", labels=tmp_path / "labels.jsonl", output=tmp_path / "rerank.json")
    report = json.loads((tmp_path / "rerank.json").read_text())
    acc = report["execution_accuracy"]
    assert acc == pytest.approx({"first": 1 / 3, "self_consistency": 1 / 3, "orm": 2 / 3, "oracle": 2 / 3})
    assert report["picks"]["q1"]["self_consistency"] == "q1#0" and report["picks"]["q2"]["orm"] == "q2#0"


@pytest.mark.parametrize("model", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("head", ["classifier", "scalar"])
def test_export_sequence_classification_matches_our_logits(tiny_factory, tmp_path, model, head):
    from transformers import AutoModelForSequenceClassification

    from litgpt_ext.export.command import export_hf
    from litgpt_ext.reward.model import load_orm

    ckpt = _orm_checkpoint(tiny_factory(model=model), tmp_path, head, model)
    export_hf(ckpt, out_dir=tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"][0].endswith("ForSequenceClassification") and config["num_labels"] == (
        2 if head == "classifier" else 1
    )
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    ours, objective = load_orm(ckpt, torch.device("cpu"), torch.float32)
    tok = Tokenizer(ckpt)
    texts = ["Question: What does Ivel sell?\nSQL: SELECT salt", "short", "Question: a b c d e f g h i j k l m n o"]
    samples = [{"input_ids": tok.encode(t, bos=None), "label": 0, "group": ""} for t in texts]
    batch = orm_collate(samples, pad_id=config["pad_token_id"])
    with torch.no_grad():
        mine = objective.logits(ours, batch)
        theirs = hf(
            input_ids=batch["input_ids"],
            attention_mask=(torch.arange(batch["input_ids"].size(1)) < batch["lengths"][:, None]).long(),
        ).logits
    torch.testing.assert_close(theirs, mine, rtol=0, atol=1e-4)


@pytest.mark.parametrize("model", ["llama", "gpt-neox", "phi", "mistral"])
def test_scoring_fast_path_equals_the_plain_forward(tiny_factory, tmp_path, model):
    """orm_score's forward (the last block's MLP on the last token only) == the training path's full forward."""
    from litgpt_ext.reward.model import load_orm, score_rows
    from litgpt_ext.training.objectives.orm import scores_from_logits

    for head in ("classifier", "yes_token"):
        ckpt = _orm_checkpoint(tiny_factory(model=model), tmp_path, head, model)
        gpt, objective = load_orm(ckpt, torch.device("cpu"), torch.float32)
        batch = _batch()
        with torch.no_grad():
            plain = scores_from_logits(objective.head, objective.logits(gpt, batch))
        torch.testing.assert_close(score_rows(gpt, objective, batch), plain, rtol=1e-5, atol=1e-6)
