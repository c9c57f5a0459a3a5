"""``make demo``: the pipeline end to end, offline, on the embedded default data and tiny student.

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


def litgpt_ext(*args: object) -> None:
    """Run one CLI stage, echoing the command like a user would type it."""
    cmd = ["litgpt-ext", *map(str, args)]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "litgpt_ext", *cmd[1:]], check=True, cwd=REPO)
    print(f"  ({time.perf_counter() - t0:.1f}s)", flush=True)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def main() -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    summary: list[tuple[str, Path]] = []

    student = RUN / "student"
    litgpt_ext(
        "make_tiny_checkpoint",
        "--out_dir",
        rel(student),
        "--corpus",
        rel(DEMO_DATA / "corpus.txt"),
        "--n_layer",
        2,
        "--n_embd",
        128,
        "--n_head",
        4,
    )
    summary.append(("tiny student checkpoint", student))

    for stage in STAGES:
        summary.extend(stage(student))

    print("\n== demo finished ==")
    for what, path in summary:
        print(f"  {what:<32} {rel(path)}")


def _teacher_stage(student: Path) -> list[tuple[str, Path]]:
    """Ask the teacher for search queries (offline: the local OpenAI-compatible server plays the teacher), convert
    the answers to litgpt JSON and tokenize them with the student's tokenizer."""
    import os

    from distill.teacher.fake_server import FakeOpenAI, ServerConfig

    responses, data = RUN / "responses.jsonl", RUN / "distilled"
    with FakeOpenAI(ServerConfig(latency_s=0.05, rpm=600, fault_rate=0.1, stall_s=1.0)) as server:
        os.environ.setdefault("OPENAI_API_KEY", "sk-demo-offline")
        litgpt_ext(
            "distill_query",
            "--records",
            rel(DEMO_DATA / "records.jsonl"),
            "--prompt",
            "prompts/search_queries.md",
            "--out",
            rel(responses),
            "--model",
            "gpt-4o-mini",
            "--base_url",
            server.base_url,
            "--rpm",
            600,
            "--concurrency",
            8,
            "--timeout",
            0.5,
        )
    litgpt_ext(
        "distill_convert",
        "--records",
        rel(DEMO_DATA / "records.jsonl"),
        "--responses",
        rel(responses),
        "--out_dir",
        rel(data),
        "--instruction",
        "prompts/student_search_queries.md",
        "--parser",
        "lines",
        "--val_fraction",
        0.2,
    )
    litgpt_ext("distill_tokenize", "--data_dir", rel(data), "--checkpoint_dir", rel(student), "--max_seq_length", 256)
    out = RUN / "sft-distilled"
    litgpt_ext(
        "finetune_sft",
        rel(student),
        "--data",
        rel(data),
        "--out_dir",
        rel(out),
        "--mode",
        "lora",
        "--precision",
        "32-true",
        "--train.max_steps",
        10,
        "--train.epochs",
        "null",
        "--train.global_batch_size",
        8,
        "--train.micro_batch_size",
        8,
        "--train.lr_warmup_steps",
        2,
        "--eval.interval",
        1000,
        "--eval.max_iters",
        2,
    )
    return [
        ("teacher responses (cache)", responses),
        ("distilled litgpt JSON + train.pt", data),
        ("student trained on distilled data", out / "final"),
    ]


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
    ]


def _export_stage(student: Path) -> list[tuple[str, Path]]:
    """Export for Hugging Face: the fully finetuned student as a model, the distilled LoRA run as a PEFT adapter on
    the exported base."""
    hf, base, adapter = RUN / "hf", RUN / "hf-student-base", RUN / "hf-adapter"
    litgpt_ext("export_hf", rel(RUN / "sft" / "final"), "--out_dir", rel(hf), "--overwrite", "true")
    litgpt_ext("export_hf", rel(student), "--out_dir", rel(base), "--overwrite", "true")
    litgpt_ext(
        "export_hf",
        rel(RUN / "sft-distilled" / "final"),
        "--out_dir",
        rel(adapter),
        "--format",
        "peft",
        "--base_model",
        rel(base),
        "--overwrite",
        "true",
    )
    return [("Hugging Face model", hf), ("PEFT adapter + its base", adapter)]


def _generate_stage(student: Path) -> list[tuple[str, Path]]:
    """Batch-generate answers for every question (continuous batching), in two shards, then merge them."""
    import json

    qa = json.loads((DEMO_DATA / "qa.json").read_text())
    prompts = RUN / "questions.jsonl"
    rows = [
        {"id": f"q{i:03d}", "prompt": r["Question"], "reference": r["Answer"]}
        for i, r in enumerate(qa["train"] + qa["val"] + qa["test"])
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = RUN / "generations.jsonl"
    for old in RUN.glob("generations*.jsonl"):  # the student was just retrained: earlier outputs are stale
        old.unlink()
    for shard in ("0/2", "1/2"):
        litgpt_ext(
            "generate_batch",
            rel(RUN / "sft" / "final"),
            "--input",
            rel(prompts),
            "--output",
            rel(out),
            "--max_new_tokens",
            24,
            "--temperature",
            0,
            "--precision",
            "32-true",
            "--max_batch_size",
            16,
            "--passthrough",
            "[reference]",
            "--shard",
            shard,
        )
    shards = sorted(RUN.glob("generations.shard-*-of-00002.jsonl"))
    litgpt_ext("generate_merge", "--inputs", "[" + ", ".join(rel(p) for p in shards) + "]", "--output", rel(out))
    done = [json.loads(line) for line in out.read_text().splitlines()]
    exact = sum(r["generations"][0].strip() == r["reference"].strip() for r in done)
    print(f"  {exact}/{len(done)} generated answers equal the reference exactly")
    return [("generations (merged shards)", out)]


STAGES = [_teacher_stage, _sft_stage, _export_stage, _generate_stage]


if __name__ == "__main__":
    main()
