"""``make bench-dpo``: finetune_dpo / finetune_orpo vs TRL's DPOTrainer / ORPOTrainer + peft LoRA, in one run.

Model: a random-init ~35M-parameter llama-style checkpoint (make_tiny_checkpoint) with a 32,000-row vocabulary, and
its ``export_hf`` copy for TRL. Data: preference pairs in the distillation shape (a document prompt of 100-400 tokens,
short answers). Both sides: LoRA r=8 / alpha 16 on query and value, no dropout, fp32, the same micro-batch (pairs),
gradient accumulation, steps, learning rate and beta; DPO's reference is the model with LoRA off on both sides.

Throughput is non-padding tokens (both answers of every pair, prompt included) per second of the training loop, each
tool measured the same way (ours: performance.json; TRL: tokens counted in compute_loss, first step start -> last step
end). Peak RSS is each child process's own maximum resident set (wait4 rusage). The four contenders run interleaved
(ours-DPO, TRL-DPO, ours-ORPO, TRL-ORPO, repeated); the table shows the median and the min-max of the rounds.
Goal: tokens/s ratio >= 1.5 and peak RSS ratio <= 0.7 for both methods.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

from tests.bench.common import REPO, run_measured, spread, table


def make_pairs(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    lines = (REPO / "artifacts/demo/corpus.txt").read_text().splitlines()
    paragraphs = [line for line in lines if " is a small town" in line]
    towns = [line.split(" is a small town")[0] for line in paragraphs]
    rows = []
    for i in range(n):
        doc = " ".join(rng.sample(paragraphs, k=rng.randint(2, 6)))
        town, other = rng.sample(towns, 2)
        rows.append(
            {
                "id": f"pair-{i}",
                "prompt": f"Read the document and write a search query about {town}.\n\n{doc}\n\nQuery:",
                "chosen": f" {town} market and river facts",
                "rejected": f" {other} weather {i % 5}",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def ours(method: str, ckpt: Path, data: Path, out: Path, steps: int, micro: int, accum: int) -> dict:
    py = sys.executable
    run = run_measured(
        [
            py,
            "-m",
            "litgpt_ext",
            f"finetune_{method}",
            str(ckpt),
            "--data",
            "PreferenceData",
            "--data.path",
            str(data),
            "--data.val_split_fraction",
            "0.02",
            "--out_dir",
            str(out),
            "--prompt_style",
            "default",
            "--precision",
            "32-true",
            "--train.micro_batch_size",
            str(micro),
            "--train.global_batch_size",
            str(micro * accum),
            "--train.max_steps",
            str(steps),
            "--train.epochs",
            "null",
            "--train.lr_warmup_steps",
            "0",
            "--train.save_interval",
            "100000",
            "--eval.interval",
            "100000",
            "--eval.final_validation",
            "false",
            "--optimizer.lr",
            "1e-4",
            "--lora_r",
            "8",
            "--lora_alpha",
            "16",
            "--seed",
            "7",
        ]
    )
    perf = json.loads((out / "performance.json").read_text())
    return {"tps": perf["tokens_per_second"], "rss": run.peak_rss_mb, "wall": run.seconds}


def trl(method: str, hf: Path, data: Path, out: Path, steps: int, micro: int, accum: int) -> dict:
    run = run_measured(
        [
            sys.executable,
            "-m",
            "tests.bench.trl_preference",
            "--method",
            method,
            "--model",
            str(hf),
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            str(steps),
            "--micro_batch",
            str(micro),
            "--accum",
            str(accum),
            "--lr",
            "1e-4",
        ],
        cwd=REPO,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return {"tps": result["tokens"] / result["seconds"], "rss": run.peak_rss_mb, "wall": run.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, 1 round: checks the harness only")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    steps, rounds = (2, 1) if args.smoke else (args.steps, args.rounds)
    micro, accum = 2, 4
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        size = (
            ["--n_layer", "2", "--n_embd", "64", "--n_head", "4"]
            if args.smoke
            else [
                "--n_layer",
                "6",
                "--n_embd",
                "384",
                "--n_head",
                "6",
                "--vocab_size",
                "4096",
                "--padded_vocab_size",
                "32000",
            ]
        )
        run_measured(
            [
                py,
                "-m",
                "litgpt_ext",
                "make_tiny_checkpoint",
                "--out_dir",
                str(tmp / "ckpt"),
                *size,
                "--block_size",
                "1024",
            ]
        )
        run_measured([py, "-m", "litgpt_ext", "export_hf", str(tmp / "ckpt"), "--out_dir", str(tmp / "hf")])
        make_pairs(tmp / "pairs.jsonl", 400)
        results: dict[tuple[str, str], list[dict]] = {}
        for r in range(rounds):
            for method in ("dpo", "orpo"):
                for who, fn, model in (("ours", ours, tmp / "ckpt"), ("trl", trl, tmp / "hf")):
                    out = tmp / f"{who}-{method}-{r}"
                    results.setdefault((method, who), []).append(
                        fn(method, model, tmp / "pairs.jsonl", out, steps, micro, accum)
                    )
                    print(f"round {r + 1}/{rounds} {method} {who}: {results[(method, who)][-1]}", flush=True)
    header = (
        "bench-dpo (smoke)"
        if args.smoke
        else (
            f"bench-dpo: ~35M-param llama-style model, 32k vocab, LoRA r=8 (q, v), fp32, CPU; {steps} steps x "
            f"{micro * accum} pairs (micro-batch {micro}); {rounds} interleaved rounds: median (min-max)"
        )
    )
    print("\n" + header)
    rows = [("", "ours tokens/s", "TRL tokens/s", "ratio", "ours peak RSS MB", "TRL peak RSS MB", "ratio")]
    verdicts = []
    for method in ("dpo", "orpo"):
        mine, theirs = results[(method, "ours")], results[(method, "trl")]
        ratios = [m["tps"] / t["tps"] for m, t in zip(mine, theirs)]
        mem = [m["rss"] / t["rss"] for m, t in zip(mine, theirs)]
        rows.append(
            (
                method.upper(),
                spread([m["tps"] for m in mine]),
                spread([t["tps"] for t in theirs]),
                spread(ratios, "{:.2f}"),
                spread([m["rss"] for m in mine]),
                spread([t["rss"] for t in theirs]),
                spread(mem, "{:.2f}"),
            )
        )
        verdicts.append(statistics.median(ratios) >= 1.5 and statistics.median(mem) <= 0.7)
    print(table(rows))
    if not args.smoke:
        print(
            f"goal (tokens/s ratio >= 1.5 and peak RSS ratio <= 0.7, both methods): {'MET' if all(verdicts) else 'NOT MET'}"
        )


if __name__ == "__main__":
    main()
