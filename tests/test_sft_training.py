"""finetune_sft on the one loop: learning, freezing, exact resume, checkpoints, evaluation, litgpt compatibility."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import yaml

from conftest import DEMO, run_cli, run_in_process
from litgpt_ext.finetune.sft import setup
from litgpt_ext.training.args import CheckpointArgs, EvalArgs, TrainArgs


def _train(ckpt, out, data=DEMO / "qa.json", steps=40, lr=3e-3, eval_args=None, train_kw=None, **kw):
    settings = dict(
        save_interval=None,
        log_interval=1,
        global_batch_size=8,
        micro_batch_size=4,
        lr_warmup_steps=2,
        max_steps=steps,
        epochs=None,
        min_lr=0.0,
    )
    train = TrainArgs(**{**settings, **(train_kw or {})})
    setup(
        ckpt,
        data=data,
        out_dir=out,
        precision="32-true",
        train=train,
        eval=eval_args or EvalArgs(interval=1000, max_iters=4, max_new_tokens=8),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": lr, "weight_decay": 0.0}},
        **kw,
    )
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(rows):
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize(
    ("mode", "lr", "kw"),
    [
        ("full", 3e-3, {}),
        ("lora", 2e-2, {"lora_r": 16, "lora_alpha": 32, "lora_mlp": True, "lora_head": True, "lora_projection": True}),
    ],
)
def test_loss_decreases(tiny_checkpoint, tmp_path, mode, lr, kw):
    rows = _train(tiny_checkpoint, tmp_path / "out", mode=mode, lr=lr, steps=40, **kw)
    losses = _losses(rows)
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (38, 39, 40)) / 3
    assert last < 0.8 * first, (first, last)
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val and val[-1] < first
    final = tmp_path / "out" / "final"
    assert (final / "lit_model.pth").is_file()
    assert (final / "lit_model.pth.lora").is_file() == (mode == "lora")
    assert (tmp_path / "out" / "loss.png").stat().st_size > 1000
    perf = json.loads((tmp_path / "out" / "performance.json").read_text())
    assert perf["tokens_per_second"] > 0 and perf["optimizer_steps"] == 40


def test_frozen_parameters_are_bit_identical_and_trainable_ones_change(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    _train(
        tiny_checkpoint,
        out,
        mode="full",
        steps=5,
        freeze_emb=True,
        freeze_ln=True,
        freeze_attn=True,
        layers_not_to_freeze=[1],
    )
    table = capsys.readouterr().out
    assert "group" in table and "trainable" in table and "frozen" in table
    before = torch.load(tiny_checkpoint / "lit_model.pth")
    after = torch.load(out / "final" / "lit_model.pth")
    after = after.get("model", after)
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        frozen = (
            name.startswith("transformer.wte")
            or "norm" in name
            or name.startswith("transformer.ln_f")
            or ".attn." in name
        ) and not name.startswith("transformer.h.1.")
        if frozen:
            assert torch.equal(tensor, after[name]), f"{name} changed but is frozen"
        else:
            assert not torch.equal(tensor, after[name]), f"{name} did not change but is trainable"


def test_resume_reproduces_uninterrupted_losses(tiny_checkpoint, tmp_path):
    """LoRA with dropout and gradient accumulation: RNG, data order, optimizer and schedule all must be restored."""
    kw = dict(mode="lora", lr=1e-2, steps=8, lora_dropout=0.1, train_kw={"save_interval": 3})
    full = _losses(_train(tiny_checkpoint, tmp_path / "a", **kw))
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "step-000003", tmp_path / "b" / "step-000003")
    resumed = _losses(_train(tiny_checkpoint, tmp_path / "b", resume="auto", **kw))
    assert sorted(resumed) == list(range(4, 9))  # rows after the checkpoint were re-logged, none before
    for step in range(4, 9):
        assert abs(full[step] - resumed[step]) <= 1e-5, (step, full[step], resumed[step])


def test_best_checkpoint_generation_eval_and_text_metrics(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    rows = _train(
        tiny_checkpoint,
        out,
        mode="full",
        steps=6,
        train_kw={"save_interval": 3},
        eval_args=EvalArgs(interval=3, max_iters=2, max_new_tokens=6, generate_samples=3, text_metrics=True),
        checkpoint=CheckpointArgs(keep_last=1),
    )
    assert [p.name for p in sorted(out.glob("step-*"))] == ["step-000006"]
    best = json.loads((out / "best" / "best.json").read_text())
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    assert best["val_loss"] == min(val.values())
    with open(out / "eval" / "step-000003.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 3 and list(table[0]) == [
        "index",
        "prompt",
        "reference",
        "generated",
        "bleu",
        "rouge1",
        "rougeL",
    ]
    assert table[0]["prompt"].startswith("Question: ") and 0.0 <= float(table[0]["rougeL"]) <= 1.0
    assert any("val_rougeL" in r for r in rows)


def test_output_loads_in_litgpt_generate_and_hparams_are_clean(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    secret = "sk-test-secret-value-123"
    result = run_cli(
        "finetune_sft",
        tiny_checkpoint,
        "--data",
        DEMO / "qa.json",
        "--out_dir",
        out,
        "--precision",
        "32-true",
        "--train.max_steps",
        "3",
        "--train.global_batch_size",
        "4",
        "--train.micro_batch_size",
        "2",
        "--train.lr_warmup_steps",
        "1",
        "--eval.interval",
        "100",
        "--eval.max_iters",
        "2",
        env={"OPENAI_API_KEY": secret, "HF_TOKEN": "hf_" + secret},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    hparams = yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())
    assert hparams["checkpoint_dir"] == str(tiny_checkpoint) and hparams["mode"] == "lora"
    assert hparams["train"]["max_steps"] == 3 and hparams["precision"] == "32-true"
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    gen = run_cli(
        "generate", out / "final", "--prompt", "What does Ivel sell?", "--max_new_tokens", "5", "--precision", "32-true"
    )
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert "Question: What does Ivel sell?\nAnswer:" in gen.stdout  # the saved QA prompt style is applied


@pytest.mark.parametrize("config", ["sft-lora.yaml", "sft-full.yaml"])
def test_shipped_configs_run(tiny_checkpoint, tmp_path, config):
    from conftest import REPO

    result = run_cli(
        "finetune_sft",
        tiny_checkpoint,
        "--config",
        REPO / "litgpt_ext" / "configs" / config,
        "--data",
        DEMO / "qa.json",
        "--out_dir",
        tmp_path / "out",
        "--precision",
        "32-true",
        "--train.max_steps",
        "2",
        "--train.epochs",
        "null",
        "--train.global_batch_size",
        "4",
        "--train.micro_batch_size",
        "2",
        "--eval.interval",
        "100",
        "--eval.max_iters",
        "1",
        "--eval.generate_samples",
        "1",
        "--eval.max_new_tokens",
        "4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "final" / "lit_model.pth").is_file()


def test_ddp_two_cpu_processes_same_code_path(tiny_checkpoint, tmp_path):
    """Two gloo processes through the whole loop, the best checkpoint chosen by a metric only rank 0 computes (the
    generated answers' BLEU): it is broadcast, so both ranks write best/ together (rank 0 alone used to wait in the
    checkpoint's barrier forever)."""
    out = tmp_path / "out"
    result = run_cli(
        "finetune_sft",
        tiny_checkpoint,
        "--data",
        DEMO / "qa.json",
        "--out_dir",
        out,
        "--precision",
        "32-true",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--train.max_steps",
        "4",
        "--train.global_batch_size",
        "8",
        "--train.micro_batch_size",
        "2",
        "--train.lr_warmup_steps",
        "1",
        "--train.save_interval",
        "2",
        "--eval.interval",
        "2",
        "--eval.max_iters",
        "2",
        "--eval.generate_samples",
        "1",
        "--eval.max_new_tokens",
        "3",
        "--eval.text_metrics",
        "true",
        "--checkpoint.monitor",
        "val_bleu",
        "--checkpoint.mode",
        "max",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "best" / "best.json").read_text())["mode"] == "max"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and all(loss == loss for loss in losses)  # no NaN: new LoRA weights initialised
    assert (out / "step-000004" / "rng-rank1.pth").is_file() and (out / "final" / "lit_model.pth").is_file()


def test_fsdp_without_gpu_is_a_clear_error(tiny_checkpoint, tmp_path):
    result = run_in_process("finetune_sft", tiny_checkpoint, "--data", DEMO / "qa.json", "--out_dir", tmp_path / "o",
                            "--strategy", "fsdp", "--devices", "2")  # fmt: skip
    assert result.returncode == 2 and "strategy: fsdp needs CUDA GPUs" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


def test_fsdp_on_a_gpu_is_refused_until_the_gpu_check_has_run_it(monkeypatch, pair, data_dir, tmp_path):
    """No FSDP path can run on a CPU (Lightning's and torch's FSDP1 refuse it), so none is tested here: on a GPU it is
    refused in one line until tests/gpu/check.py has run it (its variable lets that script in); on-policy sampling
    from a sharded student is refused outright."""
    import torch

    from litgpt_ext.errors import UserError
    from litgpt_ext.finetune.fabric import UNCHECKED_FSDP, check_strategy

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv(UNCHECKED_FSDP, raising=False)
    with pytest.raises(UserError, match="fsdp has not yet passed this toolchain's GPU check"):
        check_strategy("fsdp")
    teacher, student = pair
    done = run_in_process("finetune_kd", student, "--teacher", teacher, "--data", data_dir, "--lmbda", "0.5",
                          "--strategy", "fsdp", "--out_dir", tmp_path / "o")  # fmt: skip
    assert done.returncode == 2 and "a sharded (fsdp) student is not" in done.stderr and not (tmp_path / "o").exists()
    monkeypatch.setenv(UNCHECKED_FSDP, "1")
    check_strategy("fsdp")  # let through
    check_strategy("ddp")


def _json_rows(n: int = 24) -> list[dict]:
    towns = ["Ivel", "Orra", "Bask", "Tume"]
    return [
        {"instruction": f"What does {towns[i % 4]} sell?", "input": "", "output": f" item {i % 4}"} for i in range(n)
    ]


@pytest.mark.parametrize("layout", ["dir", "file"])
def test_litgpts_own_json_datamodule_trains(tiny_checkpoint, tmp_path, layout):
    """litgpt's JSON DataModule fills test_dataset (its validation split) and leaves val_dataset None: both the
    tutorial's directory layout (train.json + val.json) and a single file with val_split_fraction must train."""
    from litgpt.data import JSON

    if layout == "dir":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "train.json").write_text(json.dumps(_json_rows(24)))
        (tmp_path / "data" / "val.json").write_text(json.dumps(_json_rows(6)))
        data = JSON(json_path=tmp_path / "data")
    else:
        (tmp_path / "data.json").write_text(json.dumps(_json_rows(30)))
        data = JSON(json_path=tmp_path / "data.json", val_split_fraction=0.2)
    setup(
        tiny_checkpoint,
        data=data,
        out_dir=tmp_path / "out",
        mode="lora",
        precision="32-true",
        train=TrainArgs(max_steps=2, epochs=None, global_batch_size=4, micro_batch_size=4, lr_warmup_steps=0),
        eval=EvalArgs(interval=1, max_iters=2),
    )
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in rows) and (tmp_path / "out" / "final" / "lit_model.pth").is_file()


def test_optional_logger_missing_is_one_line_and_tensorboard_writes_events(tiny_checkpoint, tmp_path, monkeypatch):
    import importlib.util

    from litgpt_ext.errors import UserError

    args = dict(
        data=DEMO / "qa.json",
        mode="lora",
        precision="32-true",
        train=TrainArgs(max_steps=2, epochs=None, global_batch_size=4, micro_batch_size=4, lr_warmup_steps=0),
        eval=EvalArgs(interval=1, max_iters=1),
        logger_name="tensorboard",
    )
    real = importlib.util.find_spec
    with monkeypatch.context() as m:  # a fresh install without the extra
        m.setattr(importlib.util, "find_spec", lambda name, *a: None if "tensorboard" in name else real(name, *a))
        with pytest.raises(
            UserError, match=r"logger_name: tensorboard needs .*pip install 'litgpt-distill\[tensorboard\]'"
        ):
            setup(tiny_checkpoint, out_dir=tmp_path / "missing", **args)
    assert not (tmp_path / "missing").exists()
    setup(tiny_checkpoint, out_dir=tmp_path / "tb", **args)  # the test extra installs it
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
