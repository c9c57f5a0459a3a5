"""``make bench-generate``, workload (c): prompts that share long prefixes — generate_batch with its prefix cache vs
itself without it vs transformers ``generate``, one run, contenders interleaved.

Workload (a distillation job's shape): ``--prompts`` (256) chat rows, each one of 4 instruction blocks of 600 tokens
(a task's rules and worked examples, from the demo corpus) followed by a record of 40-120 tokens, in one user turn
behind the model's chat template; 48 greedy tokens per row (``min_new_tokens`` 48 masks EOS in ours and in
transformers, so every contender generates the same count). Rows are shuffled, so the blocks arrive interleaved.
Contenders, per round: ``generate_batch`` (``--prefix_cache`` on, its default), ``generate_batch --prefix_cache
false``, transformers ``generate`` (left padding, batches of 32 longest first), all on the same checkpoint
(``export_hf``'s folder of it for transformers) at ``--precision``.
Reported: generated tokens/s, median (min-max) over rounds, the ratios per round, the prompt tokens the cache reused,
and the checks: greedy texts identical across the three.
Goals: with the cache >= 2.5x without it and >= 4x transformers; texts identical.
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

from tests.bench.bench_generate import THREADS, Prompting, Workload, bench_ours, bench_transformers
from tests.bench.common import REPO, run_measured, spread, table

BLOCKS = 4
BLOCK_TOKENS = 600
RECORD_TOKENS = (40, 120)


def _words() -> list[str]:
    return (REPO / "artifacts/demo/corpus.txt").read_text().split()


def _fit(tokenizer, prompting: Prompting, head: str, words: list[str], tokens: int) -> str:
    """``head`` followed by as many of ``words`` as keep the text at ``tokens`` tokens or fewer (binary search)."""
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.encode(head + " ".join(words[:mid]), bos=False)) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return head + " ".join(words[:lo])


def shared_prefix_prompts(n: int, tokenizer, prompting: Prompting, block_tokens: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    words = _words()
    blocks = []
    for b in range(BLOCKS):
        start = rng.randrange(len(words) - 4 * block_tokens)
        head = f"Task {b + 1}. You read a record about a town and answer as the rules and examples below say.\n"
        blocks.append(_fit(tokenizer, prompting, head, words[start : start + 2 * block_tokens], block_tokens))
    rows = []
    for i in range(n):
        record_len = rng.randint(*RECORD_TOKENS) if block_tokens == BLOCK_TOKENS else rng.randint(8, 24)
        start = rng.randrange(len(words) - 2 * record_len)
        record = _fit(tokenizer, prompting, "\n\nRecord: ", words[start : start + record_len], record_len)
        prompt = blocks[rng.randrange(BLOCKS)] + record
        rows.append({"id": str(i), "prompt": prompt, "tokens": len(prompting.lit_ids(tokenizer, prompt))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a litgpt instruct checkpoint (SmolLM2)")
    parser.add_argument("--prompts", type=int, default=256, help="rows (default 256)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median and min-max reported)")
    parser.add_argument("--precision", default="32-true", help="every contender's precision (bf16-true on a GPU)")
    parser.add_argument("--smoke", action="store_true", help="few short rows, one round: checks the harness only")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    rounds, n, block = (1, 12, 48) if args.smoke else (args.rounds, args.prompts, BLOCK_TOKENS)
    new = 8 if args.smoke else 48
    batch = 32
    dtype = {"32-true": torch.float32, "bf16-true": torch.bfloat16, "16-true": torch.float16}[args.precision]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from litgpt.tokenizer import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from litgpt_ext.chat_template import ChatTemplate

    ckpt = args.checkpoint
    prompting = Prompting(ChatTemplate.from_checkpoint(ckpt))
    lit_tok = Tokenizer(ckpt)
    prompts = shared_prefix_prompts(n, lit_tok, prompting, block)
    w = Workload("c", 0, new, new, 0.0, None)
    results: dict[str, list[dict]] = {"cache": [], "no cache": [], "transformers": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_measured([sys.executable, "-m", "litgpt_ext", "export_hf", str(ckpt), "--out_dir", str(tmp / "hf")])
        hf = AutoModelForCausalLM.from_pretrained(tmp / "hf", dtype=dtype).to(device).eval()
        hf_tok = AutoTokenizer.from_pretrained(tmp / "hf")
        hf_tok.padding_side = "left"
        hf_tok.pad_token = hf_tok.pad_token or hf_tok.eos_token
        for r in range(rounds):
            print(f"round {r + 1}/{rounds} ...", flush=True)
            results["cache"].append(bench_ours(ckpt, prompts, tmp, w, batch, prompting, args.precision))
            stats = json.loads((tmp / "ours-c.stats.json").read_text())["prefix_cache"]
            results["no cache"].append(
                bench_ours(ckpt, prompts, tmp, w, batch, prompting, args.precision, ("--prefix_cache", "false"))
            )
            results["transformers"].append(bench_transformers(hf, hf_tok, lit_tok, prompts, w, batch, prompting))
    lengths = [p["tokens"] for p in prompts]
    print(
        f"\nbench-generate (c) shared prefix: {ckpt.name}, {len(prompts)} chat rows of {min(lengths)}-{max(lengths)} "
        f"prompt tokens ({sum(lengths):,} in all; {BLOCKS} instruction blocks of <= {block} tokens + a record of "
        f"{RECORD_TOKENS[0] if not args.smoke else 8}-{RECORD_TOKENS[1] if not args.smoke else 24} tokens), {new} "
        f"greedy tokens each, batch {batch}, {args.precision} on {device.type}, torch threads {THREADS}, {rounds} "
        f"interleaved round(s), median (min-max)"
    )
    cache, plain, tf = results["cache"], results["no cache"], results["transformers"]
    vs_plain = [a["rate"] / b["rate"] for a, b in zip(cache, plain)]
    vs_tf = [a["rate"] / b["rate"] for a, b in zip(cache, tf)]
    rows = [("contender", "generated tok/s", "prefix cache's speed-up")]
    rows.append(("generate_batch (prefix cache on)", spread([x["rate"] for x in cache], "{:,.1f}"), "1.00x"))
    rows.append(("generate_batch --prefix_cache false", spread([x["rate"] for x in plain], "{:,.1f}"),
                 spread(vs_plain, "{:.2f}x")))  # fmt: skip
    rows.append(("transformers generate", spread([x["rate"] for x in tf], "{:,.1f}"), spread(vs_tf, "{:.2f}x")))
    print(table(rows))
    print(
        f"prefix cache: {stats['prompt_tokens_reused']:,} of {stats['prompt_tokens_reused'] + stats['prompt_tokens_computed']:,} "
        f"prompt tokens reused ({stats['hits']} of {stats['lookups']} rows hit)"
    )
    same_plain = sum(a == b for a, b in zip(cache[-1]["texts"], plain[-1]["texts"]))
    same_tf = sum(a == b for a, b in zip(cache[-1]["texts"], tf[-1]["texts"]))
    print(f"greedy texts identical: with vs without the cache {same_plain} of {n}; vs transformers {same_tf} of {n}")
    if not args.smoke:
        met = statistics.median(vs_plain) >= 2.5 and statistics.median(vs_tf) >= 4 and same_plain == same_tf == n
        print(f"goal (>= 2.5x without the cache, >= 4x transformers, texts identical): {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
