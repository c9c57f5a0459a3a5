"""On-policy distillation: samples come from the current weights (LoRA included) through the batch engine and leave
the model as it was; --resume replays the same on-policy steps; a server teacher scores exactly as the local one;
a server that dies mid-run stops with one line and a checkpoint the run resumes from (its API key written nowhere)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from kd_helpers import _batch, _Fabric, _student

from conftest import run_cli
from distill.teacher.fake_server import FakeOpenAI, ServerConfig
from litgpt_ext.api.prompt_scores import ServerArgs
from litgpt_ext.generate.on_model import ON_POLICY
from litgpt_ext.kd.teacher import LocalTeacher, ServerTeacher
from litgpt_ext.training.objectives.kd import KDObjective, KDSettings
from litgpt_ext.training.onpolicy import OnPolicy, OnPolicySampler


def _sampler(ckpt, lmbda=1.0, **gen):
    from litgpt.tokenizer import Tokenizer

    return OnPolicySampler(
        OnPolicy(lmbda, False, dataclasses.replace(ON_POLICY, **{"max_new_tokens": 12, **gen}), seed=5), Tokenizer(ckpt)
    )


def _answers(batch) -> list[list[int]]:
    return [row[row != -100].tolist() for row in batch["labels"]]


def test_samples_come_from_the_current_weights_and_leave_the_model_as_it_was(pair):
    _, student_dir = pair
    model = _student(student_dir, lora=True)
    batch = _batch(student_dir)
    sampler = _sampler(student_dir)
    model.max_seq_length = 64
    before = model(batch["input_ids"]).detach()
    first = sampler.resample(model, batch, iteration=0, who="student")
    again = sampler.resample(model, batch, iteration=0, who="student")
    assert _answers(first) == _answers(again)  # same weights, same seed: same samples
    assert _answers(sampler.resample(model, batch, iteration=1, who="student")) != _answers(first)
    together = sampler.resample_many(model, [(batch, 0), (batch, 1)], who="student")  # a step's micro-batches at once
    assert [_answers(b) for b in together] == [
        _answers(first),
        _answers(sampler.resample(model, batch, iteration=1, who="student")),
    ]
    assert model.training and model.max_seq_length == 64 and type(model.lm_head).__name__ == "LoRALinear"
    assert all(b.attn.kv_cache is None and "forward" not in b.attn.__dict__ for b in model.transformer.h)
    assert torch.equal(model(batch["input_ids"]).detach(), before)  # training forward bit for bit as before

    with torch.no_grad():  # an optimizer step that changes the LoRA weights changes what the student samples
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
    assert _answers(sampler.resample(model, batch, iteration=0, who="student")) != _answers(first)
    prompt = int((batch["labels"][0] != -100).nonzero()[0])
    assert torch.equal(first["input_ids"][0, :prompt], batch["input_ids"][0, :prompt])  # the same prompt
    assert first["labels"][0, :prompt].eq(-100).all()  # not trained on


def test_lambda_draws_are_seeded_per_micro_batch():
    class _Tok:
        eos_id = 0

    draws = [OnPolicySampler(OnPolicy(0.3, seed=9), _Tok()).student_turn(i) for i in range(400)]
    assert draws == [OnPolicySampler(OnPolicy(0.3, seed=9), _Tok()).student_turn(i) for i in range(400)]
    assert 0.22 < sum(draws) / 400 < 0.38
    assert all(OnPolicySampler(OnPolicy(1.0), _Tok()).student_turn(i) for i in range(20))


def test_server_scored_loss_equals_the_local_teachers_on_the_same_samples(pair):
    teacher_dir, student_dir = pair
    from litgpt.config import Config

    vocab = Config.from_file(student_dir / "model_config.yaml").padded_vocab_size
    model = _student(student_dir, lora=False)
    model.max_seq_length = 64
    batch = _sampler(student_dir).resample(model, _batch(student_dir), iteration=0, who="student")
    kd = KDSettings(beta=1.0, kd_ratio=1.0)
    local = LocalTeacher(teacher_dir)
    local.setup(_Fabric(), model, {})
    with FakeOpenAI(ServerConfig(model_dir=str(teacher_dir), max_top_logprobs=vocab)) as server:
        remote = ServerTeacher(server.base_url, "teacher", ServerArgs(top_k=vocab))
        remote.setup(_Fabric(), model, {})
        losses = {}
        for name, teacher in (("local", local), ("server", remote)):
            loss, metrics = KDObjective(teacher, kd).compute(model, batch)
            losses[name] = (
                float(loss.detach()),
                float(metrics["kl_teacher_student"]),
                float(metrics["top1_agreement"]),
            )
        remote.scorer.close()
        assert server.state.received == 2  # one scoring request per sequence
    assert abs(losses["local"][0] - losses["server"][0]) < 1e-4, losses
    assert abs(losses["local"][1] - losses["server"][1]) < 1e-4 and losses["local"][2] == losses["server"][2]


def _kd_cli(student, data, out, *extra, env=None):
    return run_cli("finetune_kd", student, "--data", data, "--out_dir", out, "--mode", "lora", "--beta", "1",
                   "--train.global_batch_size", "2", "--train.micro_batch_size", "1", "--train.log_interval", "1",
                   "--train.lr_warmup_steps", "0", "--eval.interval", "100", "--eval.final_validation", "false",
                   "--gen.max_new_tokens", "8", "--optimizer.lr", "0.01", *extra, env=env)  # fmt: skip


def _rows(out):
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def test_resume_replays_the_same_on_policy_steps(pair, data_dir, tmp_path):
    teacher_dir, student_dir = pair
    a = tmp_path / "a"
    r = _kd_cli(student_dir, data_dir, a, "--teacher", teacher_dir, "--lmbda", "0.5", "--train.max_steps", "4",
                "--train.save_interval", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    b = tmp_path / "b"
    r = _kd_cli(student_dir, data_dir, b, "--teacher", teacher_dir, "--lmbda", "0.5", "--train.max_steps", "4",
                "--resume", a / "step-000002")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    ra, rb = _rows(a), _rows(b)
    for step in (3, 4):
        assert rb[step]["onpolicy_fraction"] == ra[step]["onpolicy_fraction"]
        assert abs(rb[step]["loss"] - ra[step]["loss"]) < 1e-6
        assert rb[step]["tokens"] == ra[step]["tokens"]  # the same samples, of the same lengths
    perf = json.loads((a / "performance.json").read_text())
    assert perf["gen_s"] > 0 and perf["train_s"] > 0 and 0 < perf["onpolicy_fraction"] < 1
    assert all("gen_s" in row and "train_s" in row for row in ra.values())


def test_a_teacher_server_that_dies_stops_with_one_line_and_a_checkpoint_to_resume(pair, data_dir, tmp_path):
    teacher_dir, student_dir = pair
    out = tmp_path / "run"
    flags = ("--teacher_model", "teacher", "--lmbda", "1", "--train.max_steps", "4", "--server.max_attempts", "2",
             "--server.top_k", "5")  # fmt: skip
    with FakeOpenAI(ServerConfig(model_dir=str(teacher_dir), answer_limit=5)) as server:
        r = _kd_cli(student_dir, data_dir, out, "--teacher_url", server.base_url, *flags)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert "stopped answering" in line and "--resume auto" in line and "step-000002" in line
    assert (out / "step-000002" / "lit_model.pth.lora").is_file() or (out / "step-000002").is_dir()
    secret = "sk-secret-never-written-0123"
    with FakeOpenAI(ServerConfig(model_dir=str(teacher_dir), api_key=secret)) as server:  # the key is checked
        r = _kd_cli(student_dir, data_dir, out, "--teacher_url", server.base_url, *flags, "--resume", "auto",
                    env={**os.environ, "OPENAI_API_KEY": secret})  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Resumed from" in r.stdout + r.stderr and sorted(_rows(out)) == [1, 2, 3, 4]
    assert not [p for p in out.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_seq_kd_trains_on_the_teachers_samples_when_the_student_is_not_drawn(pair):
    teacher_dir, student_dir = pair
    from litgpt.tokenizer import Tokenizer

    model = _student(student_dir, lora=False)
    model.max_seq_length = 64
    local = LocalTeacher(teacher_dir)
    local.setup(_Fabric(), model, {})
    policy = OnPolicy(0.0, True, dataclasses.replace(ON_POLICY, max_new_tokens=10), seed=5)
    objective = KDObjective(local, KDSettings(), sampler=OnPolicySampler(policy, Tokenizer(student_dir)))
    batch = _batch(student_dir)
    got = objective.on_step(model, [batch], iteration=3)[0]
    expected = OnPolicySampler(policy, Tokenizer(student_dir)).resample(local.model, batch, 3, "teacher", None, 64)
    assert _answers(got) == _answers(expected) != _answers(batch)
    assert objective.sampler.onpolicy == 0 and objective.step_stats(1.0)["onpolicy_fraction"] == 0.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lmbda", "1.5"], "lmbda: must be"),
        (["--lmbda", "0.5", "--teacher_logprobs", "STORE"], "need a teacher that can score them"),
        (["--seq_kd", "true", "--teacher_url", "http://127.0.0.1:9/v1", "--teacher_model", "t"], "needs a local"),
        (["--teacher_url", "http://127.0.0.1:9/v1"], "needs --teacher_model"),
        (["--gen.max_new_tokens", "0", "--lmbda", "1"], "gen.max_new_tokens"),
    ],
)
def test_on_policy_flags_that_make_no_sense_are_one_line(pair, data_dir, tmp_path, flags, message):
    teacher_dir, student_dir = pair
    flags = [str(tmp_path) if f == "STORE" else f for f in flags]
    teacher = [] if any(f.startswith("--teacher") for f in flags) else ["--teacher", str(teacher_dir)]
    r = run_cli("finetune_kd", student_dir, "--data", data_dir, "--out_dir", tmp_path / "never", *teacher, *flags)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert not (tmp_path / "never").exists()
