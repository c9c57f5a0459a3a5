"""Every finetune method, generate_batch, evaluate_kd and the on-policy sampler at the three precisions users run:
32-true, bf16-true and bf16-mixed (what CUDA gets by default). The CPU runs all three, so the matrix runs here:
on-policy KD at bf16-mixed crashed in the KV cache ("Index put requires the source and destination dtypes match")
before any test ran a -mixed precision. Each cell is a real CLI call (in this process: no new interpreter per cell)
on the tiny teacher / student pair."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import DEMO, run_in_process

PRECISIONS = ["32-true", "bf16-true", "bf16-mixed"]
STEPS = ["--train.max_steps", "2", "--train.epochs", "null", "--train.global_batch_size", "2",
         "--train.micro_batch_size", "2", "--train.lr_warmup_steps", "0", "--train.log_interval", "1",
         "--eval.interval", "100", "--eval.max_iters", "1", "--eval.initial_validation", "false"]  # fmt: skip


@pytest.fixture(scope="module")
def method_data(tmp_path_factory):
    """Four rows of each method's data, from the demo's Q/A."""
    qa = json.loads((DEMO / "qa.json").read_text())["train"][:6]
    out = tmp_path_factory.mktemp("precision-data")

    def jsonl(name, rows):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return out / name

    return {
        "pairs": jsonl("pairs.jsonl", [{"prompt": r["Question"], "chosen": " " + r["Answer"],
                                        "rejected": " I do not know."} for r in qa]),
        "orm": jsonl("orm.jsonl", [{"question_id": str(i), "prompt": r["Question"], "response": answer, "label": k}
                                   for i, r in enumerate(qa) for k, answer in ((1, r["Answer"]), (0, "no idea"))]),
        "prm": jsonl("prm.jsonl", [{"question_id": str(i), "prompt": r["Question"],
                                    "completions": ["First step.", r["Answer"]], "labels": [True, i % 2 == 0]}
                                   for i, r in enumerate(qa)]),
    }  # fmt: skip


def _losses(out) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _ok(done, out):
    assert done.returncode == 0, done.stderr[-3000:]
    losses = _losses(out)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), losses
    return losses


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_method_trains_and_generates_at_each_precision(precision, pair, data_dir, method_data, tmp_path):
    teacher, student = pair
    common = [*STEPS, "--precision", precision, "--out_dir"]
    runs = {
        "sft": ["finetune_sft", student, "--data", data_dir],
        "dpo": ["finetune_dpo", student, "--data", method_data["pairs"]],
        "orpo": ["finetune_orpo", student, "--data", method_data["pairs"]],
        "orm": ["finetune_orm", student, "--data", method_data["orm"], "--head", "classifier"],
        "prm": ["finetune_prm", student, "--data", method_data["prm"]],
        # on-policy (every micro-batch: the student's own samples, scored by the teacher)
        "kd": ["finetune_kd", student, "--teacher", teacher, "--data", data_dir, "--lmbda", "1",
               "--gen.max_new_tokens", "6"],
    }  # fmt: skip
    for name, args in runs.items():
        out = tmp_path / name
        _ok(run_in_process(*args, *common, out), out)
    kd = json.loads((tmp_path / "kd" / "kd_metadata.json").read_text())
    assert kd["performance"]["onpolicy_fraction"] == 1.0 and kd["performance"]["sampled_answers"] == 4
    final = tmp_path / "sft" / "final"
    state = torch.load(final / "lit_model.pth", weights_only=True, map_location="cpu")
    stored = {t.dtype for t in state.values()}
    base = {t.dtype for t in torch.load(student / "lit_model.pth", weights_only=True, map_location="cpu").values()}
    assert stored == ({torch.bfloat16} if precision == "bf16-true" else base), stored

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"Question {i}?"}) + "\n" for i in range(3)))
    done = run_in_process("generate_batch", final, "--input", prompts, "--output", tmp_path / "gen.jsonl",
                          "--max_new_tokens", "5", "--precision", precision)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads((tmp_path / "gen.stats.json").read_text())
    assert stats["dtype"] == ("float32" if precision == "32-true" else "bfloat16")
    done = run_in_process("evaluate_kd", student, "--teacher", teacher, "--data", data_dir, "--precision", precision,
                          "--output", tmp_path / "kd.json")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads((tmp_path / "kd.json").read_text())
    assert measured["forward_kl"] > 0 and torch.isfinite(torch.tensor(measured["forward_kl"]))


def test_half_precision_full_finetuning_is_refused_in_one_line(pair, data_dir, tmp_path):
    """bf16-true full finetuning updates bf16 weights in place; steps below their spacing are lost."""
    _, student = pair
    done = run_in_process("finetune_sft", student, "--data", data_dir, "--mode", "full", "--precision", "bf16-true",
                          *STEPS, "--out_dir", tmp_path / "out")  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: precision: bf16-true with --mode full updates bf16 weights in place, and every optimizer step smaller "
        "than a weight's bf16 spacing is lost (AdamW at lr 2e-5 on weights above ~0.005): use --precision bf16-mixed "
        "(fp32 master weights, bf16 compute) or --mode lora"
    ]
    assert not (tmp_path / "out").exists()
    # and the reason is real: one AdamW step at lr 2e-5 leaves a bf16 weight of 0.5 where it was
    weight = torch.full((4,), 0.5, dtype=torch.bfloat16, requires_grad=True)
    optimizer = torch.optim.AdamW([weight], lr=2e-5, weight_decay=0.0)
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    assert torch.equal(weight.detach(), torch.full((4,), 0.5, dtype=torch.bfloat16))


def test_frozen_teacher_follows_the_runs_precision(pair):
    """A teacher (or DPO reference) is held in the dtype the run computes in, whatever its checkpoint's dtype; its
    rope tables are real tensors on the run's device (built outside Fabric's init context, as FSDP needs)."""
    import lightning as L

    from litgpt_ext.training.reference import load_frozen_model

    teacher, _ = pair
    for precision, dtype in (("32-true", torch.float32), ("bf16-true", torch.bfloat16), ("bf16-mixed", torch.bfloat16)):
        model = load_frozen_model(L.Fabric(devices=1, precision=precision), teacher)
        assert {p.dtype for p in model.parameters()} == {dtype}, precision
        assert not any(t.is_meta for t in (*model.parameters(), model.cos, model.sin))
        assert not model.training and not any(p.requires_grad for p in model.parameters())
