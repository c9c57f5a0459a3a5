"""distill_convert (parse, dedupe, split, quarantine) and distill_tokenize (exactly what training would do)."""

from __future__ import annotations

import json
import random

import pytest
from litgpt.prompts import PromptStyle
from litgpt.tokenizer import Tokenizer

from conftest import DEMO, run_cli
from distill.convert import distill_convert, parse_output
from distill.tokenize import distill_tokenize
from litgpt_ext.data.encode import batch_encode
from litgpt_ext.data.pretokenized import load_pretokenized
from litgpt_ext.errors import UserError


def _cache_line(key, ids, contents, status="ok", reason=None):
    return (
        json.dumps(
            {
                "key": key,
                "ids": ids,
                "model": "m",
                "status": status,
                "reason": reason,
                "choices": [{"content": c, "finish_reason": "stop"} for c in contents],
            }
        )
        + "\n"
    )


def test_parsers():
    assert parse_output("  hello\n", "raw") == ["hello"]
    assert parse_output("1. alpha\n- beta\n\n* gamma\n(4) delta", "lines") == ["alpha", "beta", "gamma", "delta"]
    assert parse_output('{"items": ["a", "b"], "x": 1}', "json:items") == ["a", "b"]
    with pytest.raises(ValueError):
        parse_output("not json", "json:items")


def test_convert_parses_dedupes_splits_and_quarantines(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"id": f"r{i}", "title": f"T{i}", "body": "b"}) + "\n" for i in range(6)))
    responses = tmp_path / "responses.jsonl"
    responses.write_text(
        _cache_line("k0", ["r0"], ["q one\nq two\nQ  one"])  # a near-duplicate line
        + _cache_line("k1", ["r1"], ["q three"])
        + _cache_line("k2", ["r2"], [""], status="failed", reason="length")
        + _cache_line("k3", ["r3"], ["x\n"])
        + json.dumps({"key": "k1", "alias_ids": ["r4"]})
        + "\n"  # r4 had the same prompt as r1
    )
    out = tmp_path / "data"
    distill_convert(
        records=records,
        responses=responses,
        out_dir=out,
        instruction="Queries for {title}",
        parser="lines",
        min_chars=2,
        val_fraction=0.0,
    )
    train = json.loads((out / "train.json").read_text())
    assert [(r["id"], r["output"]) for r in train] == [
        ("r0", "q one"),
        ("r0", "q two"),
        ("r1", "q three"),
        ("r4", "q three"),
    ]
    assert train[0]["instruction"] == "Queries for T0"
    reasons = {(q["id"], q["reason"]) for q in map(json.loads, (out / "quarantine.jsonl").read_text().splitlines())}
    assert reasons == {("r0", "duplicate"), ("r2", "teacher_length"), ("r3", "too_short"), ("r5", "no_response")}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples"] == 4 and sum(summary["dropped"].values()) == 4


def test_split_is_by_record_and_stable(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"id": f"r{i}", "title": f"T{i}"}) + "\n" for i in range(200)))
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(_cache_line(f"k{i}", [f"r{i}"], [f"a{i}\nb{i}"]) for i in range(200)))
    distill_convert(
        records=records,
        responses=responses,
        out_dir=tmp_path / "d",
        instruction="{title}",
        parser="lines",
        val_fraction=0.2,
    )
    train = json.loads((tmp_path / "d" / "train.json").read_text())
    val = json.loads((tmp_path / "d" / "val.json").read_text())
    assert not ({r["id"] for r in train} & {r["id"] for r in val})  # no record on both sides
    assert 20 <= len({r["id"] for r in val}) <= 60


@pytest.mark.parametrize("backend", ["bpe", "sentencepiece"])
def test_batch_encode_equals_litgpt_one_at_a_time(tiny_factory, backend):
    tok = Tokenizer(tiny_factory(tokenizer=backend))
    rng = random.Random(0)
    words = (DEMO / "corpus.txt").read_text().split()
    texts = [" ".join(rng.choices(words, k=rng.randint(0, 30))) for _ in range(300)] + ["", " ", "é ü 中文 🙂"]
    for bos in (None, False):
        assert batch_encode(tok, texts, bos=bos) == [tok.encode(t, bos=bos).tolist() for t in texts]


def _litgpt_reference(tok, style, row, max_len=None):
    """What litgpt's tokenizer gives one record at a time (answer-only labels, EOS appended)."""
    prompt = tok.encode(style.apply(prompt=row["instruction"], input=row["input"])).tolist()
    response = tok.encode(row["output"], bos=False).tolist() + [tok.eos_id]
    return prompt + response, [-100] * len(prompt) + response


@pytest.mark.parametrize("backend", ["bpe", "sentencepiece"])
def test_tokenize_is_exactly_litgpt_per_record_including_tricky_records(tiny_factory, tmp_path, backend):
    ckpt = tiny_factory(tokenizer=backend)
    tok = Tokenizer(ckpt)
    style = PromptStyle.from_name("alpaca")
    rng = random.Random(1)
    words = (DEMO / "corpus.txt").read_text().split()
    tricky = [
        " leading space",
        "trailing space ",
        "ends with newline\n",
        "\nstarts with newline",
        "tab\tinside",
        "it's 's 've",
        "unicode café — 中文 🙂",
        "question?",
        "numbers 12345",
        "</s> inside",
        "x",
    ]
    rows = []
    for i in range(600):  # tricky rows appear after the 256 records the runtime cross-check covers
        text = " ".join(rng.choices(words, k=rng.randint(1, 12)))
        if i > 300 and i % 7 == 0:
            text = tricky[i % len(tricky)]
        rows.append(
            {
                "id": f"r{i}",
                "instruction": text,
                "input": rng.choice(["", "", text, " context"]),
                "output": rng.choice([text, "An answer.", "multi\nline"]),
            }
        )
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text(json.dumps(rows))
    distill_tokenize(data_dir=data, checkpoint_dir=ckpt, out_dir=tmp_path / "pt", prompt_style="alpaca")
    packed = load_pretokenized(tmp_path / "pt" / "train.pt")
    assert len(packed) == 600 and packed.ids[:2] == ["r0", "r1"]
    for i, row in enumerate(rows):
        ids, labels = _litgpt_reference(tok, style, row)
        assert packed[i]["input_ids"].tolist() == ids, (i, row)
        assert packed[i]["labels"].tolist() == labels, (i, row)


def test_tokenize_truncates_reports_and_trains(tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {
            "id": f"r{i}",
            "instruction": f"What does town {i} sell? " * (1 + i % 5),
            "input": "",
            "output": f"Town {i} sells salt.",
        }
        for i in range(40)
    ]
    (data / "train.json").write_text(json.dumps(rows[:32]))
    (data / "val.json").write_text(json.dumps(rows[32:]))
    distill_tokenize(data_dir=data, checkpoint_dir=tiny_checkpoint, out_dir=tmp_path / "pt", max_seq_length=48)
    packed = load_pretokenized(tmp_path / "pt" / "train.pt")
    tok = Tokenizer(tiny_checkpoint)
    for i in range(32):
        sample = packed[i]
        assert len(sample["input_ids"]) <= 48 and sample["input_ids"][-1].item() == tok.eos_id  # answer kept whole
        assert sample["input_ids"][0].item() == tok.bos_id
    stats = json.loads((tmp_path / "pt" / "tokenize_stats.json").read_text())
    assert stats["train"]["examples"] == 32 and stats["train"]["max"] <= 48 and stats["train"]["prompt_truncated"] > 0
    result = run_cli(
        "finetune_sft",
        tiny_checkpoint,
        "--data",
        tmp_path / "pt",
        "--out_dir",
        tmp_path / "out",
        "--precision",
        "32-true",
        "--train.max_steps",
        "2",
        "--train.global_batch_size",
        "4",
        "--train.micro_batch_size",
        "2",
        "--eval.interval",
        "100",
        "--eval.max_iters",
        "1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Alpaca" in (tmp_path / "out" / "final" / "prompt_style.yaml").read_text()


def test_convert_refuses_damaged_responses_and_zero_examples(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text('{"id": "1", "title": "t", "body": "b"}\n{"id": "2", "title": "t", "body": "b"}\n')
    good = '{"key": "a", "ids": ["1"], "status": "ok", "choices": [{"content": "query one"}]}\n'
    responses = tmp_path / "responses.jsonl"
    responses.write_text(good + "not json at all\n" + good.replace('"a"', '"b"').replace('"1"', '"2"'))
    args = dict(records=records, responses=responses, out_dir=tmp_path / "out", instruction="{title}")
    with pytest.raises(UserError, match=r"responses.jsonl:2: invalid JSON"):
        distill_convert(**args)
    failed = '{"key": "a", "ids": ["1", "2"], "status": "failed", "reason": "length", "choices": []}\n'
    responses.write_text(failed)
    with pytest.raises(UserError, match=r"no examples: every record was dropped \(teacher_length 2\)"):
        distill_convert(**args)
    assert not (tmp_path / "out").exists()
