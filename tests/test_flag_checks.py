"""Numbers that make no sense stop every command at start with one line naming the flag (exit 2 on the CLI)."""

from __future__ import annotations

import pytest

from conftest import DEMO, REPO
from litgpt_ext.errors import UserError
from litgpt_ext.training.args import EvalArgs, TrainArgs


def test_cli_rejects_a_negative_rate_limit_with_one_line(capsys):
    from litgpt_ext.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["distill_query", "--records", str(DEMO / "records.jsonl"), "--prompt", str(REPO / "prompts" / "search_queries.md"), "--rpm", "-5"])  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: rpm: must be >= 1, got -5"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 3.0}, "temperature: must be in [0.0, 2.0], got 3.0"),
        ({"top_p": 0.0}, "top_p: must be in (0.0, 1.0], got 0.0"),
        ({"concurrency": 0}, "concurrency: must be >= 1, got 0"),
        ({"timeout": 0.0}, "timeout: must be > 0, got 0.0"),
        ({"max_cost_usd": -1.0}, "max_cost_usd: must be > 0, got -1.0"),
        ({"n": 0}, "n: must be >= 1, got 0"),
    ],
)
def test_distill_query_numbers(kwargs, message):
    from distill.query import distill_query

    with pytest.raises(UserError) as err:
        distill_query(records=DEMO / "records.jsonl", prompt=REPO / "prompts" / "search_queries.md", **kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -3}, "max_new_tokens: must be >= 1, got -3"),
        ({"top_k": 0}, "top_k: must be >= 1, got 0"),
        ({"temperature": -0.5}, "temperature: must be >= 0.0, got -0.5"),
        ({"num_samples": 0}, "num_samples: must be >= 1, got 0"),
        ({"max_batch_size": 0}, "max_batch_size: must be >= 1, got 0"),
    ],
)
def test_generate_batch_numbers(tiny_checkpoint, tmp_path, kwargs, message):
    from litgpt_ext.generate.command import generate_batch

    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    with pytest.raises(UserError) as err:
        generate_batch(tiny_checkpoint, input=tmp_path / "p.jsonl", output=tmp_path / "o.jsonl", **kwargs)
    assert str(err.value) == message
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    ("command", "kwargs", "message"),
    [
        ("sft", {"train": TrainArgs(micro_batch_size=0)}, "train.micro_batch_size: must be >= 1, got 0"),
        ("sft", {"train": TrainArgs(max_steps=0)}, "train.max_steps: must be >= 1, got 0"),
        ("sft", {"eval": EvalArgs(interval=0)}, "eval.interval: must be >= 1, got 0"),
        ("sft", {"lora_r": 0}, "lora_r: must be >= 1, got 0"),
        ("dpo", {"beta": 0.0}, "beta: must be > 0, got 0.0"),
        ("dpo", {"label_smoothing": 0.7}, "label_smoothing: must be in [0.0, 0.5], got 0.7"),
        ("orpo", {"beta": -1.0}, "beta: must be > 0, got -1.0"),
    ],
)
def test_finetune_numbers(tiny_checkpoint, tmp_path, command, kwargs, message):
    import importlib

    setup = importlib.import_module(f"litgpt_ext.finetune.{command}").setup
    with pytest.raises(UserError) as err:
        setup(tiny_checkpoint, data=DEMO / "qa.json", out_dir=tmp_path / "out", **kwargs)
    assert str(err.value) == message
    assert not (tmp_path / "out").exists()


def test_data_commands_numbers(tmp_path, tiny_checkpoint):
    from distill.convert import distill_convert
    from distill.tokenize import distill_tokenize
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    with pytest.raises(UserError, match=r"^val_fraction: must be in \[0.0, 1.0\], got 1.5$"):
        distill_convert(
            records=DEMO / "records.jsonl", responses=tmp_path / "r.jsonl", out_dir=tmp_path, val_fraction=1.5
        )
    with pytest.raises(UserError, match=r"^max_seq_length: must be >= 2, got 0$"):
        distill_tokenize(data_dir=tmp_path, checkpoint_dir=tiny_checkpoint, max_seq_length=0)
    with pytest.raises(UserError, match=r"^n_layer: must be >= 1, got 0$"):
        make_tiny_checkpoint(out_dir=tmp_path / "ck", n_layer=0)
