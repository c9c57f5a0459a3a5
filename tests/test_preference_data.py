"""PreferenceData: JSON / JSONL / CSV / directories, column mapping, prompt style, truncation, stable splits, errors."""

from __future__ import annotations

import csv
import json

import pytest
from litgpt.prompts import Alpaca, PromptStyle
from litgpt.tokenizer import Tokenizer

from conftest import run_cli
from litgpt_ext.data.preference import PreferenceData
from litgpt_ext.errors import UserError

ROWS = [
    {"id": f"r{i}", "prompt": f"What does town {i} sell?", "chosen": f" salt {i}", "rejected": f" nothing {i}"}
    for i in range(40)
]


def _load(tokenizer, path, style=None, max_prompt_length=None, max_length=None, **kw) -> PreferenceData:
    data = PreferenceData(path=path, **kw)
    data.connect(tokenizer, 2, max_length, prompt_style=style, max_prompt_length=max_prompt_length)
    data.setup()
    return data


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return Tokenizer(tiny_checkpoint)


def _write_csv(path, rows, header=("prompt", "chosen", "rejected")):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in rows:
            writer.writerow([r[k] for k in ("prompt", "chosen", "rejected")])
    return path


def test_json_jsonl_csv_and_directories_load_the_same_pairs(tokenizer, tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(ROWS))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    d = tmp_path / "dir"
    d.mkdir()
    _write_csv(d / "train.csv", ROWS[:30])
    _write_csv(d / "val.csv", ROWS[30:])
    loaded = {name: _load(tokenizer, tmp_path / name) for name in ("p.json", "p.jsonl")}
    loaded["dir"] = _load(tokenizer, d)
    for data in loaded.values():
        assert len(data.train_dataset) + len(data.val_dataset) == 40
    assert len(loaded["dir"].val_dataset) == 10  # val.csv is used as is
    # every response ends with EOS; the prompt starts with BOS (litgpt's rule for this tokenizer)
    sample = loaded["p.jsonl"].train_dataset[0]
    assert int(sample["chosen_ids"][-1]) == tokenizer.eos_id and int(sample["rejected_ids"][-1]) == tokenizer.eos_id
    assert int(sample["prompt_ids"][0]) == tokenizer.bos_id


def test_csv_with_renamed_columns_and_multiline_cells(tokenizer, tmp_path):
    path = tmp_path / "graded.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "good", "bad", "note"])
        writer.writerow(["Line one\nline two, with a comma", " yes,\nreally", " no", "x"])
        writer.writerow(["Second", " fine", " bad", "y"])
        writer.writerow(["Third", " ok", " meh", "z"])
    data = _load(
        tokenizer, path, prompt_column="question", chosen_column="good", rejected_column="bad", val_split_fraction=0.3
    )
    samples = [*data.train_dataset.samples, *data.val_dataset.samples]
    texts = {tokenizer.decode(s["prompt_ids"]): tokenizer.decode(s["chosen_ids"][:-1]) for s in samples}
    assert texts["Line one\nline two, with a comma"] == " yes,\nreally"


def test_prompt_style_system_and_input_are_applied(tokenizer, tmp_path):
    rows = [
        {"prompt": "Summarize.", "input": "A long text.", "chosen": " ok", "rejected": " no", "system": "Be brief."},
        {"prompt": "Q", "chosen": " a", "rejected": " b"},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "val.jsonl").write_text(json.dumps(rows[1]) + "\n")
    data = _load(tokenizer, tmp_path, style=Alpaca())
    prompt = tokenizer.decode(data.train_dataset[0]["prompt_ids"])
    # Alpaca's system prompt replaces its header (litgpt's own behaviour); the input gets its section
    assert prompt.startswith("Be brief.### Instruction:\nSummarize.") and "### Input:\nA long text." in prompt
    # the raw style has no place for a system prompt or an input: the system prompt goes before the prompt and the
    # input after it instead of being dropped
    raw = _load(tokenizer, tmp_path, style=PromptStyle())
    assert tokenizer.decode(raw.train_dataset[0]["prompt_ids"]) == "Be brief.\n\nSummarize.\n\nA long text."


def test_truncation_keeps_the_prompt_end_and_cuts_responses(tokenizer, tmp_path):
    rows = [{"prompt": "word " * 60 + "END?", "chosen": " yes " * 30, "rejected": " no"}] * 2
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "val.jsonl").write_text(json.dumps(rows[0]) + "\n")
    data = _load(tokenizer, tmp_path, style=PromptStyle(), max_prompt_length=10, max_length=24)
    sample = data.train_dataset[0]
    assert len(sample["prompt_ids"]) == 10
    assert int(sample["prompt_ids"][0]) == tokenizer.bos_id
    assert tokenizer.decode(sample["prompt_ids"]).endswith("END?")
    assert len(sample["prompt_ids"]) + len(sample["chosen_ids"]) == 24  # cut: no EOS
    assert int(sample["rejected_ids"][-1]) == tokenizer.eos_id  # short enough: untouched
    assert data.stats["train_prompt_truncated"] == 2 and data.stats["train_response_truncated"] == 2


def test_equal_answers_are_dropped_and_counted(tokenizer, tmp_path, capsys):
    rows = [*ROWS[:10], {"prompt": "Same?", "chosen": " same", "rejected": " same "}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = _load(tokenizer, tmp_path / "p.jsonl")
    assert len(data.train_dataset) + len(data.val_dataset) == 10
    assert "dropped 1 pair(s) whose chosen and rejected answers are equal" in capsys.readouterr().out


def test_split_is_stable_when_rows_are_added(tokenizer, tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:30]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    ids = {}
    for name in ("a", "b"):
        data = _load(tokenizer, tmp_path / f"{name}.jsonl", val_split_fraction=0.25)
        ids[name] = {s["id"] for s in data.val_dataset.samples}
    assert ids["a"] and ids["a"] == {i for i in ids["b"] if int(i[1:]) < 30}


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"prompt": "a", "chosen": " b"}\n', ".jsonl", "p.jsonl:line 1: rejected: missing column"),
        ('{"prompt": "a", "chosen": " ", "rejected": " c"}\n', ".jsonl", "p.jsonl:line 1: chosen: empty"),
        (
            '[{"prompt": 3, "chosen": "b", "rejected": "c"}]',
            ".json",
            "p.json:record 1: prompt: expected a string, got int",
        ),
        ("prompt,chosen,rejected\na,b,c\nd,,f\n", ".csv", "p.csv:line 3: chosen: empty"),
        ("prompt,chosen,rejected\na,b,c,d\n", ".csv", "p.csv:line 2: 4 cells, but the header has 3"),
    ],
)
def test_bad_rows_are_located_errors(tokenizer, tmp_path, content, suffix, message):
    path = tmp_path / f"p{suffix}"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        _load(tokenizer, path)
    assert str(err.value).endswith(message) or message in str(err.value), str(err.value)


def test_cli_bad_row_exits_2_with_one_line(tiny_checkpoint, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("question,good,bad\nfine,yes,no\nhmm,,no\n")
    result = run_cli(
        "finetune_dpo",
        tiny_checkpoint,
        "--data",
        "PreferenceData",
        "--data.path",
        path,
        "--data.prompt_column",
        "question",
        "--data.chosen_column",
        "good",
        "--data.rejected_column",
        "bad",
        "--out_dir",
        tmp_path / "out",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {path}:line 3: good: empty"]
