"""Logit distillation beats imitation where it should: a teacher that is unsure (each river's town sells one of three
goods, 60/30/10) distilled into a smaller student at equal steps and data — SFT on the teacher's greedy answers
learns only the mode, KD learns the distribution — measured on towns neither saw."""

from __future__ import annotations

import json
import random

from litgpt_ext.finetune import kd as finetune_kd
from litgpt_ext.finetune.sft import setup as finetune_sft
from litgpt_ext.generate.command import generate_batch
from litgpt_ext.kd.evaluate import evaluate_kd
from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint
from litgpt_ext.training.args import EvalArgs, TrainArgs

RIVERS = {"Aire": ["salt", "wool", "iron"], "Dove": ["glass", "fish", "rope"], "Exe": ["wine", "bread", "silk"]}
WEIGHTS = [0.6, 0.3, 0.1]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "pe", "do"]


def _towns(rng, n):
    names = set()
    while len(names) < n:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize())
    return sorted(names)


def _prompt(town, river):
    return f"Which good comes from {town} on the {river}?"


def _train_args(steps, lr=3e-3):
    train = TrainArgs(max_steps=steps, epochs=None, global_batch_size=16, micro_batch_size=16, save_interval=None,
                      lr_warmup_steps=5, log_interval=50)  # fmt: skip
    return dict(mode="full", precision="32-true", train=train, eval=EvalArgs(interval=1000, max_iters=1,
                final_validation=False), optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": lr}})  # fmt: skip


def _rows(path, rows):
    path.write_text(json.dumps(rows))
    return path


def test_kd_matches_an_unsure_teacher_on_unseen_inputs_where_sft_on_its_text_cannot(tiny_factory, tmp_path):
    rng = random.Random(0)
    towns = _towns(rng, 60)
    seen, unseen = towns[:48], towns[48:]
    # the teacher's own data: every town with goods drawn 60/30/10 for its river
    teacher_rows = []
    for town in seen:
        river = rng.choice(list(RIVERS))
        for _ in range(6):
            good = rng.choices(RIVERS[river], WEIGHTS)[0]
            teacher_rows.append({"instruction": _prompt(town, river), "output": " " + good})
    teacher_data = tmp_path / "teacher"
    teacher_data.mkdir()
    _rows(teacher_data / "train.json", teacher_rows)
    _rows(teacher_data / "val.json", teacher_rows[:16])
    teacher_base = tiny_factory(n_embd=128)
    finetune_sft(teacher_base, data=teacher_data, out_dir=tmp_path / "t", **_train_args(160))
    teacher = tmp_path / "t" / "final"

    # the teacher's greedy answers: what "SFT on the teacher's text" learns from
    def greedy(prompts, name):
        inp = tmp_path / f"{name}.jsonl"
        inp.write_text("".join(json.dumps({"id": str(i), "prompt": p}) + "\n" for i, p in enumerate(prompts)))
        out = tmp_path / f"{name}.out.jsonl"
        generate_batch(teacher, input=inp, output=out, max_new_tokens=4, temperature=0.0, precision="32-true")
        answers = {r["id"]: r["generations"][0] for r in map(json.loads, out.read_text().splitlines())}
        return [{"instruction": p, "output": answers[str(i)]} for i, p in enumerate(prompts)]

    train_prompts = sorted({r["instruction"] for r in teacher_rows})
    heldout_prompts = [_prompt(t, rng.choice(list(RIVERS))) for t in unseen]
    data = tmp_path / "student-data"
    data.mkdir()
    _rows(data / "train.json", greedy(train_prompts, "train"))
    _rows(data / "val.json", greedy(heldout_prompts, "heldout"))

    student = make_tiny_checkpoint(out_dir=tmp_path / "s0", n_layer=1, n_embd=64, tokenizer_from=teacher)
    finetune_sft(student, data=data, out_dir=tmp_path / "sft", **_train_args(120))
    finetune_kd.setup(student, teacher=teacher, data=data, out_dir=tmp_path / "kd", kd_ratio=1.0, **_train_args(120))
    sft = evaluate_kd(tmp_path / "sft" / "final", teacher=teacher, data=data, split="val")
    kd = evaluate_kd(tmp_path / "kd" / "final", teacher=teacher, data=data, split="val")
    assert kd["forward_kl"] < 0.5 * sft["forward_kl"], (kd, sft)
    assert kd["top1_agreement"] >= sft["top1_agreement"] - 0.05
