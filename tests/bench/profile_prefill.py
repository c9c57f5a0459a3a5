"""``make profile-prefill``: where a prefill's time goes on a real checkpoint (SmolLM2-135M-Instruct), against what its
matrix multiplications cost when each runs alone at its own shape.

Workload: one prefill of a batch of ``--rows`` (8) prompts of ``--tokens`` (500) random token ids through the
engine's own path (slot caches, the last-position head, the engine's forwards), fp32 on CPU, torch threads 2.
Measured in the same run, each the median of ``--repeats`` (5) calls after a warm-up:
* the prefill, whole;
* the body's GEMMs alone: every linear layer of every block (``qkv``, ``proj``, ``fc_1``, ``fc_2``, the MLP's
  ``proj``) as ``F.linear`` on a ``(rows x tokens, in)`` input of its own, summed over the blocks;
* attention alone: ``scaled_dot_product_attention`` on one block's queries, keys and values (causal), times blocks;
* the LM head on the last position of each row.
Reported: milliseconds and GFLOP/s of each, the body's time over its GEMMs' (the goal: <= 1.25x), and the top
operators of a ``torch.profiler`` trace of one prefill (self CPU time), which says what the rest is.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

THREADS = 2


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a litgpt checkpoint (SmolLM2)")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fast_forwards", default="true", choices=["true", "false"],
                        help="false: litgpt's own forwards (the engine's before this change)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="2 x 32 tokens, one call each: checks the harness only")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.tokens, args.repeats = 2, 32, 1
    torch.set_num_threads(THREADS)
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.generate.engine import Engine, Settings
    from litgpt_ext.generate.jobs import Job, Row
    from litgpt_ext.generate.settings import greedy

    config = Config.from_file(args.checkpoint / "model_config.yaml")
    model = GPT(config)
    state = torch.load(args.checkpoint / "lit_model.pth", weights_only=True, map_location="cpu")
    model.load_state_dict(state.get("model", state))
    model.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, config.vocab_size, (args.rows, args.tokens), generator=g).tolist()
    settings = Settings(greedy(1), max_batch_size=args.rows, max_seq_length=config.block_size,
                        fast_forwards=args.fast_forwards == "true", pack_weights=False)  # fmt: skip
    engine = Engine(model, Tokenizer(args.checkpoint), settings, torch.device("cpu"), torch.float32)
    engine._reserve([Row(Job(str(i), i, p, 1, 1), 0, i, greedy(1)) for i, p in enumerate(prompts)])
    group = [(i, Row(Job(str(i), i, p, 1, 1), 0, i, greedy(1)), []) for i, p in enumerate(prompts)]

    def prefill():
        engine._prefill(group, 0)

    n = args.rows * args.tokens
    whole = _median_ms(prefill, args.repeats)
    blocks = model.transformer.h
    x = {}
    gemm_ms, gemm_flop = 0.0, 0
    for name in ("attn.qkv", "attn.proj", "mlp.fc_1", "mlp.fc_2", "mlp.proj"):
        layer = blocks[0].get_submodule(name)
        inp = x.setdefault(layer.in_features, torch.randn(n, layer.in_features))
        ms = _median_ms(lambda layer=layer, inp=inp: F.linear(inp, layer.weight, layer.bias), args.repeats)
        gemm_ms += ms * len(blocks)
        gemm_flop += 2 * n * layer.in_features * layer.out_features * len(blocks)
    hs, heads, groups = config.head_size, config.n_head, config.n_query_groups
    q = torch.randn(args.rows, heads, args.tokens, hs)
    kv = torch.randn(args.rows, groups, args.tokens, hs)
    attn_ms = len(blocks) * _median_ms(
        lambda: F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=groups != heads), args.repeats
    )
    last = torch.randn(args.rows, config.n_embd)
    weight = getattr(model.lm_head, "head", model.lm_head).weight  # (the engine wraps the head)
    head_ms = _median_ms(lambda: F.linear(last, weight), args.repeats)
    body = whole - head_ms
    print(
        f"\nprofile-prefill: {args.checkpoint.name}, {args.rows} x {args.tokens} tokens, fp32, CPU, torch threads "
        f"{THREADS}, fast_forwards {args.fast_forwards}; medians of {args.repeats}"
    )
    print(f"prefill, whole               {whole:9.1f} ms  ({gemm_flop / whole / 1e6:6.1f} GFLOP/s of GEMM work)")
    print(f"  the body (minus the head)  {body:9.1f} ms")
    print(f"  its GEMMs, each alone      {gemm_ms:9.1f} ms  ({gemm_flop / gemm_ms / 1e6:6.1f} GFLOP/s)")
    print(f"  attention alone (SDPA)     {attn_ms:9.1f} ms")
    print(f"  LM head, last positions    {head_ms:9.1f} ms")
    print(
        f"body / its GEMMs alone: {body / gemm_ms:.2f}x  (body / (GEMMs + attention): {body / (gemm_ms + attn_ms):.2f}x)"
    )
    print(f"goal (body <= 1.25x its GEMMs alone): {'MET' if body <= 1.25 * gemm_ms else 'NOT MET'}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        prefill()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40))
    engine.close()


if __name__ == "__main__":
    main()
