"""Several processes (DDP over gloo, on this CPU): every rank takes the same decisions, so none waits alone in a
collective, and no trainable parameter goes without a gradient."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import REPO, run_cli


def test_a_reward_head_on_an_untied_model_trains_under_ddp(tiny_checkpoint, tmp_path):
    """A classifier head reads the hidden state, so the LM head gets no gradient: left trainable, DDP stops at the
    second step ("Expected to have finished reduction in the prior iteration")."""
    rows = tmp_path / "orm.jsonl"
    rows.write_text("".join(json.dumps({"question_id": str(i // 2), "prompt": f"Question {i // 2}?",
                                        "response": f"Answer {i}.", "label": i % 2}) + "\n" for i in range(16)))  # fmt: skip
    out = tmp_path / "out"
    done = run_cli("finetune_orm", tiny_checkpoint, "--data", rows, "--head", "classifier", "--mode", "full",
                   "--devices", "2", "--strategy", "ddp", "--precision", "32-true", "--out_dir", out,
                   "--train.max_steps", "3", "--train.epochs", "null", "--train.global_batch_size", "4",
                   "--train.micro_batch_size", "2", "--train.lr_warmup_steps", "0", "--train.log_interval", "1",
                   "--eval.interval", "100", "--eval.max_iters", "1", timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 3
    assert (out / "final" / "orm_head.pth").is_file()
    import torch

    final = torch.load(out / "final" / "lit_model.pth", weights_only=True, map_location="cpu")
    base = torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True, map_location="cpu")
    assert not torch.equal(final["transformer.h.0.attn.qkv.weight"], base["transformer.h.0.attn.qkv.weight"])
    assert torch.equal(final["lm_head.weight"], base["lm_head.weight"])  # frozen: no reader, no gradient


def test_several_teachers_train_under_ddp_with_different_routes_on_each_rank(pair, tmp_path):
    """Records alternate between two teachers, so in a step one rank may hold parts of both and the other of one:
    DDP must see one forward per backward on every rank (a second wrapped forward left the ranks waiting on each
    other: the run hung), and the per-teacher figures are reduced over the ranks in one order."""
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    teacher, student = pair
    other = make_tiny_checkpoint(out_dir=tmp_path / "other", n_layer=1, n_embd=96, seed=11, tokenizer_from=teacher)
    rows = tmp_path / "routed.json"
    rows.write_text(json.dumps([{"instruction": f"Question {i}?", "output": f" Answer {i}.",
                                 "teacher": "a" if i % 3 else "b"} for i in range(16)]))  # fmt: skip
    teachers = json.dumps([{"name": "a", "teacher": str(teacher)}, {"name": "b", "teacher": str(other)}])
    out = tmp_path / "out"
    done = run_cli("finetune_kd", student, "--data", rows, "--data.route_field", "teacher", "--teachers", teachers,
                   "--mode", "full", "--devices", "2", "--strategy", "ddp", "--precision", "32-true", "--out_dir", out,
                   "--train.max_steps", "3", "--train.epochs", "null", "--train.global_batch_size", "4",
                   "--train.micro_batch_size", "2", "--train.lr_warmup_steps", "0", "--train.log_interval", "1",
                   "--eval.interval", "2", "--eval.max_iters", "1", timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if "loss" in r]
    assert len(train) == 3 and all(r["records_a"] + r["records_b"] == 4 for r in train)  # both ranks' records
    assert any("val_records_a" in r for r in logged)


_STOP_ON_ONE_RANK = textwrap.dedent("""
    import sys
    import lightning as L
    import torch

    from litgpt_ext.errors import ResumableStop
    from litgpt_ext.training.ranks import compute_on_every_rank

    class Remote:
        remote = True

        def compute(self, model, batch):
            if batch["fail"]:
                raise ResumableStop("the teacher server went away")
            return torch.ones(()), {}

    def main(fabric):
        seen = []
        for step in range(3):
            try:
                compute_on_every_rank(fabric, Remote(), None, {"fail": step == 1 and fabric.global_rank == 1})
                seen.append("ok")
            except ResumableStop as stop:
                seen.append(f"stop: {stop}")
                break
        fabric.barrier()  # both ranks reach it: neither is left in a collective
        print(f"rank {fabric.global_rank}: {seen}", flush=True)

    L.Fabric(accelerator="cpu", devices=2, strategy="ddp").launch(main)
""")


def test_a_stop_on_one_rank_stops_every_rank(tmp_path):
    """A server teacher that fails on one rank's batch: every rank raises at the same step (the loop then saves the
    same resumable checkpoint on all of them) instead of one rank saving while the other waits in the all-reduce."""
    script = tmp_path / "stop.py"
    script.write_text(_STOP_ON_ONE_RANK)
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0: ['ok', \"stop: another rank's teacher stopped answering\"]" in done.stdout, done.stdout
    assert "rank 1: ['ok', 'stop: the teacher server went away']" in done.stdout, done.stdout
