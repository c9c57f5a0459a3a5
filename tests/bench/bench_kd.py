"""``make bench-kd``: finetune_kd vs TRL's GKDTrainer (``lmbda=0``, off-policy) on the same teacher, student and tokens.

Models: a random-init ~35M-parameter llama-style student (bench-dpo's: 6 layers, 384 wide, a 32,000-row vocabulary)
and a teacher twice as deep (12 layers) with the student's tokenizer, both exported with ``export_hf`` for TRL.
Data: SFT examples in the distillation shape (a document prompt of 100-400 tokens, a short answer), tokenized once
with the raw prompt style and handed to both trainers. Both sides: the same micro-batch, gradient accumulation,
steps, learning rate, beta 0.5 (GKD's default), pure distillation (our --kd_ratio 1, TRL's loss), fp32; LoRA r=8 /
alpha 16 on query and value, or full weights. Also ours offline: distill_logprobs stores the teacher's top-20 once
(its positions/s is printed), then finetune_kd --teacher_logprobs trains with no teacher in memory.

Throughput is non-padding tokens (prompt included) per second of the training loop (ours: performance.json; TRL:
tokens counted in compute_loss, first step start -> last step end). Peak RSS is each child process's own maximum
resident set. Contenders run interleaved per round; the table shows the median and the min-max of the rounds.
Goal: tokens/s ratio >= 2 and peak RSS ratio <= 0.6, LoRA and full.

On-policy workload (``--workload onpolicy``): GKD with lmbda 1 — every micro-batch's answers are sampled from the
current student (ours: the continuous-batching engine; TRL: transformers ``generate`` inside ``training_step``),
then scored by the teacher and trained on with reverse KL (beta 1), both at GKD's temperature 0.9 for sampling and
loss, up to --max_new_tokens new tokens, LoRA. Measured: optimizer steps per second of the training loop
(generation included), peak RSS, and the generated-length distribution of each side (a random-init student rarely
samples EOS, so most completions run to the limit: the table says how many). Goal: steps/s ratio >= 3 at a peak
RSS ratio <= 1.

Divergences (``--workload divergences``, also part of ``all``): ours online, LoRA, forward KL next to each other
``--divergence`` (skew KL, skew reverse KL, adaptive KL) on the same models and steps, interleaved: what each costs.

``--checkpoint DIR`` makes that real checkpoint the teacher (``make bench-real``: SmolLM2-135M-Instruct, 30 layers,
a 49,152-token vocabulary) of a random-init student on its tokenizer (6 layers, 384 wide), off-policy workload by
default; ``--precision`` sets every contender's precision, TRL's included (32-true, bf16-mixed or bf16-true; bf16-true
on a GPU).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from tests.bench.common import REPO, run_measured, spread, table

PY = sys.executable
PRECISION = "32-true"


def make_examples(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    lines = (REPO / "artifacts/demo/corpus.txt").read_text().splitlines()
    paragraphs = [line for line in lines if " is a small town" in line]
    towns = [line.split(" is a small town")[0] for line in paragraphs]
    rows = []
    for i in range(n):
        doc = " ".join(rng.sample(paragraphs, k=rng.randint(2, 6)))
        town = rng.choice(towns)
        rows.append({"id": f"ex-{i}", "instruction": f"Read the document and write a search query about {town}.\n\n"
                     f"{doc}\n\nQuery:", "output": f" {town} market and river facts"})  # fmt: skip
    path.write_text(json.dumps(rows))


def tokenized(student: Path, data: Path, out: Path) -> None:
    """The training split as ours sees it (SFTData, raw style, the same seeded val split), for TRL."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.sft import SFTData

    module = SFTData(path=data, prompt_style="default", val_split_fraction=0.02)
    module.connect(tokenizer=Tokenizer(student))
    module.setup()
    samples = [{k: v.tolist() for k, v in module.train_dataset[i].items()} for i in range(len(module.train_dataset))]
    torch.save(samples, out)


def ours(student, data, out, steps, micro, accum, lora, source: list[str], extra: tuple[str, ...] = (),
         loss: tuple[str, ...] = ("--beta", "0.5")) -> dict:  # fmt: skip
    args = [
        PY, "-m", "litgpt_ext", "finetune_kd", str(student), *source, "--data", str(data),
        "--data.prompt_style", "default", "--data.val_split_fraction", "0.02", "--out_dir", str(out),
        "--precision", PRECISION, "--kd_ratio", "1.0", *loss,
        "--train.micro_batch_size", str(micro), "--train.global_batch_size", str(micro * accum),
        "--train.max_steps", str(steps), "--train.epochs", "null", "--train.lr_warmup_steps", "0",
        "--train.save_interval", "100000", "--eval.interval", "100000", "--eval.final_validation", "false",
        "--optimizer.lr", "1e-4", "--seed", "7", *extra,
    ]  # fmt: skip
    args += ["--mode", "lora", "--lora_r", "8", "--lora_alpha", "16"] if lora else ["--mode", "full"]
    run = run_measured(args)
    perf = json.loads((out / "performance.json").read_text())
    return {"tps": perf["tokens_per_second"], "rss": run.peak_rss_mb, "wall": run.seconds,
            "steps_s": perf["optimizer_steps"] / perf["training_seconds"], "lengths": perf.get("sampled_length"),
            "gen_s": perf.get("gen_s"), "train_s": perf.get("train_s")}  # fmt: skip


def trl(student_hf, teacher_hf, samples, out, steps, micro, accum, lora, extra: tuple[str, ...] = ("--beta", "0.5")):
    run = run_measured(
        [PY, "-m", "tests.bench.trl_gkd", "--student", str(student_hf), "--teacher", str(teacher_hf),
         "--samples", str(samples), "--out", str(out), "--steps", str(steps), "--micro_batch", str(micro),
         "--accum", str(accum), "--lora_r", "8" if lora else "0", "--lr", "1e-4", "--precision", PRECISION, *extra],
        cwd=REPO,
    )  # fmt: skip
    result = json.loads(run.stdout.strip().splitlines()[-1])
    lengths = result["generated_lengths"]
    return {
        "tps": result["tokens"] / result["seconds"],
        "rss": run.peak_rss_mb,
        "wall": run.seconds,
        "steps_s": result["steps"] / result["seconds"],
        "lengths": length_summary(lengths) if lengths else None,
    }


def length_summary(lengths: list[int]) -> dict:
    ordered = sorted(lengths)
    return {"mean": round(statistics.mean(ordered), 2), "p50": ordered[len(ordered) // 2],
            "p90": ordered[int(0.9 * (len(ordered) - 1))], "max": ordered[-1], "count": len(ordered)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models, 2 steps, 1 round: checks the harness only")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workload", choices=("all", "offpolicy", "onpolicy", "divergences"), default="all")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="on-policy: longest sampled completion")
    parser.add_argument("--checkpoint", type=Path, help="a real litgpt checkpoint as the teacher")
    parser.add_argument("--precision", default="32-true", help="every contender's precision")
    args = parser.parse_args()
    global PRECISION
    PRECISION = args.precision
    real = args.checkpoint is not None
    if real and args.workload == "all":
        args.workload = "offpolicy"
    steps, rounds = (2, 1) if args.smoke else (args.steps, args.rounds)
    new_tokens = 4 if args.smoke else args.max_new_tokens
    micro, accum = 2, 4
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.smoke:
            size, deep = ["--n_layer", "1", "--n_embd", "64", "--n_head", "4"], ["--n_layer", "2"]
        else:
            size = ["--n_layer", "6", "--n_embd", "384", "--n_head", "6", "--vocab_size", "4096",
                    "--padded_vocab_size", "32000"]  # fmt: skip
            deep = ["--n_layer", "12"]
        student, teacher = tmp / "student", tmp / "teacher"
        if real:
            teacher = args.checkpoint
            run_measured([PY, "-m", "litgpt_ext", "make_tiny_checkpoint", "--out_dir", str(student), *size[:6],
                          "--block_size", "1024", "--tokenizer_from", str(teacher)])  # fmt: skip
        else:
            run_measured([PY, "-m", "litgpt_ext", "make_tiny_checkpoint", "--out_dir", str(student), *size,
                          "--block_size", "1024"])  # fmt: skip
            run_measured([PY, "-m", "litgpt_ext", "make_tiny_checkpoint", "--out_dir", str(teacher), *size, *deep,
                          "--block_size", "1024", "--tokenizer_from", str(student), "--seed", "3"])  # fmt: skip
        for ckpt in (student, teacher):
            hf = tmp / ("teacher-hf" if ckpt == teacher else "student-hf")
            run_measured([PY, "-m", "litgpt_ext", "export_hf", str(ckpt), "--out_dir", str(hf)])
        data = tmp / "data.json"
        make_examples(data, 400)
        tokenized(student, data, tmp / "samples.pt")
        if args.workload in ("all", "divergences"):
            divergences(tmp, student, teacher, data, steps, micro, accum, rounds, args.smoke)
        if args.workload == "divergences":
            return
        if args.workload in ("all", "onpolicy"):
            onpolicy(tmp, student, teacher, data, steps, micro, accum, rounds, new_tokens, args.smoke)
        if args.workload == "onpolicy":
            return
        store = tmp / "store"
        logprobs = run_measured([PY, "-m", "litgpt_ext", "distill_logprobs", str(teacher), "--data", str(data),
                                 "--data.prompt_style", "default", "--data.val_split_fraction", "0.02",
                                 "--student", str(student), "--top_k", "20", "--out", str(store),
                                 "--precision", PRECISION])  # fmt: skip
        rate = [line for line in logprobs.stdout.splitlines() if "positions/s" in line][-1]
        results: dict[str, list[dict]] = {}
        modes = ("lora",) if args.smoke else ("lora", "full")
        for r in range(rounds):
            for mode in modes:
                lora = mode == "lora"
                contenders = [
                    (f"ours-{mode}", lambda o, lora=lora: ours(student, data, o, steps, micro, accum, lora,
                                                                 ["--teacher", str(teacher)])),
                    (f"trl-{mode}", lambda o, lora=lora: trl(tmp / "student-hf", tmp / "teacher-hf",
                                                               tmp / "samples.pt", o, steps, micro, accum, lora)),
                    (f"offline-{mode}", lambda o, lora=lora: ours(student, data, o, steps, micro, accum, lora,
                                                                    ["--teacher_logprobs", str(store)])),
                ]  # fmt: skip
                for name, fn in contenders:
                    results.setdefault(name, []).append(fn(tmp / f"{name}-{r}"))
                    print(f"round {r + 1}/{rounds} {name}: {results[name][-1]}", flush=True)
    header = (
        "bench-kd (smoke)"
        if args.smoke
        else f"bench-kd: {'a 6-layer student of ' + args.checkpoint.name if real else '~35M student, ~70M teacher (12 layers), 32k vocab'}, "
        f"{PRECISION}, {'CUDA' if torch.cuda.is_available() else 'CPU'}; {steps} steps x "
        f"{micro * accum} examples (micro-batch {micro}); {rounds} interleaved rounds: median (min-max)"
    )
    print("\n" + header)
    rows = [("", "ours tokens/s", "TRL tokens/s", "ratio", "ours peak RSS MB", "TRL peak RSS MB", "ratio")]
    verdicts = []
    modes = ("lora",) if args.smoke else ("lora", "full")
    for mode in modes:
        mine, theirs = results[f"ours-{mode}"], results[f"trl-{mode}"]
        ratios = [m["tps"] / t["tps"] for m, t in zip(mine, theirs)]
        mem = [m["rss"] / t["rss"] for m, t in zip(mine, theirs)]
        rows.append((f"online, {mode}", spread([m["tps"] for m in mine]), spread([t["tps"] for t in theirs]),
                     spread(ratios, "{:.2f}"), spread([m["rss"] for m in mine]), spread([t["rss"] for t in theirs]),
                     spread(mem, "{:.2f}")))  # fmt: skip
        verdicts.append(statistics.median(ratios) >= 2 and statistics.median(mem) <= 0.6)
    for mode in modes:
        off, on = results[f"offline-{mode}"], results[f"ours-{mode}"]
        rows.append((f"ours offline top-20 vs online, {mode}", spread([o["tps"] for o in off]),
                     spread([o["tps"] for o in on]), spread([a["tps"] / b["tps"] for a, b in zip(off, on)], "{:.2f}"),
                     spread([o["rss"] for o in off]), spread([o["rss"] for o in on]),
                     spread([a["rss"] / b["rss"] for a, b in zip(off, on)], "{:.2f}")))  # fmt: skip
    print(table(rows))
    print(f"distill_logprobs (teacher top-20, once): {rate.strip()}")
    if not args.smoke:
        print(
            f"goal (tokens/s ratio >= 2 and peak RSS ratio <= 0.6, LoRA and full): {'MET' if all(verdicts) else 'NOT MET'}"
        )


def divergences(tmp, student, teacher, data, steps, micro, accum, rounds, smoke) -> None:
    """What each ``--divergence`` costs next to forward KL: ours online, LoRA, the same steps, interleaved."""
    names = {"forward KL (--beta 0)": ("--beta", "0.0"), "skew KL (alpha 0.1)": ("--divergence", "skew_kl"),
             "skew reverse KL (alpha 0.1)": ("--divergence", "skew_rkl"), "adaptive KL (mu 0.5)": ("--divergence", "akl")}  # fmt: skip
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for i, (name, loss) in enumerate(names.items()):
            results[name].append(ours(student, data, tmp / f"div-{i}-{r}", steps, micro, accum, True,
                                      ["--teacher", str(teacher)], loss=loss))  # fmt: skip
            print(f"round {r + 1}/{rounds} {name}: {results[name][-1]}", flush=True)
    base = results["forward KL (--beta 0)"]
    print(f"\nbench-kd divergences{' (smoke)' if smoke else ''}: ours online, LoRA, {steps} steps x "
          f"{micro * accum} examples; {rounds} interleaved rounds: median (min-max)")  # fmt: skip
    rows = [("divergence", "tokens/s", "vs forward KL", "peak RSS MB")]
    for name, runs in results.items():
        rows.append((name, spread([x["tps"] for x in runs]),
                     spread([x["tps"] / b["tps"] for x, b in zip(runs, base)], "{:.2f}"), spread([x["rss"] for x in runs])))  # fmt: skip
    print(table(rows))


def onpolicy(tmp, student, teacher, data, steps, micro, accum, rounds, new_tokens, smoke) -> None:
    """Ours vs GKDTrainer(lmbda=1), LoRA, interleaved rounds (see the module docstring)."""
    loss = ("--beta", "1.0", "--temperature", "0.9", "--scale_by_t2", "false")
    mine_flags = (*loss, "--lmbda", "1", "--gen.temperature", "0.9", "--gen.max_new_tokens", str(new_tokens))
    theirs_flags = ("--beta", "1.0", "--lmbda", "1", "--temperature", "0.9", "--max_new_tokens", str(new_tokens))
    results: dict[str, list[dict]] = {"ours": [], "trl": []}
    for r in range(rounds):
        results["ours"].append(ours(student, data, tmp / f"on-ours-{r}", steps, micro, accum, True,
                                    ["--teacher", str(teacher)], mine_flags))  # fmt: skip
        print(f"round {r + 1}/{rounds} on-policy ours: {results['ours'][-1]}", flush=True)
        results["trl"].append(trl(tmp / "student-hf", tmp / "teacher-hf", tmp / "samples.pt", tmp / f"on-trl-{r}",
                                  steps, micro, accum, True, theirs_flags))  # fmt: skip
        print(f"round {r + 1}/{rounds} on-policy trl: {results['trl'][-1]}", flush=True)
    mine, theirs = results["ours"], results["trl"]
    ratios = [m["steps_s"] / t["steps_s"] for m, t in zip(mine, theirs)]
    mem = [m["rss"] / t["rss"] for m, t in zip(mine, theirs)]
    header = (
        "bench-kd on-policy (smoke)"
        if smoke
        else f"bench-kd on-policy (GKD lmbda 1, beta 1, temperature 0.9, LoRA): {steps} steps x {micro * accum} "
        f"prompts (micro-batch {micro}), up to {new_tokens} new tokens; {rounds} interleaved rounds: median (min-max)"
    )
    print("\n" + header)
    rows = [("", "ours steps/s", "TRL steps/s", "ratio", "ours peak RSS MB", "TRL peak RSS MB", "ratio")]
    rows.append(("on-policy, lora", spread([m["steps_s"] for m in mine], "{:.3f}"),
                 spread([t["steps_s"] for t in theirs], "{:.3f}"), spread(ratios, "{:.2f}"),
                 spread([m["rss"] for m in mine]), spread([t["rss"] for t in theirs]), spread(mem, "{:.2f}")))  # fmt: skip
    print(table(rows))
    print(f"generated lengths, last round — ours: {mine[-1]['lengths']}; TRL: {theirs[-1]['lengths']}")
    if not smoke:
        met = statistics.median(ratios) >= 3 and statistics.median(mem) <= 1
        print(f"goal (steps/s ratio >= 3 at peak RSS ratio <= 1): {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
