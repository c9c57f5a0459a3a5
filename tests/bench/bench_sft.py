"""``make bench-sft``: finetune_sft vs litgpt's own finetune_lora — same model, data and batch settings, one run.

Model: a random-init ~35M-parameter llama-style checkpoint (make_tiny_checkpoint) with a 32,000-row vocabulary
(Llama-2 / Mistral size), the shape of a small distillation student. Data: long document-style prompts with short
answers (the distillation shape), litgpt JSON, answer-only loss in both (litgpt gets ``--data.mask_prompt true``). Both use LoRA r=8 on query/value, fp32, the same micro/global batch and steps.

Throughput is compared like for like: non-padding tokens / training-loop seconds, from each tool's own report
(litgpt's "Tokens w/ Prompt" and "Training Time"; ours performance.json). litgpt's own Tok/sec (which counts
padding) is shown too. Peak RSS is each child process's own maximum resident set (wait4 rusage).
Goal: tokens/s ratio >= 1.0 and peak RSS ratio <= 1.0.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from pathlib import Path

from tests.bench.common import REPO, run_measured, table


def make_data(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    towns = [
        line.split(" is a small town")[0]
        for line in (REPO / "artifacts/demo/corpus.txt").read_text().splitlines()
        if " is a small town" in line
    ]
    paragraphs = [
        line for line in (REPO / "artifacts/demo/corpus.txt").read_text().splitlines() if " is a small town" in line
    ]
    rows = []
    for i in range(n):
        doc = " ".join(rng.sample(paragraphs, k=rng.randint(2, 6)))
        town = rng.choice(towns)
        rows.append(
            {
                "instruction": f"Read the document and write a search query about {town}.",
                "input": doc,
                "output": f"{town} market and river facts {i % 7}",
            }
        )
    path.write_text(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model and 3 steps: checks the harness only")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
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
        steps = 3 if args.smoke else args.steps
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
        make_data(tmp / "data.json", 400)
        common = [
            "--precision",
            "32-true",
            "--train.global_batch_size",
            "16",
            "--train.micro_batch_size",
            "4",
            "--train.max_steps",
            str(steps),
            "--train.lr_warmup_steps",
            "2",
            "--train.save_interval",
            "100000",
            "--eval.interval",
            "100000",
            "--eval.max_iters",
            "2",
            "--eval.final_validation",
            "false",
            "--seed",
            "7",
            "--lora_r",
            "8",
            "--lora_alpha",
            "16",
        ]
        ours = run_measured(
            [
                py,
                "-m",
                "litgpt_ext",
                "finetune_sft",
                str(tmp / "ckpt"),
                "--data",
                "SFTData",
                "--data.path",
                str(tmp / "data.json"),
                "--data.val_split_fraction",
                "0.05",
                "--out_dir",
                str(tmp / "ours"),
                *common,
            ]
        )
        lit = run_measured(
            [
                py,
                "-m",
                "litgpt_ext",
                "finetune_lora",
                str(tmp / "ckpt"),
                "--data",
                "JSON",
                "--data.json_path",
                str(tmp / "data.json"),
                "--data.val_split_fraction",
                "0.05",
                "--data.mask_prompt",
                "true",
                "--data.num_workers",
                "0",
                "--out_dir",
                str(tmp / "lit"),
                *common,
            ]
        )
        perf = json.loads((tmp / "ours" / "performance.json").read_text())
        lit_tokens = int(re.search(r"Tokens w/ Prompt\s*:\s*(\d+)", lit.stdout).group(1))
        lit_time = float(re.search(r"Training Time\s*:\s*([\d.]+)", lit.stdout).group(1))
        lit_own = float(re.search(r"Tok/sec\s*:\s*([\d.]+)", lit.stdout).group(1))
        ours_tps, lit_tps = perf["tokens_per_second"], lit_tokens / lit_time
        params = re.search(
            r"([\d.]+)M params",
            run_measured(
                [
                    py,
                    "-c",
                    f"import torch; sd=torch.load('{tmp / 'ckpt' / 'lit_model.pth'}'); "
                    f'print(f"{{sum(v.numel() for v in sd.values())/1e6:.1f}}M params")',
                ]
            ).stdout,
        ).group(1)
    print(
        f"\nbench-sft: {params}M-param model, {steps} steps x 16 samples (micro-batch 4), LoRA r=8, fp32, CPU"
        if not args.smoke
        else "\nbench-sft (smoke)"
    )
    print(
        table(
            [
                ("", "finetune_sft (ours)", "litgpt finetune_lora", "ratio ours/litgpt"),
                ("tokens/s (non-padding)", f"{ours_tps:,.0f}", f"{lit_tps:,.0f}", f"{ours_tps / lit_tps:.2f}"),
                ("litgpt's own Tok/sec (w/ padding)", "", f"{lit_own:,.0f}", ""),
                ("tokens trained", f"{perf['tokens']:,}", f"{lit_tokens:,}", ""),
                ("training loop seconds", f"{perf['training_seconds']:.1f}", f"{lit_time:.1f}", ""),
                (
                    "command wall seconds",
                    f"{ours.seconds:.1f}",
                    f"{lit.seconds:.1f}",
                    f"{ours.seconds / lit.seconds:.2f}",
                ),
                (
                    "peak RSS MB",
                    f"{ours.peak_rss_mb:,.0f}",
                    f"{lit.peak_rss_mb:,.0f}",
                    f"{ours.peak_rss_mb / lit.peak_rss_mb:.2f}",
                ),
            ]
        )
    )
    if not args.smoke:
        ok = ours_tps / lit_tps >= 1.0 and ours.peak_rss_mb / lit.peak_rss_mb <= 1.0
        print(f"goal (tokens/s ratio >= 1.0 and peak RSS ratio <= 1.0): {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
