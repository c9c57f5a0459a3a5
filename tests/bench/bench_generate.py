"""``make bench-generate``: generate_batch vs transformers ``generate`` vs litgpt's generate, in one run.

Model: a ~56M-parameter llama-style student (32k vocabulary) trained briefly on Q/A data whose answers have three
lengths (a sentence, a paragraph, a long story), so generations end with EOS at varied lengths; exported with
``export_hf`` for transformers. Prompts: 512 questions behind a document of random length, 16-512 tokens.
All three decode greedily, fp32, up to 128 new tokens:
* ``generate_batch``: continuous batching, ``--max_batch_size 32``;
* transformers ``generate``: left padding, batches of 32 sorted longest-first (the reference pipeline);
* litgpt: ``litgpt.generate.base.generate`` one prompt at a time (what ``litgpt generate`` runs), on a subset
  (a rate).
Reported: generated tokens/s (EOS and padding excluded) and the ratios. Goal: >= 2x transformers, >= 10x litgpt.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from tests.bench.common import REPO, run_measured, table

STYLE = "Question: {}\nAnswer:"


def _data(n: int, seed: int, words: list[str], max_doc_words: int) -> list[dict]:
    rng = random.Random(seed)
    towns = ["Avalon", "Brindle", "Corvane", "Dunmere", "Elsworth", "Farrow", "Ivel", "Jasper", "Kestrel", "Marrow"]
    goods = ["salt", "glass", "timber", "honey", "wool", "copper"]
    rows = []
    for _ in range(n):
        town, good = rng.choice(towns), rng.choice(goods)
        doc = " ".join(rng.choices(words, k=rng.randint(0, max_doc_words)))
        kind = rng.randrange(3)
        if kind == 0:
            q, a = f"What does {town} sell?", f"{town} sells {good}."
        elif kind == 1:
            q, a = (
                f"Describe {town}.",
                (
                    f"{town} is a quiet town by the river. Its market sells {good} and its roofs "
                    f"are red. People come from far away to see it."
                ),
            )
        else:
            q, a = (
                f"Tell the story of {town}.",
                " ".join(
                    f"Long ago {town} was a village of {good} makers. The river brought traders every spring, and the "
                    f"village grew into a town with a market, a bridge and a school."
                    for _ in range(2)
                ),
            )
        rows.append({"Question": (doc + "\n" if doc else "") + q, "Answer": a})
    return rows


def _train_student(tmp: Path, smoke: bool) -> tuple[Path, Path]:
    py = sys.executable
    size = (
        ["--n_layer", "2", "--n_embd", "64", "--n_head", "4"]
        if smoke
        else [
            "--n_layer",
            "8",
            "--n_embd",
            "512",
            "--n_head",
            "8",
            "--vocab_size",
            "4096",
            "--padded_vocab_size",
            "32000",
        ]
    )
    run_measured(
        [py, "-m", "litgpt_ext", "make_tiny_checkpoint", "--out_dir", str(tmp / "base"), "--block_size", "1024", *size]
    )
    words = (REPO / "artifacts/demo/corpus.txt").read_text().split()
    (tmp / "qa.json").write_text(json.dumps({"train": _data(800, 0, words, 12)}))
    steps = "10" if smoke else "60"
    run_measured(
        [
            py,
            "-m",
            "litgpt_ext",
            "finetune_sft",
            str(tmp / "base"),
            "--data",
            str(tmp / "qa.json"),
            "--out_dir",
            str(tmp / "sft"),
            "--mode",
            "full",
            "--precision",
            "32-true",
            "--train.max_steps",
            steps,
            "--train.epochs",
            "null",
            "--train.global_batch_size",
            "16",
            "--train.micro_batch_size",
            "16",
            "--train.lr_warmup_steps",
            "10",
            "--optimizer.lr",
            "2e-3",
            "--eval.interval",
            "100000",
            "--eval.final_validation",
            "false",
            "--train.save_interval",
            "100000",
        ]
    )
    run_measured(
        [
            py,
            "-m",
            "litgpt_ext",
            "export_hf",
            str(tmp / "sft" / "final"),
            "--out_dir",
            str(tmp / "hf"),
            "--dtype",
            "fp32",
        ]
    )
    return tmp / "sft" / "final", tmp / "hf"


def _prompts(n: int, tokenizer, seed: int = 1) -> list[dict]:
    words = (REPO / "artifacts/demo/corpus.txt").read_text().split()
    rng = random.Random(seed)
    rows = []
    for i, row in enumerate(_data(10 * n, seed, words, 400)):
        length = len(tokenizer.encode(STYLE.format(row["Question"])))
        if 16 <= length <= 512:
            rows.append({"id": str(i), "prompt": row["Question"], "tokens": length})
        if len(rows) == n:
            break
    rng.shuffle(rows)
    return rows


def bench_ours(ckpt: Path, prompts: list[dict], tmp: Path, batch: int, max_new: int) -> tuple[float, int]:
    inp = tmp / "prompts.jsonl"
    inp.write_text("".join(json.dumps({"id": p["id"], "prompt": p["prompt"]}) + "\n" for p in prompts))
    result = run_measured(
        [
            sys.executable,
            "-m",
            "litgpt_ext",
            "generate_batch",
            str(ckpt),
            "--input",
            str(inp),
            "--output",
            str(tmp / "ours.jsonl"),
            "--max_new_tokens",
            str(max_new),
            "--temperature",
            "0",
            "--precision",
            "32-true",
            "--max_batch_size",
            str(batch),
        ]
    )
    m = re.search(r"([\d,]+) generated tokens in ([\d.]+)s", result.stdout)
    return int(m.group(1).replace(",", "")) / float(m.group(2)), int(m.group(1).replace(",", ""))


@torch.inference_mode()
def bench_transformers(hf: Path, prompts: list[dict], batch: int, max_new: int) -> tuple[float, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(hf)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    ordered = sorted(prompts, key=lambda p: -p["tokens"])
    generated, t0 = 0, time.perf_counter()
    for start in range(0, len(ordered), batch):
        texts = [STYLE.format(p["prompt"]) for p in ordered[start : start + batch]]
        enc = tok(texts, return_tensors="pt", padding=True)
        out = model.generate(
            **enc, max_new_tokens=max_new, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
        new = out[:, enc["input_ids"].shape[1] :]
        for row in new.tolist():
            generated += row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
    return generated / (time.perf_counter() - t0), generated


@torch.inference_mode()
def bench_litgpt(ckpt: Path, prompts: list[dict], max_new: int) -> tuple[float, int]:
    from litgpt.config import Config
    from litgpt.generate.base import generate
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer

    model = GPT(Config.from_file(ckpt / "model_config.yaml"))
    state = torch.load(ckpt / "lit_model.pth")
    model.load_state_dict(state.get("model", state))
    model.eval()
    tok = Tokenizer(ckpt)
    generated, t0 = 0, time.perf_counter()
    for p in prompts:
        ids = tok.encode(STYLE.format(p["prompt"]))
        model.set_kv_cache(batch_size=1, max_seq_length=len(ids) + max_new)
        out = generate(model, ids, max_returned_tokens=len(ids) + max_new, temperature=0.0, eos_id=tok.eos_id)
        new = out[len(ids) :].tolist()
        generated += len(new) - (1 if new and new[-1] == tok.eos_id else 0)
        model.clear_kv_cache()
    return generated / (time.perf_counter() - t0), generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, few prompts: checks the harness only")
    args = parser.parse_args()
    n, litgpt_n, batch, max_new = (16, 4, 8, 16) if args.smoke else (512, 48, 32, 128)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt, hf = _train_student(tmp, args.smoke)
        from litgpt.tokenizer import Tokenizer

        prompts = _prompts(n, Tokenizer(ckpt))
        ours, ours_tokens = bench_ours(ckpt, prompts, tmp, batch, max_new)
        hf_rate, hf_tokens = bench_transformers(hf, prompts, batch, max_new)
        lit_rate, lit_tokens = bench_litgpt(ckpt, prompts[:litgpt_n], max_new)
        state = torch.load(ckpt / "lit_model.pth")
        params = sum(t.numel() for t in state.get("model", state).values()) / 1e6
        lengths = [p["tokens"] for p in prompts]
        finished = [json.loads(line)["generated_tokens"][0] for line in (tmp / "ours.jsonl").read_text().splitlines()]
    print(
        f"\nbench-generate: {params:.0f}M-param model, {len(prompts)} prompts of {min(lengths)}-{max(lengths)} "
        f"tokens, greedy, max_new_tokens {max_new}, batch {batch}, fp32, {torch.get_num_threads()} CPU threads"
    )
    print(
        f"generated lengths (ours): min {min(finished)}, median {sorted(finished)[len(finished) // 2]}, "
        f"max {max(finished)}"
    )
    print(
        table(
            [
                ("", "generated tokens/s", "tokens generated", "ours / this"),
                ("generate_batch (continuous batching)", f"{ours:,.1f}", f"{ours_tokens:,}", ""),
                (
                    "transformers generate (sorted static batches)",
                    f"{hf_rate:,.1f}",
                    f"{hf_tokens:,}",
                    f"{ours / hf_rate:.2f}x",
                ),
                (
                    f"litgpt generate, one prompt at a time ({len(prompts[:litgpt_n])} prompts)",
                    f"{lit_rate:,.1f}",
                    f"{lit_tokens:,}",
                    f"{ours / lit_rate:.2f}x",
                ),
            ]
        )
    )
    if not args.smoke:
        met = ours / hf_rate >= 2.0 and ours / lit_rate >= 10.0
        print(f"goal (>= 2x transformers and >= 10x litgpt): {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
