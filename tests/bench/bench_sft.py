"""``make bench-sft``: finetune_sft vs litgpt's own finetune_lora — same model, data and batch settings, one run.

Model: a random-init ~35M-parameter llama-style checkpoint (make_tiny_checkpoint) with a 32,000-row vocabulary
(Llama-2 / Mistral size), the shape of a small distillation student. Data: long document-style prompts with short
answers (the distillation shape), litgpt JSON, answer-only loss in both (litgpt gets ``--data.mask_prompt true``). Both use LoRA r=8 on query/value, fp32, the same micro/global batch and steps.

Throughput is compared like for like: non-padding tokens / training-loop seconds, from each tool's own report
(litgpt's "Tokens w/ Prompt" and "Training Time"; ours performance.json). litgpt's own Tok/sec (which counts
padding) is shown too. Peak RSS is each child process's own maximum resident set (wait4 rusage).
Contenders run interleaved over ``--rounds`` (median and spread), ours with and without ``--train.group_by_length``.
Goal: tokens/s >= 3x litgpt's at <= 0.6x its peak RSS.

``--checkpoint DIR`` runs the same contenders on a real checkpoint instead (``make bench-real``: SmolLM2-135M-Instruct,
30 layers, 576 wide, a 49,152-token vocabulary, tied embeddings), both with the Alpaca prompt style so they see the
same tokens, --steps steps (default 8 there). Goal there: >= 2x litgpt's tokens/s at <= 0.7x its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from tests.bench.common import REPO, run_measured, spread, table


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
    parser.add_argument("--steps", type=int, default=0, help="steps per run; 0 (default): one epoch, 380 samples")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the contenders")
    parser.add_argument("--checkpoint", type=Path, help="a real litgpt checkpoint instead of the random-init one")
    parser.add_argument("--precision", default="32-true", help="both contenders' --precision (bf16-true on a GPU)")
    args = parser.parse_args()
    real = args.checkpoint is not None
    if real and not args.steps:
        args.steps = 8
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
        steps = 3 if args.smoke else args.steps  # 0: one whole epoch (grouping reorders samples within it)
        ckpt = args.checkpoint or tmp / "ckpt"
        if not real:
            run_measured([py, "-m", "litgpt_ext", "make_tiny_checkpoint", "--out_dir", str(ckpt), *size,
                          "--block_size", "1024"])  # fmt: skip
        make_data(tmp / "data.json", 400)
        common = [
            "--precision",
            args.precision,
            "--train.global_batch_size",
            "16",
            "--train.micro_batch_size",
            "4",
            *(["--train.max_steps", str(steps)] if steps else ["--train.epochs", "1"]),
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

        def ours_run(name: str, *extra: str):
            child = run_measured(
                [py, "-m", "litgpt_ext", "finetune_sft", str(ckpt), "--data", "SFTData", "--data.path",
                 str(tmp / "data.json"), "--data.val_split_fraction", "0.05", "--data.prompt_style", "alpaca",
                 "--out_dir", str(tmp / name), *common, *extra]
            )  # fmt: skip
            perf = json.loads((tmp / name / "performance.json").read_text())
            return {"tps": perf["tokens_per_second"], "rss": child.peak_rss_mb, "tokens": perf["tokens"],
                    "seconds": perf["training_seconds"], "wall": child.seconds}  # fmt: skip

        def litgpt_run():
            child = run_measured(
                [py, "-m", "litgpt_ext", "finetune_lora", str(ckpt), "--data", "JSON", "--data.json_path",
                 str(tmp / "data.json"), "--data.val_split_fraction", "0.05", "--data.mask_prompt", "true",
                 "--data.num_workers", "0", "--out_dir", str(tmp / "lit"), *common]
            )  # fmt: skip
            tokens = int(re.search(r"Tokens w/ Prompt\s*:\s*(\d+)", child.stdout).group(1))
            seconds = float(re.search(r"Training Time\s*:\s*([\d.]+)", child.stdout).group(1))
            own = float(re.search(r"Tok/sec\s*:\s*([\d.]+)", child.stdout).group(1))
            return {"tps": tokens / seconds, "rss": child.peak_rss_mb, "tokens": tokens, "seconds": seconds,
                    "wall": child.seconds, "own": own}  # fmt: skip

        contenders = {
            "finetune_sft": lambda: ours_run("ours"),
            "finetune_sft --train.group_by_length true": lambda: ours_run("grouped", "--train.group_by_length", "true"),
            "litgpt finetune_lora": litgpt_run,
        }
        runs = {name: [] for name in contenders}
        for _ in range(1 if args.smoke else args.rounds):  # interleaved: A B C A B C ...
            for name, run in contenders.items():
                runs[name].append(run())
        params = re.search(
            r"([\d.]+)M params",
            run_measured(
                [
                    py,
                    "-c",
                    f"import torch; sd=torch.load('{ckpt / 'lit_model.pth'}', mmap=True); "
                    "u={v.data_ptr(): v.numel() for v in sd.values()}; "
                    f'print(f"{{sum(u.values())/1e6:.1f}}M params")',
                ]
            ).stdout,
        ).group(1)
    lit = runs["litgpt finetune_lora"]
    name = f"{args.checkpoint.name} ({params}M params)" if real else f"{params}M-param random-init model"
    print(
        f"\nbench-sft: {name}, {f'{steps} steps' if steps else 'one epoch'} x 16 samples a step "
        f"(micro-batch 4), LoRA r=8, {args.precision}, {'CUDA' if torch.cuda.is_available() else 'CPU'}, "
        f"{len(lit)} interleaved rounds, median (min-max)"
        if not args.smoke
        else "\nbench-sft (smoke)"
    )
    rows = [("", "tokens/s (non-padding)", "ratio to litgpt", "peak RSS MB", "RSS ratio", "tokens trained")]
    lit_tps, lit_rss = statistics.median(r["tps"] for r in lit), statistics.median(r["rss"] for r in lit)
    ratios = {}
    for name, rs in runs.items():
        tps = [r["tps"] for r in rs]
        ratios[name] = (statistics.median(tps) / lit_tps, statistics.median(r["rss"] for r in rs) / lit_rss)
        rows.append(
            (name, spread(tps), spread([t / lit_tps for t in tps], "{:.2f}"), spread([r["rss"] for r in rs]),
             f"{ratios[name][1]:.2f}", f"{rs[0]['tokens']:,}")
        )  # fmt: skip
    rows.append(("litgpt's own Tok/sec (w/ padding)", spread([r["own"] for r in lit]), "", "", "", ""))
    print(table(rows))
    if not args.smoke:
        best = max(ratios.values())
        speed, memory = (2, 0.7) if real else (3, 0.6)
        met = best[0] >= speed and best[1] <= memory
        print(
            f"goal (tokens/s >= {speed}x litgpt at <= {memory}x peak RSS): {'MET' if met else 'NOT MET'}"
            f" (best: {best[0]:.2f}x at {best[1]:.2f}x RSS)"
        )


if __name__ == "__main__":
    main()
