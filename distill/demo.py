"""``make demo``, after the demo task's pipeline on the real SmolLM2-135M-Instruct student (``make report TASK=demo``,
see ``artifacts/tasks/demo.mk``: teacher, LoRA-distilled student in its chat template, its fidelity on held-out
records next to the untrained instruct model, the cost/speed report) and the same task on a tiny random-init student
(``TASK=demo-tiny``): the stages outside a task pipeline — Q/A SFT with test-split evaluation, exports, batch
generation in shards scored by hand, preference pairs + DPO, text-to-SQL labels and reward models, logit
distillation — offline, on the embedded data and the tiny students (each stage needs a second model or many runs,
which a CPU affords at that size). It ends with the tables users decide by: the Q/A student on its test split, the
real student's fidelity to the teacher, teacher cost vs student speed, and the distillation comparison.

Each stage is the real ``litgpt-ext`` command a user would type (run as a subprocess), so the demo doubles as a
copy-paste guide. Outputs go to ``artifacts/runs/demo/`` (git-ignored); a summary is printed at the end.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "artifacts" / "demo"
RUN = REPO / "artifacts" / "runs" / "demo"
TINY = RUN / "tiny"
"""The demo task on the tiny student (``make report TASK=demo-tiny``): the base of the stages here."""


def litgpt_ext(*args: object) -> None:
    """Run one CLI stage, echoing the command like a user would type it."""
    cmd = ["litgpt-ext", *map(str, args)]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "litgpt_ext", *cmd[1:]], check=True, cwd=REPO)
    print(f"  ({time.perf_counter() - t0:.1f}s)", flush=True)


def litgpt_ext_side_by_side(*commands: tuple) -> None:
    """Run independent CLI stages at the same time, as many as there are cores, each with its share of the cores as
    torch threads (oversubscribed threads spin against each other), then echo each command with its output, in order,
    as :func:`litgpt_ext` does. Their imports and model loads — most of a short stage — overlap."""
    import os

    cores = os.cpu_count() or 1
    width = max(1, min(len(commands), cores))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // width))}
    results: list[tuple[list[str], subprocess.CompletedProcess, float]] = []
    pending = list(commands)
    while pending:
        batch, pending = pending[:width], pending[width:]
        started = []
        for args in batch:
            cmd = ["litgpt-ext", *map(str, args)]
            proc = subprocess.Popen([sys.executable, "-m", "litgpt_ext", *cmd[1:]], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
            started.append((cmd, proc, time.perf_counter()))
        for cmd, proc, t0 in started:
            output, _ = proc.communicate()
            results.append((cmd, subprocess.CompletedProcess(cmd, proc.returncode, output), time.perf_counter() - t0))
    for cmd, done, seconds in results:
        print(f"\n$ {shlex.join(cmd)}", flush=True)
        print(done.stdout.rstrip())
        print(f"  ({seconds:.1f}s, side by side)", flush=True)
    for _, done, _ in results:
        done.check_returncode()


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


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


KD_STEPS = 300
ONPOLICY_STEPS = 100
KD_ROWS = {
    "sft": "SFT on the teacher's text",
    "kd": "KD (forward KL, tau 2, alpha 0.5)",
    "onpolicy": f"SFT + {ONPOLICY_STEPS} on-policy (lambda 1, rev. KL)",
}


def format_kd_table(table: dict) -> str:
    """The distillation comparison: a smaller student against its teacher on the held-out records."""
    lines = [
        f"== logit distillation: a 1-layer student of the distilled student, {KD_STEPS} steps each "
        f"(on-policy: +{ONPOLICY_STEPS} from the SFT one), 80 held-out records ==",
        f"  {'':<38} {'KL(t||s)':>9} {'KL(s||t)':>9} {'top-1 agr.':>11} {'items F1':>9} {'exact':>7}",
    ]
    for name, row in table.items():
        lines.append(
            f"  {KD_ROWS.get(name, name):<38} {row['forward_kl']:>9.4f} {row['reverse_kl']:>9.4f} "
            f"{row['top1_agreement']:>11.4f} {row['items_f1']:>9.3f} {row['exact_match']:>7.3f}"
        )
    return "\n".join(lines)


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


def _preference_stage(student: Path) -> list[tuple[str, Path]]:
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


def _sql_stage(student: Path) -> list[tuple[str, Path]]:
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


def _reward_stage(student: Path) -> list[tuple[str, Path]]:
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


def teacher_text_data(prompts: Path, generations: Path) -> list[dict]:
    """litgpt JSON rows (``instruction`` = the prompt, ``output`` = the teacher's first generation), joined by id:
    a local teacher's answers as training data for its student."""
    import json

    text = {json.loads(line)["id"]: json.loads(line)["prompt"] for line in prompts.read_text().splitlines()}
    rows = []
    for line in generations.read_text().splitlines():
        row = json.loads(line)
        if row.get("generations"):
            rows.append({"id": row["id"], "instruction": text[row["id"]], "output": row["generations"][0]})
    return rows


def _kd_stage(student: Path) -> list[tuple[str, Path]]:
    """Logit distillation against imitation: the distilled student becomes the teacher of a smaller student (1 layer,
    64 wide, the teacher's tokenizer), trained the same steps on the same prompts three ways — finetune_sft on the
    teacher's greedy answers, finetune_kd on its distribution over those answers, and finetune_kd on-policy (the
    student's own samples, scored by the teacher) — then measured on the 80 held-out records: KL to the teacher and
    top-1 agreement (evaluate_kd), and items F1 against the teacher's answers."""
    import json

    from litgpt_ext.io import atomic_write_json

    kd = RUN / "kd"
    teacher, data = TINY / "sft-distilled" / "final", kd / "data"
    # the teacher's answers (the pipeline's generate and fidelity stages) as litgpt JSON: train on the training
    # prompts' answers, measure on the held-out ones
    print("\n# the teacher's greedy answers as litgpt JSON (train.json: training prompts, val.json: held-out)")
    atomic_write_json(
        data / "train.json",
        teacher_text_data(TINY / "distilled" / "prompts.jsonl", TINY / "distilled_generations.jsonl"),
    )
    atomic_write_json(data / "val.json", teacher_text_data(TINY / "heldout" / "prompts.jsonl", TINY / "fidelity.jsonl"))
    small = kd / "student"
    if not (small / "lit_model.pth").is_file():
        litgpt_ext("make_tiny_checkpoint", "--out_dir", rel(small), "--n_layer", 1, "--n_embd", 64, "--n_head", 4,
                   "--tokenizer_from", rel(teacher))  # fmt: skip
    common = [
        "--data", rel(data), "--data.prompt_style", "default", "--mode", "full", "--precision", "32-true",
        "--train.max_steps", KD_STEPS, "--train.epochs", "null", "--train.global_batch_size", 16,
        "--train.micro_batch_size", 16, "--train.lr_warmup_steps", 10, "--train.log_interval", 100,
        "--eval.interval", 1000, "--eval.max_iters", 10, "--optimizer.lr", 3e-3,
    ]  # fmt: skip
    runs = {"sft": kd / "sft-on-text", "kd": kd / "kd", "onpolicy": kd / "kd-onpolicy"}
    # trained one after the other: each training uses every core (side by side they would contend for them)
    litgpt_ext("finetune_sft", rel(small), "--out_dir", rel(runs["sft"]), *common)
    litgpt_ext("finetune_kd", rel(small), "--teacher", rel(teacher), "--beta", 0.0, "--temperature", 2.0,
               "--kd_ratio", 0.5, "--out_dir", rel(runs["kd"]), *common)  # fmt: skip
    # on-policy (GKD, lambda 1): every batch's answers are the student's own samples, scored by the teacher. As GKD
    # does, it starts from the SFT student: a random-init student's samples are noise the teacher cannot correct
    # (measured: from scratch at 300 steps it ends at KL 3.6, items F1 0)
    onpolicy = [*common[: common.index("--train.max_steps")], "--train.max_steps", ONPOLICY_STEPS,
                *common[common.index("--train.max_steps") + 2 :]]  # fmt: skip
    litgpt_ext("finetune_kd", rel(runs["sft"] / "final"), "--teacher", rel(teacher), "--lmbda", 1.0, "--beta", 1.0,
               "--kd_ratio", 1.0, "--gen.max_new_tokens", 32, "--out_dir", rel(runs["onpolicy"]),
               *onpolicy)  # fmt: skip
    for name in runs:
        (kd / f"{name}.heldout.jsonl").unlink(missing_ok=True)
    litgpt_ext_side_by_side(
        *[("evaluate_kd", rel(out / "final"), "--teacher", rel(teacher), "--data", rel(data), "--data.prompt_style",
           "default", "--split", "val", "--output", rel(kd / f"{name}.kl.json")) for name, out in runs.items()],
        *[("generate_batch", rel(out / "final"), "--input", rel(TINY / "heldout" / "prompts.jsonl"), "--output",
           rel(kd / f"{name}.heldout.jsonl"), "--max_new_tokens", 32, "--temperature", 0, "--precision", "32-true")
          for name, out in runs.items()],
    )  # fmt: skip
    litgpt_ext_side_by_side(
        *[("evaluate_generations", "--input", rel(kd / f"{name}.heldout.jsonl"), "--reference",
           rel(TINY / "fidelity.jsonl"), "--reference_field", "generations", "--items", "lines", "--output_dir",
           rel(kd / f"{name}.fidelity")) for name in runs]
    )  # fmt: skip
    table = {}
    for name in runs:
        kl = json.loads((kd / f"{name}.kl.json").read_text())
        fidelity = json.loads((kd / f"{name}.fidelity" / "metrics.json").read_text())
        table[name] = {
            "forward_kl": kl["forward_kl"],
            "reverse_kl": kl["reverse_kl"],
            "top1_agreement": kl["top1_agreement"],
            "items_f1": fidelity["items"]["f1"],
            "exact_match": fidelity["exact_match"],
        }
    atomic_write_json(kd / "comparison.json", table)
    return [("logit distillation vs SFT on the teacher's text", kd / "comparison.json")]


STAGES = [_preference_stage, _sft_stage, _export_stage, _generate_stage, _sql_stage, _reward_stage, _kd_stage]


if __name__ == "__main__":
    main()
