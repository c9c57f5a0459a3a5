"""``make spider-study``: a real teacher makes a real student better on a real task, scored by the task's own evaluator.

Spider's dev set is split **by database**: the questions on half of the 20 databases are the records the teacher
answers (its SQL is the only label the student sees; gold SQL never reaches training), the questions on the other
half are held out (databases the student never saw). Teacher: Qwen2.5-Coder-0.5B-Instruct (from its GGUF on PyPI),
served by the project's own ``serve_batch`` and queried by ``distill_query`` as OpenAI would be. Student:
SmolLM2-135M-Instruct in its chat template. Rows, each scored by Spider's evaluator on the held-out half: the teacher,
the untrained student, SFT on the teacher's SQL, SFT on the answers that run and return rows on the schema's test-suite
database. Every stage writes its output under ``artifacts/runs/spider-study/`` and is skipped when that output exists
(the study resumes where it stopped); ``table.md`` is what docs/spider.md shows, ``table.json`` adds the minutes
each stage took.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "artifacts" / "runs" / "spider-study"
SPIDER = REPO / "data" / "spider"
TEACHER = REPO / "checkpoints" / "Qwen" / "Qwen2.5-Coder-0.5B-Instruct"
STUDENT = REPO / "checkpoints" / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
PROMPT = REPO / "prompts" / "text_to_sql.md"


def cli(*args, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "litgpt_ext", *map(str, args)]
    print("$ litgpt-ext " + " ".join(map(str, args)), flush=True)
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})})
    if done.returncode not in (0, 3):
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, args))}")


def split_by_database(dev: list[dict]) -> tuple[list[str], list[str]]:
    """Two halves of the databases with about as many questions each: largest first, each to the smaller half."""
    counts = Counter(r["db_id"] for r in dev)
    halves: tuple[list[str], list[str]] = ([], [])
    sizes = [0, 0]
    for db_id, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        side = 0 if sizes[0] <= sizes[1] else 1
        halves[side].append(db_id)
        sizes[side] += n
    return halves


def write_questions(dev: list[dict], db_ids: list[str], path: Path) -> None:
    chosen = set(db_ids)
    path.write_text("".join(json.dumps({"id": str(i), "db_id": r["db_id"], "question": r["question"],
                                        "gold_sql": r["query"]}) + "\n"
                            for i, r in enumerate(dev) if r["db_id"] in chosen))  # fmt: skip


def prompts_and_messages(questions: Path, out: Path) -> tuple[Path, Path]:
    """generate_batch prompts (``distill_sql_candidates``) and the same prompts as chat messages for the teacher."""
    prompts, messages = out.with_suffix(".prompts.jsonl"), out.with_suffix(".messages.jsonl")
    if not prompts.is_file():
        cli("distill_sql_candidates", "--questions", questions, "--db_dir", SPIDER / "database", "--output", prompts,
            "--template", PROMPT)  # fmt: skip
    if not messages.is_file():
        rows = [json.loads(line) for line in prompts.read_text().splitlines()]
        messages.write_text("".join(json.dumps({"id": r["id"], "messages": [{"role": "system", "content": r["system"]},
                                                {"role": "user", "content": r["prompt"]}]}) + "\n" for r in rows))  # fmt: skip
    return prompts, messages


def teacher_answers(message_files: list[Path], outputs: list[Path], max_tokens: int) -> None:
    """The teacher behind ``serve_batch``, asked by ``distill_query`` (greedy), for every file not yet answered."""
    todo = [(m, o) for m, o in zip(message_files, outputs) if not o.with_suffix(".done").is_file()]
    if not todo:
        return
    lines: list[str] = []
    server = subprocess.Popen([sys.executable, "-m", "litgpt_ext", "serve_batch", str(TEACHER), "--model_name",
                               "qwen-coder", "--port", "0", "--max_batch_size", "32"], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True).start()
    try:
        url = None
        for _ in range(600):
            if found := next((re.search(r"at (http://\S+/v1)", x) for x in list(lines) if "http://" in x), None):
                url = found.group(1)
                break
            if server.poll() is not None:
                raise SystemExit("serve_batch exited:\n" + "".join(lines[-20:]))
            time.sleep(0.5)
        for messages, responses in todo:  # distill_query's output is its cache: a rerun sends only what is missing
            cli("distill_query", "--messages", messages, "--model", "qwen-coder", "--base_url", url, "--out",
                responses, "--max_tokens", max_tokens, "--temperature", "0", "--concurrency", "32",
                env={"OPENAI_API_KEY": "local"})  # fmt: skip
            responses.with_suffix(".done").touch()
        import httpx

        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        if "requests_total 0\n" not in metrics:  # a rerun that found every answer cached sent nothing
            (OUT / "teacher_server_metrics.txt").write_text(metrics)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)


def response_texts(responses: Path) -> dict[str, str]:
    texts = {}
    for line in responses.read_text().splitlines():
        row = json.loads(line)
        if row.get("choices"):
            for rid in row.get("ids", [row.get("id")]):
                texts[str(rid)] = row["choices"][0].get("content") or ""
    return texts


def as_predictions(texts: dict[str, str], path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": rid, "output": t}) + "\n" for rid, t in texts.items()))
    return path


def sft_data(prompts: Path, texts: dict[str, str], path: Path, filtered: bool) -> int:
    """Chat rows (the student's template) whose answer is the teacher's SQL in a fence; ``filtered``: only answers
    that run on the schema's test-suite database and return rows (no gold involved)."""
    from distill.spider.databases import suite_paths
    from distill.sql.extract import extract_sql
    from distill.sql.sandbox import open_readonly, run_query

    rows = []
    for line in prompts.read_text().splitlines():
        p = json.loads(line)
        sql = extract_sql(texts.get(p["id"], ""))
        if not sql:
            continue
        if filtered:
            conn = open_readonly(suite_paths(SPIDER / "test_suite", p["db_id"], 1)[0])
            try:
                result = run_query(conn, sql, 5.0, max_rows=1)
            finally:
                conn.close()
            if not (result["ok"] and result["rows"]):
                continue
        rows.append({"messages": [{"role": "system", "content": p["system"]}, {"role": "user", "content": p["prompt"]},
                                  {"role": "assistant", "content": f"```sql\n{sql}\n```"}]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def student_predictions(checkpoint: Path, prompts: Path, out: Path, max_new_tokens: int) -> Path:
    if not out.is_file():
        cli("generate_batch", checkpoint, "--input", prompts, "--output", out, "--max_new_tokens", max_new_tokens,
            "--max_batch_size", 32)  # fmt: skip
    return out


def score(name: str, predictions: Path, heldout: Path, field: str = "auto") -> dict:
    out_dir = predictions.with_suffix(".spider")
    metrics = out_dir / "metrics.json"
    if not metrics.is_file():
        cli("evaluate_spider", "--predictions", predictions, "--spider_dir", SPIDER, "--questions", heldout,
            "--prediction_field", field, "--output_dir", out_dir)  # fmt: skip
    m = json.loads(metrics.read_text())
    return {"row": name, **{lv: m[lv] for lv in ("easy", "medium", "hard", "extra", "all")}}


_LORA = ["--mode", "lora", "--lora_r", 16, "--lora_alpha", 32, "--lora_projection", "true", "--lora_mlp", "true",
         "--optimizer.lr", 5e-4]  # fmt: skip
_FULL = ["--mode", "full", "--optimizer.lr", 1e-4]
STUDENTS = {
    "sft": {
        "flags": _LORA,
        "epochs": 2,
        "max_time": 900,
        "label": "SFT on the teacher's SQL ({n} answers), LoRA, 15 min",
    },
    "sft_filtered": {
        "flags": _LORA,
        "epochs": 2,
        "max_time": 900,
        "label": "SFT on the teacher's SQL that runs and returns rows ({n}), LoRA, 15 min",
    },
    "full": {
        "flags": _FULL,
        "epochs": 3,
        "max_time": 2400,
        "label": "SFT on the teacher's SQL ({n} answers), full weights, 3 epochs",
    },
    "full_filtered": {
        "flags": _FULL,
        "epochs": 3,
        "max_time": 2100,
        "label": "SFT on the teacher's SQL that runs and returns rows ({n}), full weights, 3 epochs",
    },
}
"""Each trained student: its data (``filtered`` in the name: by execution), its flags, epochs and time cap (s)."""


def execution_vote(samples: Path, prompts: Path, out: Path) -> Path:
    """One answer per question from several samples, chosen without gold: the samples are run on the question's
    database (the first of its suite, in the sandbox); among those that run and return rows, the largest group with
    the same result wins (the first sample of it is the answer); when none runs, the first sample."""
    from distill.spider.databases import suite_paths
    from distill.sql.extract import extract_sql
    from distill.sql.sandbox import open_readonly, run_query

    db_of = {json.loads(line)["id"]: json.loads(line)["db_id"] for line in prompts.read_text().splitlines()}
    chosen = []
    for line in samples.read_text().splitlines():
        row = json.loads(line)
        sqls = [extract_sql(g) for g in row.get("generations", [])]
        conn = open_readonly(suite_paths(SPIDER / "test_suite", db_of[row["id"]], 1)[0])
        groups: dict[str, list[str]] = {}
        try:
            for sql in sqls:
                result = run_query(conn, sql, 5.0, max_rows=1000) if sql else {"ok": False}
                if result["ok"] and result["rows"]:
                    key = repr(sorted(map(repr, result["rows"])))
                    groups.setdefault(key, []).append(sql)
        finally:
            conn.close()
        best = max(groups.values(), key=len) if groups else [sqls[0] if sqls else ""]
        chosen.append({"id": row["id"], "output": best[0]})
    out.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max_tokens", type=int, default=160, help="most tokens of a teacher or student answer")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS),
                        help="which trained students to make and score (STUDENTS: data, mode, epochs, time cap)")  # fmt: skip
    parser.add_argument("--best_of", type=int, default=4, help="samples per question for the execution-vote row")
    parser.add_argument("--best_of_student", default="full_filtered", help="the student whose samples are voted on")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    minutes_file = OUT / "minutes.json"  # summed over invocations: a resumed study adds its stages' time
    minutes: dict[str, float] = json.loads(minutes_file.read_text()) if minutes_file.is_file() else {}

    def stage(name: str, fn, *a):
        t0 = time.perf_counter()
        result = fn(*a)
        minutes[name] = minutes.get(name, 0) + (time.perf_counter() - t0) / 60
        minutes_file.write_text(json.dumps(minutes, indent=1))
        return result

    from distill.spider.data import distill_spider_data

    stage("data", distill_spider_data, SPIDER)
    dev = json.loads((SPIDER / "dev.json").read_text())
    train_dbs, heldout_dbs = split_by_database(dev)
    train_q, heldout_q = OUT / "train_questions.jsonl", OUT / "heldout_questions.jsonl"
    write_questions(dev, train_dbs, train_q)
    write_questions(dev, heldout_dbs, heldout_q)
    train_prompts, train_msgs = stage("prompts", prompts_and_messages, train_q, OUT / "train")
    heldout_prompts, heldout_msgs = stage("prompts", prompts_and_messages, heldout_q, OUT / "heldout")

    teacher_train, teacher_heldout = OUT / "teacher_train.responses.jsonl", OUT / "teacher_heldout.responses.jsonl"
    stage("teacher (serve_batch + distill_query)", teacher_answers, [train_msgs, heldout_msgs],
          [teacher_train, teacher_heldout], args.max_tokens)  # fmt: skip
    rows = [stage("score", score, "teacher: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, fp32 litgpt)",
                  as_predictions(response_texts(teacher_heldout), OUT / "teacher_heldout.predictions.jsonl"),
                  heldout_q)]  # fmt: skip

    untrained = stage("student generate", student_predictions, STUDENT, heldout_prompts,
                      OUT / "student_untrained.jsonl", args.max_tokens)  # fmt: skip
    rows.append(stage("score", score, "student untrained: SmolLM2-135M-Instruct", untrained, heldout_q))

    texts = response_texts(teacher_train)
    counts = {}
    for variant in args.students:
        filtered, spec = "filtered" in variant, STUDENTS[variant]
        data = OUT / f"{'sft_filtered' if filtered else 'sft'}.train.jsonl"
        counts[variant] = stage("data", sft_data, train_prompts, texts, data, filtered)
        run_dir = OUT / variant
        if not (run_dir / "final" / "lit_model.pth").is_file():
            stage(f"train {variant}", cli, "finetune_sft", STUDENT, "--data", data, "--out_dir", run_dir,
                  *spec["flags"], "--train.epochs", spec["epochs"], "--train.global_batch_size", 8,
                  "--train.micro_batch_size", 4, "--train.max_time", spec["max_time"], "--train.max_seq_length", 1024,
                  "--train.group_by_length", "true", "--eval.interval", 1000000)  # fmt: skip
        gen = stage("student generate", student_predictions, run_dir / "final", heldout_prompts,
                    OUT / f"{variant}_heldout.jsonl", args.max_tokens)  # fmt: skip
        rows.append(stage("score", score, spec["label"].format(n=counts[variant]), gen, heldout_q))
        if variant == args.best_of_student and args.best_of > 1:
            samples = OUT / f"{variant}_heldout.samples{args.best_of}.jsonl"
            if not samples.is_file():
                stage("student generate", cli, "generate_batch", run_dir / "final", "--input", heldout_prompts,
                      "--output", samples, "--max_new_tokens", args.max_tokens, "--max_batch_size", 32,
                      "--num_samples", args.best_of, "--temperature", 0.8, "--top_p", 0.95, "--seed", 0)  # fmt: skip
            voted = stage("vote", execution_vote, samples, heldout_prompts,
                          OUT / f"{variant}_heldout.vote{args.best_of}.jsonl")  # fmt: skip
            rows.append(stage("score", score, f"{variant} + best of {args.best_of} samples by execution vote (no ORM)",
                              voted, heldout_q))  # fmt: skip

    teacher_ex = rows[0]["all"]["execution"]
    lines = [
        "| row | held-out questions | execution (suite) | exact-set-match | execution easy / medium / hard / extra "
        "| of the teacher's execution |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        a = r["all"]
        per = " / ".join(f"{r[lv]['execution']:.3f}" for lv in ("easy", "medium", "hard", "extra"))
        share = f"{a['execution'] / teacher_ex:.0%}" if teacher_ex else "-"
        lines.append(f"| {r['row']} | {a['count']} | {a['execution']:.3f} | {a['exact']:.3f} | {per} | {share} |")
    table = "\n".join(lines) + "\n"
    (OUT / "table.md").write_text(table)
    (OUT / "table.json").write_text(json.dumps({"rows": rows, "minutes": minutes, "train_databases": train_dbs,
                                                "heldout_databases": heldout_dbs, "sft_rows": counts}, indent=1))  # fmt: skip
    print(table)
    print("minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items()))


if __name__ == "__main__":
    main()
