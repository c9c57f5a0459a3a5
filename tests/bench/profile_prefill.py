"""``make profile-prefill``: where a prefill's time goes on a real checkpoint (SmolLM2-135M-Instruct), against what its
matrix multiplications cost when each runs alone at its own shape — the engine's prefill before and after its own
prefill forwards, in one run.

Workload: one prefill of a batch of ``--rows`` (8) prompts of ``--tokens`` (500) random token ids through the
engine's own path (slot caches, the last-position head), fp32 on CPU, torch threads 2, by two engines on two copies
of the model: ``--fast_forwards false`` (litgpt's own attention, norm and MLP forwards: the engine before its
prefill forwards) and the default (attention block by block on grouped keys, RMSNorm in one op, rope in three
passes, SwiGLU in place). Each round times, one after the other:
* the body's linear GEMMs alone: every linear layer of a block (``qkv``, ``proj``, ``fc_1``, ``fc_2``, the MLP's
  ``proj``) as ``F.linear`` on a ``(rows x tokens, in)`` input of its own, times the blocks — once before the
  prefills and once after, their mean taken (the machine's speed drifts within a round);
* each engine's prefill, whole;
* attention's own GEMMs alone: the score and value products at the shapes the block-by-block attention runs them
  (``bmm`` on inputs of their own, no softmax), times the blocks;
* PyTorch's attention (SDPA, causal, keys per query head) at a block's full shape, times the blocks, for reference;
* the LM head on the last position of each row.
The body is the whole prefill less the head. Two ratios, each taken within a round and reported as the median
(min-max) over ``--repeats`` (7) rounds: the body against its linear GEMMs, and against all its GEMMs (the linear
ones and attention's products: every matrix product the body runs). Then the top operators of a
``torch.profiler`` trace of one prefill of each (self CPU time) say what the rest is. Goal: the body <= 1.25x its
GEMMs alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tests.bench.common import spread, table

THREADS = 2


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a litgpt checkpoint (SmolLM2)")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
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
    from litgpt_ext.model.prefill_attention import BLOCK

    config = Config.from_file(args.checkpoint / "model_config.yaml")
    model = GPT(config)
    state = torch.load(args.checkpoint / "lit_model.pth", weights_only=True, map_location="cpu")
    model.load_state_dict(state.get("model", state))
    model.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, config.vocab_size, (args.rows, args.tokens), generator=g).tolist()
    engines = {}
    for fast in (False, True):
        copy = GPT(config)
        copy.load_state_dict(model.state_dict())
        copy.eval().requires_grad_(False)
        settings = Settings(greedy(1), max_batch_size=args.rows, max_seq_length=config.block_size,
                            fast_forwards=fast, pack_weights=False)  # fmt: skip
        engine = Engine(copy, Tokenizer(args.checkpoint), settings, torch.device("cpu"), torch.float32)
        rows = [Row(Job(str(i), i, p, 1, 1), 0, i, greedy(1)) for i, p in enumerate(prompts)]
        engine._reserve(rows)
        engines["before (litgpt's forwards)" if not fast else "after (the engine's)"] = (engine, rows)

    def prefill(name):
        engine, rows = engines[name]
        return lambda: engine._prefill([(i, row, []) for i, row in enumerate(rows)], 0)

    n = args.rows * args.tokens
    layers = len(model.transformer.h)
    gemms, gemm_flop, inputs = [], 0, {}
    for name in ("attn.qkv", "attn.proj", "mlp.fc_1", "mlp.fc_2", "mlp.proj"):
        layer = model.transformer.h[0].get_submodule(name)
        inp = inputs.setdefault(layer.in_features, torch.randn(n, layer.in_features))
        gemms.append(lambda layer=layer, inp=inp: F.linear(inp, layer.weight, layer.bias))
        gemm_flop += 2 * n * layer.in_features * layer.out_features * layers
    hs, heads, groups = config.head_size, config.n_head, config.n_query_groups
    q = torch.randn(args.rows, heads, args.tokens, hs)  # (SDPA on keys and values copied per query head)
    kv = torch.randn(args.rows, heads, args.tokens, hs)
    rows_q = torch.randn(groups, args.tokens * (heads // groups), hs)  # the block-by-block attention's operands
    keys_t, values = torch.randn(groups, hs, args.tokens), torch.randn(groups, args.tokens, hs)
    scores = torch.empty(groups, BLOCK * (heads // groups), args.tokens)

    def attention_gemms():  # what prefill_attention._blocked multiplies, per row and block
        for _ in range(args.rows):
            for start in range(0, args.tokens, BLOCK):
                end = min(args.tokens, start + BLOCK)
                n = (end - start) * (heads // groups)
                s = torch.bmm(rows_q[:, :n], keys_t[..., :end], out=scores[:, :n, :end])
                torch.bmm(s, values[:, :end])

    weight = getattr(model.lm_head, "head", model.lm_head).weight  # (the engine wraps the head)
    last = torch.randn(args.rows, config.n_embd)
    timed = {name: [] for name in (*engines, "gemms", "attention gemms", "attention", "head")}
    for name in engines:  # warm-up
        prefill(name)()
    for _ in range(args.repeats):
        before = layers * sum(_ms(gemm) for gemm in gemms)
        for name in engines:
            timed[name].append(_ms(prefill(name)))
        timed["gemms"].append((before + layers * sum(_ms(gemm) for gemm in gemms)) / 2)
        timed["attention gemms"].append(layers * _ms(attention_gemms))
        timed["attention"].append(layers * _ms(lambda: F.scaled_dot_product_attention(q, kv, kv, is_causal=True)))
        timed["head"].append(_ms(lambda: F.linear(last, weight)))
    med = {name: statistics.median(values) for name, values in timed.items()}
    print(
        f"\nprofile-prefill: {args.checkpoint.name}, {args.rows} x {args.tokens} tokens, fp32, CPU, torch threads "
        f"{THREADS}; median (min-max) over {args.repeats} rounds, ratios within each round"
    )
    print(f"  the body's linear GEMMs, alone {spread(timed['gemms'], '{:,.0f}')} ms "
          f"({gemm_flop / med['gemms'] / 1e6:.0f} GFLOP/s)")  # fmt: skip
    print(f"  attention's GEMMs, each alone  {spread(timed['attention gemms'], '{:,.0f}')} ms")
    print(f"  attention alone (SDPA, causal) {spread(timed['attention'], '{:,.0f}')} ms")
    print(f"  LM head, last positions        {spread(timed['head'], '{:,.1f}')} ms")
    all_gemms = [g + a for g, a in zip(timed["gemms"], timed["attention gemms"])]
    rows = [("prefill", "whole ms", "body GFLOP/s (linear work)", "body / linear GEMMs", "body / all its GEMMs")]
    ratios = {}
    for name in engines:
        body = [w - h for w, h in zip(timed[name], timed["head"])]
        ratios[name] = [b / g for b, g in zip(body, all_gemms)]
        rows.append((name, spread(timed[name], "{:,.0f}"), f"{gemm_flop / statistics.median(body) / 1e6:.0f}",
                     spread([b / g for b, g in zip(body, timed["gemms"])], "{:.2f}x"),
                     spread(ratios[name], "{:.2f}x")))  # fmt: skip
    print(table(rows))
    before, after = engines
    speedup = [b / a for a, b in zip(timed[after], timed[before])]
    ratio = statistics.median(ratios[after])
    print(f"after vs before: {spread(speedup, '{:.2f}x')} faster")
    print(f"goal (body <= 1.25x all its GEMMs alone): {'MET' if ratio <= 1.25 else 'NOT MET'} ({ratio:.2f}x)")
    from torch.profiler import ProfilerActivity, profile

    for name in engines:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            prefill(name)()
        print(f"\n{name}: the top operators of one prefill (self CPU time)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=40))
    for engine, _ in engines.values():
        engine.close()


if __name__ == "__main__":
    main()
