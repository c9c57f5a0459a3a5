"""distill_grading_pairs on the example labs under artifacts/ and on small labs made here, one irregularity each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from distill.grading import distill_grading_pairs
from litgpt_ext.errors import UserError

EXAMPLE = REPO / "artifacts" / "grading_example"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run(parent: Path, out: Path, **kw) -> tuple[list[dict], list[dict], list[dict]]:
    distill_grading_pairs(
        parent_dir=parent, train_dataset_path=out / "train.jsonl", test_dataset_path=out / "test.jsonl", **kw
    )
    return _jsonl(out / "train.jsonl"), _jsonl(out / "test.jsonl"), _jsonl(out / "train.quarantine.jsonl")


def _labs(tmp_path: Path) -> Path:
    parent = tmp_path / "labs"
    shutil.copytree(EXAMPLE, parent, ignore=shutil.ignore_patterns("system_prompt.txt"))
    return parent


def test_example_labs_pairs_split_and_prompt(tmp_path):
    train, test, quarantine = _run(
        EXAMPLE,
        tmp_path,
        eval_lab_names=["lab2_sum_list"],
        system_prompt_path=EXAMPLE / "system_prompt.txt",
    )
    assert quarantine == []
    # lab1: 4 students; Correctness has 3 options (2 wrong), Style 2 (1 wrong); floor(4 * 0.7) = 2 students train
    assert len(train) == 2 * 2 + 2 * 1
    assert {(p["student_id"], p["criterion"]) for p in train} == {
        (s, c) for s in ("s001", "s002") for c in ("Correctness", "Style")
    }
    lab2 = [p for p in test if p["lab"] == "lab2_sum_list"]
    assert len(lab2) == 3 and not any(p["lab"] == "lab2_sum_list" for p in train)  # held out wholly
    s002 = [p for p in train if p["student_id"] == "s002" and p["criterion"] == "Correctness"]
    assert {p["chosen"] for p in s002} == {'{"answer": "2. Minor bugs"}'}  # the grader's mark
    assert {p["rejected"] for p in s002} == {'{"answer": "1. Correct"}', '{"answer": "3. Incorrect"}'}
    prompt = s002[0]["prompt"]
    assert prompt.startswith("Problem statement:\nWrite a function fizzbuzz(n)")
    assert "1. Correct: Right output for all n" in prompt and "### fizzbuzz.py" in prompt
    assert all(p["system"].startswith("You are a teaching assistant") for p in train + test)
    s004 = [p for p in test if p["student_id"] == "s004"][0]["prompt"]
    assert "### test_fizzbuzz.py" in s004  # every file of the submission, sorted
    summary = json.loads((tmp_path / "train.summary.json").read_text())
    assert summary["train_pairs"] == 6 and summary["test_pairs"] == len(test)

    train0, _, _ = _run(EXAMPLE, tmp_path / "v0", verbose=0, train_split=1.0)
    assert not train0[0]["prompt"].startswith("Problem statement") and "system" not in train0[0]


def test_irregular_rows_are_quarantined_with_their_location(tmp_path):
    parent = _labs(tmp_path)
    lab = parent / "lab1_fizzbuzz"
    sheet = (lab / "rubric_ratings.csv").read_text().splitlines()
    sheet[0] += ",Docs,"  # a criterion the rubric does not know
    sheet[2] += ",Yes,No"
    sheet[6] = "s001@uni.example,1,,,,"  # no Style rating marked (row 7)
    sheet[7] = "s002@uni.example,,1,1,1,"  # two Correctness ratings marked (row 8)
    sheet.append("s009@uni.example,1,,,1,")  # no submission (row 11)
    sheet.append("s005,1,,,1,")  # two submission folders (row 12)
    sheet.append("s006,1,,,1,")  # code that is not UTF-8 (row 13)
    (lab / "rubric_ratings.csv").write_text("\n".join(sheet) + "\n")
    for folder in ("s005@a", "s005@b", "s006"):
        (lab / "submissions" / folder).mkdir()
        (lab / "submissions" / folder / "main.py").write_text("print(1)\n")
    (lab / "submissions" / "s006" / "main.py").write_bytes(b"print('caf\xe9')\n")
    (parent / "lab2_sum_list" / "problemStatement.txt").unlink()

    train, test, quarantine = _run(parent, tmp_path / "out")
    found = {(q["reason"], q["where"]) for q in quarantine}
    sheet_name = "lab1_fizzbuzz/rubric_ratings.csv"
    assert found == {
        ("criterion_not_in_rubrics", f"{sheet_name}:1"),
        ("no_rating_marked", f"{sheet_name}:7"),
        ("several_ratings_marked", f"{sheet_name}:8"),
        ("no_submission", f"{sheet_name}:11"),
        ("two_submissions", f"{sheet_name}:12"),
        ("code_not_utf8", f"{sheet_name}:13"),
        ("missing_statement", "lab2_sum_list/"),
    }
    assert [q["file"] for q in quarantine if q["reason"] == "code_not_utf8"] == ["s006/main.py"]
    kept = {(p["student_id"], p["criterion"]) for p in train + test}
    assert ("s001", "Correctness") in kept and ("s001", "Style") not in kept and ("s002", "Correctness") not in kept
    assert not {p["student_id"] for p in train + test} & {"s005", "s006", "s009"}
    summary = json.loads((tmp_path / "out" / "train.summary.json").read_text())
    assert sum(summary["quarantined"].values()) == 7


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lab: (lab / "rubrics.json").write_text("[{"), r"lab1_fizzbuzz/rubrics.json:1: invalid JSON"),
        (
            lambda lab: (lab / "rubrics.json").write_text('[{"title": "Correctness", "Ratings": []}]'),
            r"rubrics.json:criterion 1: Ratings: missing or not a non-empty list",
        ),
        (
            lambda lab: (lab / "rubric_ratings.csv").write_text(
                (lab / "rubric_ratings.csv").read_text().replace("Minor bugs", "Small bugs")
            ),
            r"rubric_ratings.csv:3: column 3: rating title 'Small bugs' does not match rubrics.json's 'Minor bugs'",
        ),
        (
            lambda lab: (lab / "rubric_ratings.csv").write_text(
                (lab / "rubric_ratings.csv")
                .read_text()
                .replace("Student,Correctness,,,Style,", "Student,Correctness,,Style,,")
            ),
            r"rubric_ratings.csv:1: criterion 'Correctness' spans 2 column\(s\) from column 2, but rubrics.json lists 3",
        ),
        (lambda lab: (lab / "rubric_ratings.csv").unlink(), r"lab1_fizzbuzz/rubric_ratings.csv: missing"),
        (
            lambda lab: (lab / "rubric_ratings.csv").write_bytes(b"Student,Correctness\n\xff\n"),
            r"rubric_ratings.csv:line 2: not valid UTF-8",
        ),
    ],
)
def test_structural_problems_are_located_errors(tmp_path, edit, message):
    parent = _labs(tmp_path)
    edit(parent / "lab1_fizzbuzz")
    with pytest.raises(UserError, match=message):
        _run(parent, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before every lab was read


def test_cli_errors_and_bad_numbers(tmp_path, capsys):
    from litgpt_ext.cli import main

    for args, expected in (
        (["--train_split", "1.5"], "train_split: must be between 0 and 1, got 1.5"),
        (["--eval_lab_names", "[lab9]"], "eval_lab_names: no such lab(s): lab9"),
        (["--verbose", "2"], "verbose: must be 0 or 1, got 2"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["distill_grading_pairs", "--parent_dir", str(EXAMPLE), *args])
        assert stop.value.code == 2
        assert expected in capsys.readouterr().err


def test_output_trains_with_preference_data(tmp_path, tiny_checkpoint):
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.preference import PreferenceData

    _run(EXAMPLE, tmp_path, system_prompt_path=EXAMPLE / "system_prompt.txt")
    data = PreferenceData(path=tmp_path / "train.jsonl", val_path=tmp_path / "test.jsonl")
    data.connect(Tokenizer(tiny_checkpoint), batch_size=2)
    data.setup()
    assert len(data.train_dataset) == 8 and len(data.val_dataset) == 7  # lab2 split too: 2 of 3 students train
