"""``make bench-orm``: reward-model scoring (orm_score vs transformers ``AutoModelForSequenceClassification``) and
reward-model training (finetune_orm --head classifier vs finetune_sft), in one run.

Model: the ~35M-parameter llama-style checkpoint (32k vocabulary) with a classifier head; transformers loads its
``export_hf`` copy. Scoring workload: length-mixed rows (5-250 words, uniform; both sides cut rows to the 512-token context), the same batch size, fp32 CPU.
Each side is timed from its first row to its last (model loading excluded): ours through ``orm_score`` (streamed
JSONL, tokenization, length-sorted batches, last-token head, fsync'd output); transformers as a user would write it
— rows in input order, HF tokenizer with padding to the batch's longest, ``model(**batch).logits``. Training: the same
rows, LoRA r=8, same batch settings; finetune_sft learns the " Yes"/" No" answer token on them (its LM head over
the vocabulary), finetune_orm the classifier head; tokens/s from each run's performance.json. Contenders run
interleaved; the table shows the median and min-max.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from tests.bench.common import REPO, run_measured, spread, table

HF_SCORER = r"""
import json, sys, time, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model_dir, rows_file, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(model_dir)
tok.padding_side, tok.truncation_side = "right", "left"  # as orm_score: keep the end of long rows
model = AutoModelForSequenceClassification.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
rows = [json.loads(l) for l in open(rows_file)]
t0 = time.perf_counter()
scores = []
with torch.no_grad():
    for i in range(0, len(rows), batch):
        texts = [f"Question: {r['question']}\nSQL: {r['sql']}\nIs the SQL correct?" for r in rows[i : i + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=model.config.max_position_embeddings)
        scores += torch.softmax(model(**enc).logits, -1)[:, 1].tolist()
print(json.dumps({"rows": len(scores), "seconds": time.perf_counter() - t0}))
"""


def make_rows(path: Path, n: int, seed: int = 0) -> None:
    words = (REPO / "artifacts/demo/corpus.txt").read_text().split()
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = rng.randint(5, 250)
        rows.append(
            {
                "id": f"q{i // 4}#{i % 4}",
                "question_id": f"q{i // 4}",
                "question": " ".join(rng.choices(words, k=5)),
                "sql": " ".join(rng.choices(words, k=length)),
                "label": i % 2,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def ours_score(ckpt: Path, rows: Path, out: Path, batch: int) -> float:
    out.unlink(missing_ok=True)
    run = run_measured(
        [
            sys.executable,
            "-m",
            "litgpt_ext",
            "orm_score",
            str(ckpt),
            "--input",
            str(rows),
            "--output",
            str(out),
            "--batch_size",
            str(batch),
            "--precision",
            "32-true",
        ]  # fmt: skip
    )
    line = next(ln for ln in run.stdout.splitlines() if "rows scored in" in ln)
    n = int(line.split(" rows")[0].replace(",", ""))
    seconds = float(line.split("rows scored in ")[1].split("s")[0])
    return n / seconds


def hf_score(hf: Path, rows: Path, batch: int) -> float:
    run = run_measured([sys.executable, "-c", HF_SCORER, str(hf), str(rows), str(batch)])
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return result["rows"] / result["seconds"]


def train(command: str, ckpt: Path, data: Path, out: Path, steps: int) -> float:
    extra = ["--head", "classifier"] if command == "finetune_orm" else ["--data.prompt_style", "default"]
    data_flag = ["--data", str(data)] if command == "finetune_orm" else ["--data", "SFTData", "--data.path", str(data)]
    run_measured(
        [
            sys.executable,
            "-m",
            "litgpt_ext",
            command,
            str(ckpt),
            *data_flag,
            *extra,
            "--out_dir",
            str(out),
            "--mode",
            "lora",
            "--precision",
            "32-true",
            *(["--train.max_steps", str(steps), "--train.epochs", "null"] if steps else ["--train.epochs", "1"]),
            "--train.global_batch_size",
            "16",
            "--train.micro_batch_size",
            "8",
            "--train.lr_warmup_steps",
            "0",
            "--train.save_interval",
            "100000",
            "--eval.interval",
            "100000",
            "--eval.final_validation",
            "false",
            "--eval.initial_validation",
            "false",
        ]  # fmt: skip
    )
    perf = json.loads((out / "performance.json").read_text())
    TOKENS.setdefault(command, []).append(perf["tokens"])
    return perf["tokens_per_second"]


TOKENS: dict[str, list[int]] = {}
"""Tokens each training run trained on (both contenders must see the same rows for tokens/s to compare)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, few rows, one round")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    # one whole epoch each: a few steps would compare different rows (the two data modules split and shuffle
    # differently, and these rows range from 5 to 250 words), not the two objectives
    n, rounds, steps = (48, 1, 2) if args.smoke else (args.rows, args.rounds, 0)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        size = (
            ["--n_layer", "2", "--n_embd", "64", "--n_head", "4"]
            if args.smoke
            else ["--n_layer", "6", "--n_embd", "384", "--n_head", "6", "--vocab_size", "4096", "--padded_vocab_size", "32000"]
        )  # fmt: skip
        run_measured([py, "-m", "litgpt_ext", "make_tiny_checkpoint", "--out_dir", str(tmp / "base"), *size,
                      "--block_size", "512"])  # fmt: skip
        ckpt = tmp / "orm"
        shutil.copytree(tmp / "base", ckpt)
        sys.path.insert(0, str(REPO))
        import torch
        from litgpt.config import Config

        n_embd = Config.from_file(ckpt / "model_config.yaml").n_embd
        torch.manual_seed(0)
        torch.save({"weight": torch.randn(2, n_embd) * 0.02}, ckpt / "orm_head.pth")
        (ckpt / "orm_config.json").write_text(json.dumps({"head": "classifier", "num_labels": 2, "orm_prompt": None}))
        run_measured([py, "-m", "litgpt_ext", "export_hf", str(ckpt), "--out_dir", str(tmp / "hf")])
        rows = tmp / "rows.jsonl"
        make_rows(rows, n)
        sft_rows = tmp / "sft.json"
        sft_rows.write_text(
            json.dumps(
                [
                    {"instruction": f"Question: {r['question']}\nSQL: {r['sql']}\nIs the SQL correct?",
                     "output": " Yes" if r["label"] else " No"}
                    for r in map(json.loads, rows.read_text().splitlines())
                ]
            )
        )  # fmt: skip
        results: dict[str, list[float]] = {}
        for r in range(rounds):
            for name, fn in (
                ("orm_score", lambda: ours_score(ckpt, rows, tmp / "scored.jsonl", args.batch)),
                ("transformers", lambda: hf_score(tmp / "hf", rows, args.batch)),
                ("finetune_orm", lambda r=r: train("finetune_orm", tmp / "base", rows, tmp / f"orm-{r}", steps)),
                ("finetune_sft", lambda r=r: train("finetune_sft", tmp / "base", sft_rows, tmp / f"sft-{r}", steps)),
            ):
                results.setdefault(name, []).append(fn())
                print(f"round {r + 1}/{rounds} {name}: {results[name][-1]:,.1f}", flush=True)
    score_ratio = [a / b for a, b in zip(results["orm_score"], results["transformers"])]
    train_ratio = [a / b for a, b in zip(results["finetune_orm"], results["finetune_sft"])]
    header = "bench-orm (smoke)" if args.smoke else (
        f"bench-orm: ~35M-param llama-style model, 32k vocab, fp32 CPU; {n} length-mixed rows (5-250 words, cut to the 512-token context on both sides), "
        f"batch {args.batch}; {rounds} interleaved rounds: median (min-max)"
    )  # fmt: skip
    print("\n" + header)
    print(
        table(
            [
                ("", "ours", "baseline", "ratio"),
                (
                    "scoring rows/s (orm_score vs transformers SeqCls)",
                    spread(results["orm_score"]),
                    spread(results["transformers"]),
                    spread(score_ratio, "{:.2f}"),
                ),
                (
                    "training tokens/s (finetune_orm classifier vs finetune_sft)",
                    spread(results["finetune_orm"]),
                    spread(results["finetune_sft"]),
                    spread(train_ratio, "{:.2f}"),
                ),
                (
                    "tokens trained per run (one epoch)",
                    spread(TOKENS.get("finetune_orm", [0])),
                    spread(TOKENS.get("finetune_sft", [0])),
                    "",
                ),
            ]  # fmt: skip
        )
    )
    if not args.smoke:
        ok = statistics.median(score_ratio) >= 1.5 and statistics.median(train_ratio) >= 1.0
        print(f"goal (scoring ratio >= 1.5; the head costs no more than the LM head): {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
