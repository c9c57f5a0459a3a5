"""The demo's feedback stages: preference pairs and DPO/ORPO, execution-labelled text-to-SQL data, and reward models
(ORM and PRM) trained on those labels — each on the tiny student."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from distill.demo_steps import DEMO_DATA, REPO, RUN, TINY, litgpt_ext, litgpt_ext_side_by_side, rel


def preference_stage(student: Path) -> list[tuple[str, Path]]:
    """Preference pairs from the distilled data — the teacher's answer chosen, the distilled student's sampled answer
    rejected — then DPO with LoRA on them; the teacher also grades the samples as a judge (the local server)."""
    import json
    import os

    from distill.teacher.fake_server import FakeOpenAI, ServerConfig

    data, samples, pairs = TINY / "distilled", RUN / "student_samples.jsonl", RUN / "pairs.jsonl"
    samples.unlink(missing_ok=True)  # the student was just retrained: earlier samples are stale
    litgpt_ext(
        "generate_batch",
        rel(TINY / "sft-distilled" / "final"),
        "--input",
        rel(data / "prompts.jsonl"),
        "--output",
        rel(samples),
        "--num_samples",
        2,
        "--temperature",
        1.0,
        "--max_new_tokens",
        12,
        "--precision",
        "32-true",
    )
    litgpt_ext(
        "distill_pairs",
        "--mode",
        "teacher_vs_student",
        "--records",
        rel(DEMO_DATA / "records.jsonl"),
        "--responses",
        rel(RUN / "responses.jsonl"),
        "--generations",
        rel(samples),
        "--instruction",
        "prompts/student_search_queries.md",
        "--parser",
        "lines",
        "--pairs_per_record",
        2,
        "--out",
        rel(pairs),
    )
    with FakeOpenAI(ServerConfig(latency_s=0.02, fault_rate=0.1, stall_s=1.0)) as server:
        os.environ.setdefault("OPENAI_API_KEY", "sk-demo-offline")
        litgpt_ext(
            "distill_pairs",
            "--mode",
            "judge",
            "--records",
            rel(DEMO_DATA / "records.jsonl"),
            "--generations",
            rel(samples),
            "--instruction",
            "prompts/student_search_queries.md",
            "--out",
            rel(RUN / "judged_pairs.jsonl"),
            "--teacher.base_url",
            server.base_url,
            "--teacher.concurrency",
            8,
            "--teacher.timeout",
            0.5,
        )
    out = RUN / "dpo"
    litgpt_ext(
        "finetune_dpo",
        rel(TINY / "sft-distilled" / "final"),
        "--data",
        "PreferenceData",
        "--data.path",
        rel(pairs),
        "--data.val_split_fraction",
        0.2,
        "--out_dir",
        rel(out),
        "--beta",
        0.1,
        "--precision",
        "32-true",
        "--train.max_steps",
        20,
        "--train.epochs",
        "null",
        "--train.global_batch_size",
        8,
        "--train.micro_batch_size",
        8,
        "--train.lr_warmup_steps",
        2,
        "--optimizer.lr",
        2e-3,
        "--eval.interval",
        10,
        "--eval.initial_validation",
        "true",
        "--eval.max_iters",
        8,
    )
    val = [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_rewards/accuracies" in r
    ]
    first, last = val[0], val[-1]
    print(
        f"  DPO val reward accuracy: {first['val_rewards/accuracies']:.2f} at step {first['step']} (policy = reference)"
        f" -> {last['val_rewards/accuracies']:.2f} at step {last['step']}; "
        f"margin {first['val_rewards/margins']:.3f} -> {last['val_rewards/margins']:.3f}"
    )
    return [
        ("student samples", samples),
        ("preference pairs (teacher vs student)", pairs),
        ("preference pairs (teacher as judge)", RUN / "judged_pairs.jsonl"),
        ("DPO (LoRA) checkpoint + plots", out),
    ]


def sql_stage(student: Path) -> list[tuple[str, Path]]:
    """Text-to-SQL reward data: build the fixture databases, write the student's prompts and rule-made candidates,
    sample the (untrained) student too, and label everything by executing it in the read-only sandbox."""
    import json

    sql = RUN / "sql"
    subprocess.run(
        [sys.executable, "artifacts/sql_fixture/build_fixture.py", "--out_dir", rel(sql)], check=True, cwd=REPO
    )
    questions, db_dir = sql / "questions.jsonl", sql / "database"
    litgpt_ext(
        "distill_sql_candidates",
        "--questions",
        rel(questions),
        "--db_dir",
        rel(db_dir),
        "--output",
        rel(sql / "prompts.jsonl"),
        "--template",  # the tiny student's 512-token context cannot hold a schema; real runs use the default
        "SQLite query for: {question}",
        "--mutate",
        6,
        "--mutations_output",
        rel(sql / "mutations.jsonl"),
    )
    samples = sql / "samples.jsonl"
    samples.unlink(missing_ok=True)
    litgpt_ext(
        "generate_batch",
        rel(student),
        "--input",
        rel(sql / "prompts.jsonl"),
        "--output",
        rel(samples),
        "--num_samples",
        2,
        "--temperature",
        0.8,
        "--top_k",
        50,
        "--top_p",
        0.95,
        "--max_new_tokens",
        16,
        "--precision",
        "32-true",
        "--prompt_style",
        "default",
    )
    out = sql / "v1"
    litgpt_ext(
        "distill_sql_label",
        "--questions",
        rel(questions),
        "--db_dir",
        rel(db_dir),
        "--candidates",
        f"[{rel(sql / 'mutations.jsonl')}, {rel(samples)}]",
        "--out_dir",
        rel(out),
        "--version",
        "v1",
        "--timeout_s",
        5,
    )
    summary = json.loads((out / "summary.json").read_text())
    print(
        f"  labelled: {summary['rows']} rows ({summary['positives']} positive / {summary['negatives']} negative) "
        f"from {summary['questions_labelled']} of {summary['questions']} questions; dropped: {summary['dropped']}"
    )
    return [("text-to-SQL prompts + labelled candidates", out)]


def reward_stage(student: Path) -> list[tuple[str, Path]]:
    """Outcome and process reward models on the labelled SQL candidates: an ORM classifier head (v1 rows) and a PRM
    classifier head at every step end (rule-made step labels: the changed clause is the first wrong step), both with
    LoRA; score every candidate of every question (``--version eval`` keeps them all) and rerank best-of-N with both.
    Independent commands run side by side."""
    import json
    import random

    sql = RUN / "sql"
    questions, db_dir = sql / "questions.jsonl", sql / "database"
    # best-of-N needs N candidates in sampling order: the gold + mutations, shuffled (seeded) per question
    rng = random.Random(0)
    shuffled = []
    for line in (sql / "mutations.jsonl").read_text().splitlines():
        row = json.loads(line)
        rng.shuffle(row["generations"])
        shuffled.append(json.dumps({"id": row["id"], "generations": row["generations"]}) + "\n")
    (sql / "candidates_shuffled.jsonl").write_text("".join(shuffled))
    common = ("--questions", rel(questions), "--db_dir", rel(db_dir), "--cache", rel(sql / "v1" / "exec_cache.jsonl"))
    shuffled_file = f"[{rel(sql / 'candidates_shuffled.jsonl')}]"
    litgpt_ext_side_by_side(
        ("distill_sql_label", *common, "--candidates", shuffled_file, "--out_dir", rel(sql / "eval"),
         "--version", "eval", "--split", "test"),
        ("distill_sql_label", *common, "--target", "prm", "--candidates", f"[{rel(sql / 'mutations.jsonl')}]",
         "--out_dir", rel(sql / "prm_rows"), "--version", "v2"),
        ("distill_sql_label", *common, "--target", "prm", "--candidates", shuffled_file,
         "--out_dir", rel(sql / "prm_eval"), "--version", "eval", "--split", "test"),
    )  # fmt: skip
    orm_out, prm_out = sql / "orm", sql / "prm"
    training = ("--head", "classifier", "--mode", "lora", "--lora_r", 16, "--lora_mlp", "true", "--precision",
                "32-true", "--train.epochs", "null", "--train.global_batch_size", 16, "--train.micro_batch_size", 16,
                "--train.lr_warmup_steps", 5, "--optimizer.lr", 3e-3, "--eval.initial_validation", "true",
                "--data.val_split_fraction", 0.25)  # fmt: skip
    litgpt_ext_side_by_side(
        ("finetune_orm", rel(student), "--data", "OrmData", "--data.path", rel(sql / "v1" / "train.jsonl"),
         *training, "--out_dir", rel(orm_out), "--train.max_steps", 80, "--eval.interval", 40),
        ("finetune_prm", rel(student), "--data", "PrmData", "--data.path", rel(sql / "prm_rows" / "train.jsonl"),
         *training, "--pos_weight", "auto", "--out_dir", rel(prm_out), "--train.max_steps", 150,
         "--eval.interval", 150),
    )  # fmt: skip
    orm_scored, prm_scored = sql / "eval" / "scored.jsonl", sql / "prm_eval" / "scored.jsonl"
    orm_scored.unlink(missing_ok=True)
    prm_scored.unlink(missing_ok=True)
    litgpt_ext_side_by_side(
        ("orm_score", rel(orm_out / "final"), "--input", rel(sql / "eval" / "test.jsonl"), "--output", rel(orm_scored)),
        ("prm_score", rel(prm_out / "final"), "--input", rel(sql / "prm_eval" / "test.jsonl"), "--output",
         rel(prm_scored)),
    )  # fmt: skip
    litgpt_ext(
        "orm_rerank",
        "--scored",
        f"[{rel(orm_scored)}, {rel(prm_scored)}]",
        "--labels",
        rel(sql / "eval" / "test.jsonl"),
        "--output",
        rel(sql / "rerank.json"),
    )
    print("  (the tiny student's reward models saw these questions' candidates in training; val metrics above are on")
    print("   held-out questions)")
    return [
        ("outcome reward model (classifier head) + ROC plots", orm_out),
        ("process reward model (classifier head at each step)", prm_out),
        ("best-of-N rerank report (first / self-consistency / ORM / PRM / oracle)", sql / "rerank.json"),
    ]
