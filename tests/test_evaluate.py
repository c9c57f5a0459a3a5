"""evaluate_generations: metric values on hand-computed cases, every row accounted for, references joined by id,
the files it writes, and located errors for bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest

from conftest import run_cli
from litgpt_ext.errors import UserError
from litgpt_ext.evaluate import metrics as m
from litgpt_ext.evaluate.command import evaluate_generations


def test_corpus_bleu_sums_ngram_counts_over_the_corpus():
    """Two sentences counted by hand: n-gram matches 11/13, 8/11, 6/9, 4/7, equal lengths (no brevity penalty).
    Corpus BLEU is the geometric mean of those summed precisions, not the mean of sentence BLEUs."""
    preds = ["the cat sat on the mat", "a dog ran in the park today"]
    refs = [["the cat sat on the mat"], ["a dog ran in a big park"]]
    by_hand = 100 * math.prod([11 / 13, 8 / 11, 6 / 9, 4 / 7]) ** 0.25
    assert m.corpus_bleu(preds, refs) == pytest.approx(by_hand, abs=1e-4)  # 69.583
    second = 100 * math.prod([5 / 7, 3 / 6, 2 / 5, 1 / 4]) ** 0.25
    assert by_hand != pytest.approx((100 + second) / 2, abs=1)
    # brevity penalty: a 3-token hypothesis of a 6-token reference, all n-grams correct -> exp(1 - 6/3)
    assert m.corpus_bleu(["the cat sat"], [["the cat sat on the mat"]]) == pytest.approx(0.0)  # no 4-gram
    assert m.corpus_bleu(["the cat sat on"], [["the cat sat on the mat today"]]) == pytest.approx(
        100 * math.exp(1 - 7 / 4), abs=1e-4
    )


def test_rouge_exact_match_and_items_by_hand():
    # "mat the cat sat on" vs "the cat lay on a mat": unigrams 4 shared (P 4/5, R 4/6); bigram "the cat" (1/4, 1/5);
    # longest common subsequence "the cat on" (3/5, 3/6)
    f1 = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    scores = m.rouge("mat the cat sat on", ["the cat lay on a mat"])
    assert scores["rouge1"] == pytest.approx(f1(4 / 5, 4 / 6), abs=1e-4)
    assert scores["rouge2"] == pytest.approx(f1(1 / 4, 1 / 5), abs=1e-4)
    assert scores["rougeL"] == pytest.approx(f1(3 / 5, 3 / 6), abs=1e-4)
    assert m.rouge("mat the cat sat on", ["no overlap", "mat the cat sat on"])["rougeL"] == 1.0  # best reference

    assert m.exact_match("The roofs in Ivel are red!", ["roofs in  ivel are red"])
    assert not m.exact_match("The roofs in Ivel are blue.", ["The roofs in Ivel are red."])

    c = m.item_counts("1. Ivel salt\n- where is ivel\n\nivel river towns", ["ivel salt\nWhere is Ivel?\nivel market"])
    assert (c.predicted, c.reference, c.matched) == (3, 3, 2)
    assert c.precision == c.recall == pytest.approx(2 / 3) and c.f1 == pytest.approx(2 / 3)
    assert m.item_counts("", ["a b"]).f1 == 0.0 and m.item_counts("", [""]).f1 == 1.0


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_row_is_counted_and_the_files_are_written(tmp_path, capsys):
    """A Q/A split's generations with an error record and an empty generation: both count as empty answers (they
    pull the means down), nothing is dropped, and rows.csv / metrics.json / rougeL.png are written."""
    gens = _write_jsonl(
        tmp_path / "test.jsonl",
        [
            {
                "id": "test[1]",
                "Answer": "Ivel sells salt.",
                "generations": [" Ivel sells salt."],
                "generated_tokens": [4],
            },
            {"id": "test[2]", "Answer": "The river Exe.", "generations": ["the river exe"], "finish_reasons": ["stop"]},
            {"id": "test[3]", "Answer": "About 900 people.", "generations": [""], "finish_reasons": ["stop"]},
            {"id": "test[4]", "Answer": "Red.", "error": "qa.json:test[4]: prompt: 900 tokens, but ..."},
        ],
    )
    summary = evaluate_generations(input=gens, output_dir=tmp_path / "eval")
    assert (summary["rows"], summary["scored"], summary["ok"], summary["empty"], summary["error"]) == (4, 4, 2, 1, 1)
    assert summary["exact_match"] == 0.5
    assert summary["rougeL"] == pytest.approx((1.0 + 1.0 + 0 + 0) / 4)
    assert "4 rows scored (1 empty, 1 error)" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "eval" / "rows.csv")))
    assert [(r["id"], r["status"], r["exact"]) for r in rows] == [
        ("test[1]", "ok", "1"),
        ("test[2]", "ok", "1"),
        ("test[3]", "empty", "0"),
        ("test[4]", "error", "0"),
    ]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["bleu"] == summary["bleu"]
    assert (tmp_path / "eval" / "rougeL.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_references_from_another_file_joined_by_id_with_items(tmp_path):
    """--reference: a teacher's answers (litgpt JSON, as distill_convert writes) joined by id; a record the student
    did not answer is `missing` and scored empty, a generation without a reference is `no_reference`."""
    teacher = tmp_path / "teacher.json"
    teacher.write_text(
        json.dumps(
            [
                {"id": "a", "instruction": "...", "output": "ivel salt\nwhere is ivel\nexe river towns"},
                {"id": "b", "instruction": "...", "output": "avalon timber\nwhere is avalon"},
                {"id": "c", "instruction": "...", "output": "thorne wool"},
            ]
        )
    )
    gens = _write_jsonl(
        tmp_path / "student.jsonl",
        [
            {"id": "a", "generations": ["ivel salt\nwhere is ivel\nexe river towns"]},
            {"id": "b", "generations": ["avalon timber\nwhere is ivel"]},
            {"id": "z", "generations": ["anything"]},
        ],
    )
    s = evaluate_generations(input=gens, reference=teacher, reference_field="output", items="lines")
    assert (s["scored"], s["missing"], s["no_reference"]) == (3, 1, 1)
    assert s["items"]["f1"] == pytest.approx((1.0 + 0.5 + 0.0) / 3, abs=1e-4)
    assert s["items"]["micro_precision"] == pytest.approx(4 / 5, abs=1e-4)
    assert s["items"]["micro_recall"] == pytest.approx(4 / 6, abs=1e-4)
    assert (tmp_path / "student.eval" / "metrics.json").is_file()  # the default output dir


def test_bad_input_is_one_located_line(tmp_path):
    gens = _write_jsonl(tmp_path / "g.jsonl", [{"id": "1", "output": "x", "generations": ["x"]}])
    with pytest.raises(UserError, match=r"g.jsonl:line 1: Answer: missing \(the row has: id, output\)"):
        evaluate_generations(input=gens)
    ref = _write_jsonl(tmp_path / "r.jsonl", [{"id": "1", "text": "x"}])
    with pytest.raises(UserError, match=r"r.jsonl:line 1: output: missing; pass --reference_field"):
        evaluate_generations(input=gens, reference=ref, reference_field="output")
    result = run_cli("evaluate_generations", "--input", tmp_path / "g.jsonl", "--reference_field", "Question")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "g.jsonl:line 1: Question: missing (the row has: id, output); pass --reference_field or --reference FILE"
        )
    )


def test_finetune_eval_test_answers_the_test_split_like_the_two_commands(tiny_factory, tmp_path):
    """finetune_sft --eval.test true on the demo Q/A data writes out_dir/test/ (generations of every test question,
    rows.csv, metrics.json) with the numbers generate_batch + evaluate_generations give by hand on the final model;
    data without a test split is refused before training."""
    from conftest import DEMO
    from litgpt_ext.finetune.sft import setup as finetune_sft
    from litgpt_ext.generate.command import generate_batch
    from litgpt_ext.training.args import EvalArgs, TrainArgs

    out = tmp_path / "sft"
    train = TrainArgs(
        save_interval=None, global_batch_size=16, micro_batch_size=16, max_steps=40, epochs=None, lr_warmup_steps=5
    )
    finetune_sft(
        tiny_factory(n_embd=128),
        data=DEMO / "qa.json",
        out_dir=out,
        mode="full",
        precision="32-true",
        train=train,
        eval=EvalArgs(interval=1000, max_iters=1, test=True, max_new_tokens=16),
        optimizer={"lr": 3e-3},
    )
    test = json.loads((DEMO / "qa.json").read_text())["test"]
    rows = [json.loads(line) for line in (out / "test" / "generations.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"test[{i}]" for i in range(1, len(test) + 1))
    assert all(r["generations"][0] for r in rows)
    summary = json.loads((out / "test" / "metrics.json").read_text())
    assert summary["scored"] == len(test) and (out / "test" / "rows.csv").is_file()

    generate_batch(
        out / "final",
        input=DEMO / "qa.json",
        split="test",
        output=tmp_path / "by_hand.jsonl",
        max_new_tokens=16,
        temperature=0,
        precision="32-true",
    )
    by_hand = evaluate_generations(input=tmp_path / "by_hand.jsonl", output_dir=tmp_path / "by_hand")
    assert {k: by_hand[k] for k in ("bleu", "rougeL", "exact_match")} == {
        k: summary[k] for k in ("bleu", "rougeL", "exact_match")
    }

    litgpt_json = tmp_path / "train.json"
    litgpt_json.write_text(json.dumps([{"instruction": "q", "output": "a"}] * 4))
    with pytest.raises(UserError, match=r"eval.test: needs a test split"):
        finetune_sft(tiny_factory(n_embd=128), data=litgpt_json, out_dir=tmp_path / "x", eval=EvalArgs(test=True))
    assert not (tmp_path / "x").exists()
