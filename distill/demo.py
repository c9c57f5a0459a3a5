"""``make demo``, after the demo task's pipeline on the real SmolLM2-135M-Instruct student (``make report TASK=demo``,
see ``artifacts/tasks/demo.mk``: teacher, LoRA-distilled student in its chat template, its fidelity on held-out
records next to the untrained instruct model, the cost/speed report) and the same task on a tiny random-init student
(``TASK=demo-tiny``): the stages outside a task pipeline — the real SmolLM2 as a local teacher behind ``serve_batch``
queried by ``distill_query``, Q/A SFT with test-split evaluation, exports, batch
generation in shards scored by hand, preference pairs + DPO, text-to-SQL labels and reward models, logit
distillation — offline, on the embedded data and the tiny students (each stage needs a second model or many runs,
which a CPU affords at that size). It ends with the tables users decide by: the Q/A student on its test split, the
real student's fidelity to the teacher, teacher cost vs student speed, and the distillation comparison.

Each stage is the real ``litgpt-ext`` command a user would type (run as a subprocess), so the demo doubles as a
copy-paste guide. Outputs go to ``artifacts/runs/demo/`` (git-ignored); a summary is printed at the end.
"""

from __future__ import annotations

from pathlib import Path

from distill.demo_feedback import preference_stage, reward_stage, sql_stage
from distill.demo_kd import format_kd_table, kd_stage
from distill.demo_serve import local_teacher_stage
from distill.demo_steps import DEMO_DATA, REPO, RUN, TINY, litgpt_ext, litgpt_ext_side_by_side, rel


def main() -> None:
    """The stages outside a task pipeline, after the demo tasks' pipelines (``make report TASK=demo`` and
    ``TASK=demo-tiny``: teacher, convert, tokenize, student, export, generate, fidelity, report), which ``make demo``
    runs first."""
    student, report = TINY / "student", RUN / "report.json"
    for needed in (report, TINY / "report.json"):
        if not needed.is_file():
            raise SystemExit(f"{rel(needed)} is missing: run `make demo` (it runs the demo tasks' pipelines first)")
    summary = [
        ("SmolLM2-135M-Instruct (the real student)", REPO / "checkpoints" / "HuggingFaceTB" / "SmolLM2-135M-Instruct"),
        ("teacher responses (cache)", RUN / "responses.jsonl"),
        ("distilled chat-template data (train.pt)", RUN / "distilled"),
        ("SmolLM2 + LoRA trained on distilled data", RUN / "sft-distilled" / "final"),
        ("distilled SmolLM2 for Hugging Face", RUN / "hf-distilled"),
        ("fidelity on held-out records (per row)", RUN / "fidelity" / "rows.csv"),
        ("fidelity + cost/speed report", report),
        ("tiny student checkpoint", student),
        ("tiny student trained on distilled data", TINY / "sft-distilled" / "final"),
    ]
    for stage in STAGES:
        summary.extend(stage(student))

    print("\n== demo finished ==")
    for what, path in summary:
        print(f"  {what:<42} {rel(path)}")
    _print_results()


def _print_results() -> None:
    """The numbers users decide by, from the files the stages wrote."""
    import json

    from distill.report import format_report
    from litgpt_ext.evaluate.command import format_table

    test = json.loads((RUN / "sft" / "test" / "metrics.json").read_text())
    print()
    print(format_table(test, "Q/A student on the test split (finetune_sft --eval.test)"))
    print(format_report(json.loads((RUN / "report.json").read_text())))
    print(format_kd_table(json.loads((RUN / "kd" / "comparison.json").read_text())))


def _sft_stage(student: Path) -> list[tuple[str, Path]]:
    """Finetune the student on the Q/A data with finetune_sft (full weights, the one Fabric loop), then generate."""
    out = RUN / "sft"
    litgpt_ext(
        "finetune_sft",
        rel(student),
        "--data",
        rel(DEMO_DATA / "qa.json"),
        "--out_dir",
        rel(out),
        "--mode",
        "full",
        "--precision",
        "32-true",
        "--train.max_steps",
        150,
        "--train.epochs",
        "null",
        "--train.global_batch_size",
        16,
        "--train.micro_batch_size",
        16,
        "--train.lr_warmup_steps",
        10,
        "--train.save_interval",
        50,
        "--train.log_interval",
        10,
        "--optimizer.lr",
        3e-3,
        "--eval.interval",
        50,
        "--eval.max_iters",
        4,
        "--eval.generate_samples",
        4,
        "--eval.max_new_tokens",
        16,
        "--eval.text_metrics",
        "true",
        "--eval.test",
        "true",
    )
    litgpt_ext(
        "generate",
        rel(out / "final"),
        "--prompt",
        "What does Ivel sell?",
        "--max_new_tokens",
        12,
        "--precision",
        "32-true",
        "--temperature",
        0.1,
    )
    return [
        ("finetuned checkpoint", out / "final"),
        ("best checkpoint", out / "best"),
        ("loss curve", out / "loss.png"),
        ("metrics", out / "metrics.jsonl"),
        ("generated validation answers", out / "eval"),
        ("test-split answers + scores", out / "test"),
    ]


def _export_stage(student: Path) -> list[tuple[str, Path]]:
    """Export for Hugging Face: the fully finetuned Q/A student as a model, and the DPO LoRA run as a PEFT adapter
    on its base, the distilled student the pipeline exported."""
    hf, adapter = RUN / "hf", RUN / "hf-adapter"
    litgpt_ext_side_by_side(
        ("export_hf", rel(RUN / "sft" / "final"), "--out_dir", rel(hf), "--overwrite", "true"),
        ("export_hf", rel(RUN / "dpo" / "final"), "--out_dir", rel(adapter), "--format", "peft", "--base_model",
         rel(TINY / "hf-distilled"), "--overwrite", "true"),
    )  # fmt: skip
    return [("Hugging Face model", hf), ("PEFT adapter (DPO) on the distilled student", adapter)]


def _generate_stage(student: Path) -> list[tuple[str, Path]]:
    """The evaluation recipe by hand: answer the Q/A test split in two shards (continuous batching), merge them and
    score the answers — the numbers finetune_sft --eval.test wrote, from the commands a user runs on any model."""
    import json

    out = RUN / "test_generations.jsonl"
    for old in RUN.glob("test_generations*.jsonl"):  # the student was just retrained: earlier outputs are stale
        old.unlink()
    # the two shards run side by side, as two array tasks of a cluster job would
    litgpt_ext_side_by_side(
        *[("generate_batch", rel(RUN / "sft" / "final"), "--input", rel(DEMO_DATA / "qa.json"), "--split", "test",
           "--output", rel(out), "--max_new_tokens", 16, "--temperature", 0, "--precision", "32-true", "--shard", shard)
          for shard in ("0/2", "1/2")]
    )  # fmt: skip
    shards = sorted(RUN.glob("test_generations.shard-*-of-00002.jsonl"))
    litgpt_ext("generate_merge", "--inputs", "[" + ", ".join(rel(p) for p in shards) + "]", "--output", rel(out))
    scored = RUN / "test_generations.eval"
    litgpt_ext("evaluate_generations", "--input", rel(out), "--reference_field", "Answer", "--output_dir", rel(scored))
    by_hand = json.loads((scored / "metrics.json").read_text())
    in_training = json.loads((RUN / "sft" / "test" / "metrics.json").read_text())
    same = all(by_hand[k] == in_training[k] for k in ("bleu", "rougeL", "exact_match"))
    print(f"  the same scores as finetune_sft --eval.test: {'yes' if same else 'NO'}")
    return [("test-split generations (merged shards)", out), ("their scores", scored)]


STAGES = [
    local_teacher_stage,
    preference_stage,
    _sft_stage,
    _export_stage,
    _generate_stage,
    sql_stage,
    reward_stage,
    kd_stage,
]


if __name__ == "__main__":
    main()
