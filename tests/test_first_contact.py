"""What a new user's own task ran into (file modes, exit codes, reruns, defaults, prompts in exports): each case
failed before its fix."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest

from litgpt_ext.io import atomic_write_json, atomic_write_jsonl, atomic_write_text


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root):
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_files_get_the_mode_the_umask_gives(tmp_path, mask):
    with umask(mask):
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
        atomic_write_jsonl(tmp_path / "c.jsonl", [{"a": 1}])
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    assert set(_modes(tmp_path).values()) == {0o666 & ~mask}


def test_export_is_readable_as_the_umask_says(tiny_checkpoint, tmp_path):
    from litgpt_ext.export.command import export_hf

    with umask(0o022):
        export_hf(tiny_checkpoint, out_dir=tmp_path / "hf")
    modes = _modes(tmp_path / "hf")
    assert "model.safetensors" in modes and "tokenizer_config.json" in modes and "README.md" in modes
    assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}


def _prompts(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_generate_batch_exits_3_when_no_row_produced_a_generation(tiny_checkpoint, tmp_path):
    from conftest import run_cli

    inp = _prompts(tmp_path / "p.jsonl", [{"id": f"r{i}", "title": "no prompt field"} for i in range(5)])
    result = run_cli(
        "generate_batch", tiny_checkpoint, "--input", inp, "--output", tmp_path / "o.jsonl", "--precision", "32-true"
    )
    assert result.returncode == 3, result.stderr
    assert "5 of 5 rows failed" in result.stdout and "no row produced a generation" in result.stdout


def test_generate_stats_survive_a_rerun_and_add_up_over_resumed_runs(tiny_checkpoint, tmp_path):
    import json

    from litgpt_ext.generate.command import generate_batch

    inp = _prompts(tmp_path / "p.jsonl", [{"id": f"r{i}", "prompt": f"What does town {i} sell?"} for i in range(6)])
    out, stats = tmp_path / "g.jsonl", tmp_path / "g.stats.json"
    settings = dict(input=inp, output=out, max_new_tokens=3, temperature=0.0, precision="32-true")
    lines = inp.read_text().splitlines()
    inp.write_text("\n".join(lines[:4]) + "\n")  # the first run sees 4 prompts, the resumed one 2 more
    generate_batch(tiny_checkpoint, **settings)
    first = json.loads(stats.read_text())
    inp.write_text("\n".join(lines) + "\n")
    generate_batch(tiny_checkpoint, **settings)
    both = json.loads(stats.read_text())
    assert (first["prompts"], both["prompts"], both["runs"]) == (4, 6, 2)
    assert both["seconds"] > first["seconds"] and both["generated_tokens"] == 18
    generate_batch(tiny_checkpoint, **settings)  # nothing left: the measured figures stay
    assert json.loads(stats.read_text()) == both


def test_max_prompt_length_keeps_bos_and_the_prompts_end(tiny_checkpoint, tmp_path, capsys):
    import json

    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.generate.command import generate_batch

    long = "word " * 2000 + "What does Ivel sell?"
    inp = _prompts(tmp_path / "p.jsonl", [{"id": "long", "prompt": long}, {"id": "short", "prompt": "Hi"}])
    out = tmp_path / "g.jsonl"
    generate_batch(
        tiny_checkpoint,
        input=inp,
        output=out,
        max_new_tokens=2,
        temperature=0.0,
        precision="32-true",
        prompt_style="default",
        max_prompt_length=64,
    )
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["long"]["prompt_tokens"] == 64 and "error" not in rows["long"]
    assert rows["short"]["prompt_tokens"] == len(Tokenizer(tiny_checkpoint).encode("Hi"))
    assert "1 prompts cut to --max_prompt_length" in capsys.readouterr().out
    assert json.loads((tmp_path / "g.stats.json").read_text())["truncated_prompts"] == 1


def test_the_step_plan_says_what_ends_the_run_and_caps_warm_up():
    from litgpt_ext.training.args import TrainArgs
    from litgpt_ext.training.plan import plan_steps

    # the template's sft-lora settings on 130 examples: 4 steps per epoch x 3 epochs, warm-up 50 -> 2
    plan = plan_steps(TrainArgs(global_batch_size=32, micro_batch_size=4, epochs=3, lr_warmup_steps=50), 130, 33, 8)
    assert (plan.total, plan.warmup) == (12, 2)
    assert plan.describe() == (
        "12 steps: --train.epochs 3 x 4 per epoch: 130 samples, 32 per step; "
        "warm-up 50 (--train.lr_warmup_steps) capped to 2, 10% of the run"
    )
    # DPO's --train.max_steps 10 with epochs 1 on 150 pairs of 16 per step
    plan = plan_steps(
        TrainArgs(global_batch_size=16, micro_batch_size=2, epochs=1, max_steps=10, lr_warmup_steps=10), 150, 75, 8
    )
    assert plan.describe().startswith("9 steps: --train.epochs 1 ends before --train.max_steps 10 (9 per epoch")
    plan = plan_steps(
        TrainArgs(global_batch_size=16, micro_batch_size=16, max_steps=300, lr_warmup_steps=10), 400, 25, 1
    )
    assert (plan.total, plan.warmup) == (300, 10) and plan.describe().startswith("300 steps: --train.max_steps 300")


def test_a_length_flag_above_the_models_context_is_lowered_with_a_warning(tiny_checkpoint, tmp_path, capsys):
    import json

    import torch

    from distill.tokenize import distill_tokenize
    from litgpt_ext.checks import model_context

    context = model_context(tiny_checkpoint)
    rows = [{"instruction": "word " * 3000, "output": "yes"}, {"instruction": "short", "output": "no"}]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    distill_tokenize(data_dir=tmp_path, checkpoint_dir=tiny_checkpoint, max_seq_length=4 * context)
    err = capsys.readouterr().err
    assert f"warning: --max_seq_length {4 * context} exceeds the model's context ({context}" in err
    packed = torch.load(tmp_path / "train.pt")
    assert int((packed["offsets"][1:] - packed["offsets"][:-1]).max()) == context


def test_preference_methods_default_to_a_learning_rate_of_their_own():
    import inspect

    from litgpt_ext.finetune import dpo, orpo, sft
    from litgpt_ext.finetune.fabric import optimizer_config

    def default(module):
        return inspect.signature(module.setup).parameters["optimizer"].default

    assert optimizer_config(default(dpo)) == {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 1e-6, "weight_decay": 0.0},
    }
    assert optimizer_config(default(orpo))["init_args"]["lr"] == 1e-5
    assert default(sft) == "AdamW"  # litgpt's own default for SFT
    # --optimizer.lr on top of the default (what jsonargparse hands over) overrides that argument only
    assert optimizer_config({**default(dpo), "lr": "5e-6"})["init_args"] == {"lr": 5e-6, "weight_decay": 0.0}
    assert optimizer_config({"lr": "3e-4"}) == {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-4}}


def _tiny_sft(ckpt, out, **kw):
    from conftest import DEMO
    from litgpt_ext.finetune.sft import setup as finetune_sft
    from litgpt_ext.training.args import EvalArgs, TrainArgs

    train = TrainArgs(global_batch_size=4, micro_batch_size=4, max_steps=2, epochs=None, save_interval=None)
    finetune_sft(
        ckpt,
        data=DEMO / "qa.json",
        out_dir=out,
        precision="32-true",
        train=train,
        eval=EvalArgs(interval=1000, max_iters=1),
        **kw,
    )


def test_wandb_offline_and_mlflow_file_store_receive_the_metrics(tiny_checkpoint, tmp_path, monkeypatch):
    from litgpt.args import LogArgs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _tiny_sft(tiny_checkpoint, tmp_path / "w", logger_name="wandb", log=LogArgs(project="kd-tests", run="first"))
    (run_file,) = (tmp_path / "w" / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
    records = run_file.read_bytes()  # wandb's protobuf log: metric names are stored as length-prefixed strings
    assert b"\x04loss" in records and b"\x08val_loss" in records and b"kd-tests" in records
    _tiny_sft(tiny_checkpoint, tmp_path / "m", logger_name="mlflow", log=LogArgs(project="kd-tests", run="first"))
    losses = list((tmp_path / "m" / "logs" / "mlruns").rglob("metrics/loss"))
    assert len(losses) == 1 and len(losses[0].read_text().splitlines()) == 2  # one line per step
    assert (losses[0].parent.parent / "tags" / "mlflow.runName").read_text() == "first"


def test_quantize_is_refused_in_one_line_where_bitsandbytes_cannot_run(tiny_checkpoint, tmp_path):
    import torch

    from litgpt_ext.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU refusal")
    with pytest.raises(UserError, match="quantize: bnb.nf4 needs a CUDA GPU"):
        _tiny_sft(tiny_checkpoint, tmp_path / "q", quantize="bnb.nf4")
    with pytest.raises(UserError, match="quantize: quantizes the frozen base of a LoRA run"):
        _tiny_sft(tiny_checkpoint, tmp_path / "q", quantize="bnb.nf4", mode="full")


def test_the_cpu_default_precision_is_fp32_unless_bf16_pays(tiny_checkpoint, tmp_path, monkeypatch):
    import shutil

    import yaml

    from litgpt_ext import precision

    wide = tmp_path / "wide"
    shutil.copytree(tiny_checkpoint, wide)
    config = yaml.safe_load((wide / "model_config.yaml").read_text())
    (wide / "model_config.yaml").write_text(yaml.safe_dump({**config, "n_embd": 512}))
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert precision.default_precision(tiny_checkpoint, training=False) == "32-true"  # 64 wide: no gain
        assert precision.default_precision(wide, training=False) == ("bf16-true" if native else "32-true")
        assert precision.default_precision(wide, training=True) == ("bf16-mixed" if native else "32-true")


def test_a_gpu_that_only_emulates_bf16_defaults_to_fp16(monkeypatch):
    """``torch.cuda.is_bf16_supported()`` answers yes on a V100 or T4, which emulate bf16; the default follows the
    hardware (compute capability 8.0 on) instead."""
    import torch

    from litgpt_ext import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, half in (((7, 0), "16"), ((7, 5), "16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        assert precision.default_precision(None, training=True) == f"{half}-mixed", capability
        assert precision.default_precision(None, training=False) == f"{half}-true", capability
