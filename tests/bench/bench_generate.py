"""``make bench-generate``: generate_batch vs transformers ``generate`` vs litgpt's generate, two workloads, one run.

Model: a ~56M-parameter llama-style student (8 layers, 512 wide, 8 query heads in 4 groups, 32k vocabulary) trained
on Q/A data whose answers have three lengths (a sentence, a paragraph, a long story) so that it learns to stop;
exported with ``export_hf`` for transformers. Prompts: questions behind a document of random length (16-512 tokens).
Workloads, both fp32:
* (a) greedy, every row runs to ``max_new_tokens`` 128 (``min_new_tokens`` 128 masks EOS in ours and transformers);
* (b) the distillation inference step: temperature 0.8, top-k 200, up to 256 new tokens, rows end at EOS wherever
  the student stops (the printed length distribution shows how widely).
Contenders, interleaved per round (a: A B C, b: A B C, then the next round):
* ``generate_batch``: continuous batching, ``--max_batch_size 32``;
* transformers ``generate``: left padding, batches of 32 sorted longest-first (the reference pipeline);
* litgpt: ``litgpt.generate.base.generate`` one prompt at a time (what ``litgpt generate`` runs), on a subset (a rate).
On workload (a), generate_batch's speed switches run right after its default in each round: ``--pack_weights false``
(plain ``F.linear``) and ``--compile true`` (its tokens/s include the compile warm-up; also shown without it).
Reported: generated tokens/s (EOS and padding excluded), median (min-max) over rounds, the ratios per round, and
the checks: greedy texts identical to transformers', sampled length distributions side by side.
Goals: (a) >= 1.5x transformers; (b) >= 2.5x transformers and >= 5x litgpt; ``--compile true`` >= 1.3x
``--compile false`` on (a), warm-up included.

``--checkpoint DIR`` runs the contenders on a real instruct checkpoint instead (``make bench-real``:
SmolLM2-135M-Instruct): the same questions as chat rows through the model's own chat template (ours reads
``messages`` rows; transformers and litgpt get the template's text, tokenized without added special tokens: the same
ids), transformers on ``export_hf``'s folder of it; (a) 48 prompts, 48 greedy tokens each; (b) 64 prompts, T=0.8 top-k
200, up to 96 tokens, the model stopping where it answers. Goals there: (a) >= 2x transformers, (b) >= 4x, greedy texts
identical. ``--precision bf16-true`` on a GPU runs every contender there in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.bench.common import REPO, run_measured, spread, table

STYLE = "Question: {}\nAnswer:"
THREADS = 2
TRAIN_STEPS = "40"
TRAIN_DOC_WORDS = 20
"""The student is trained on documents of up to this many words (the CPU budget of a benchmark), so workload (b)
asks about documents of that size; workload (a) (EOS masked) uses documents of up to 400 words."""


@dataclass(frozen=True)
class Workload:
    name: str
    doc_words: int
    max_new: int
    min_new: int
    temperature: float
    top_k: int | None


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
                    for _ in range(3)
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
    (tmp / "qa.json").write_text(json.dumps({"train": _data(800, 0, words, TRAIN_DOC_WORDS)}))
    steps = "10" if smoke else TRAIN_STEPS
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
            "8",
            "--train.micro_batch_size",
            "8",
            "--train.lr_warmup_steps",
            "5",
            "--optimizer.lr",
            "3e-3",
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


@dataclass(frozen=True)
class Prompting:
    """How a question reaches each contender as the same token ids: the toy student's Q/A style, or a real
    instruct model's chat template (``chat``)."""

    chat: object | None = None

    def text(self, question: str) -> str:
        if self.chat is None:
            return STYLE.format(question)
        return self.chat.render([{"role": "user", "content": question}], add_generation_prompt=True)

    def row(self, p: dict) -> dict:
        """The input line of generate_batch."""
        if self.chat is None:
            return {"id": p["id"], "prompt": p["prompt"]}
        return {"id": p["id"], "messages": [{"role": "user", "content": p["prompt"]}]}

    def lit_ids(self, lit_tok, question: str) -> list[int]:
        from litgpt_ext.data.encode import encode_text

        return encode_text(lit_tok, self.text(question), bos=False if self.chat is not None else None)

    def hf_batch(self, tok, questions: list[str], device):
        enc = tok([self.text(q) for q in questions], return_tensors="pt", padding=True,
                  add_special_tokens=self.chat is None)  # fmt: skip
        return {k: v.to(device) for k, v in enc.items()}


def _prompts(n: int, tokenizer, max_doc_words: int, prompting: Prompting, seed: int = 1) -> list[dict]:
    words = (REPO / "artifacts/demo/corpus.txt").read_text().split()
    rng = random.Random(seed)
    rows = []
    for i, row in enumerate(_data(10 * n, seed, words, max_doc_words)):
        length = len(prompting.lit_ids(tokenizer, row["Question"]))
        if 16 <= length <= 512:
            rows.append({"id": str(i), "prompt": row["Question"], "tokens": length})
        if len(rows) == n:
            break
    rng.shuffle(rows)
    return rows


def bench_ours(
    ckpt: Path,
    prompts: list[dict],
    tmp: Path,
    w: Workload,
    batch: int,
    prompting: Prompting,
    precision: str,
    flags: tuple[str, ...] = (),
) -> dict:
    inp, out = tmp / "prompts.jsonl", tmp / f"ours-{w.name}.jsonl"
    inp.write_text("".join(json.dumps(prompting.row(p)) + "\n" for p in prompts))
    out.unlink(missing_ok=True)
    run_measured(
        [
            sys.executable,
            "-m",
            "litgpt_ext",
            "generate_batch",
            str(ckpt),
            "--input",
            str(inp),
            "--output",
            str(out),
            "--max_new_tokens",
            str(w.max_new),
            "--min_new_tokens",
            str(w.min_new),
            "--temperature",
            str(w.temperature),
            "--top_k",
            str(w.top_k) if w.top_k else "null",
            "--precision",
            precision,
            "--max_batch_size",
            str(batch),
            *flags,
        ],
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )
    stats = json.loads(out.with_name(f"{out.stem}.stats.json").read_text())  # the run's own clock, in ms
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    tokens = stats["generated_tokens"]
    return {
        "rate": tokens / stats["seconds"],
        "tokens": tokens,
        "lengths": [rows[p["id"]]["generated_tokens"][0] for p in prompts],
        "texts": [rows[p["id"]]["generations"][0] for p in prompts],
        "warmup": stats["compile_warmup_s"],
    }


@torch.inference_mode()
def bench_transformers(model, tok, lit_tok, prompts: list[dict], w: Workload, batch: int, prompting: Prompting) -> dict:
    ordered = sorted(range(len(prompts)), key=lambda i: -prompts[i]["tokens"])
    lengths, texts = [0] * len(prompts), [""] * len(prompts)
    sampling = {"do_sample": True, "temperature": w.temperature, "top_k": w.top_k, "top_p": 1.0}
    _sync(model.device)
    t0 = time.perf_counter()
    for start in range(0, len(ordered), batch):
        group = ordered[start : start + batch]
        enc = prompting.hf_batch(tok, [prompts[i]["prompt"] for i in group], model.device)
        out = model.generate(
            **enc,
            max_new_tokens=w.max_new,
            min_new_tokens=w.min_new or None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **(sampling if w.temperature > 0 else {"do_sample": False}),
        )
        for i, row in zip(group, out[:, enc["input_ids"].shape[1] :].tolist()):
            lengths[i] = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
            texts[i] = lit_tok.decode(torch.tensor(row[: lengths[i]]))
    _sync(model.device)
    elapsed = time.perf_counter() - t0
    return {"rate": sum(lengths) / elapsed, "tokens": sum(lengths), "lengths": lengths, "texts": texts}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def bench_litgpt(model, tok, prompts: list[dict], w: Workload, prompting: Prompting) -> dict:
    from litgpt.generate.base import generate

    device = next(model.parameters()).device
    _sync(device)
    lengths, t0 = [], time.perf_counter()
    for p in prompts:
        ids = torch.tensor(prompting.lit_ids(tok, p["prompt"]), device=device)
        model.set_kv_cache(batch_size=1, max_seq_length=len(ids) + w.max_new, device=device)
        out = generate(
            model,
            ids,
            max_returned_tokens=len(ids) + w.max_new,
            temperature=w.temperature,
            top_k=w.top_k,
            eos_id=None if w.min_new else tok.eos_id,  # (a): every row runs to the limit
        )
        new = out[len(ids) :].tolist()
        lengths.append(len(new) - (1 if new and new[-1] == tok.eos_id and not w.min_new else 0))
        model.clear_kv_cache()
    _sync(device)
    return {"rate": sum(lengths) / (time.perf_counter() - t0), "tokens": sum(lengths), "lengths": lengths}


SWITCHES = {"--pack_weights false": ("--pack_weights", "false"), "--compile true": ("--compile", "true")}
"""generate_batch's speed switches, each run beside the default on workload (a) (the default packs weights on CPU)."""


def _switch_table(results: dict, w: Workload) -> str:
    base = results[w.name, "ours"]
    unpacked, compiled = (results[w.name, flag] for flag in SWITCHES)
    rows = [("(a) generate_batch", "tok/s", "vs default", "greedy texts = default's")]
    rows.append(
        ("default (--compile false, packed weights)", spread([r["rate"] for r in base], "{:,.1f}"), "1.00x", "-")
    )
    for flag in SWITCHES:
        runs = results[w.name, flag]
        same = sum(a == b for a, b in zip(runs[-1]["texts"], base[-1]["texts"]))
        rows.append(
            (
                flag + (" (warm-up included)" if flag == "--compile true" else ""),
                spread([r["rate"] for r in runs], "{:,.1f}"),
                spread([r["rate"] / b["rate"] for r, b in zip(runs, base)], "{:.2f}x"),
                f"{same} of {len(base[-1]['texts'])}",
            )
        )
    steady = [r["tokens"] / max(r["tokens"] / r["rate"] - r["warmup"], 1e-9) for r in compiled]
    rows.append(
        (
            "--compile true, after its warm-up",
            spread(steady, "{:,.1f}"),
            spread([x / b["rate"] for x, b in zip(steady, base)], "{:.2f}x"),
            "-",
        )
    )
    warm = spread([r["warmup"] for r in compiled], "{:.1f}")
    verdict = statistics.median(r["rate"] / b["rate"] for r, b in zip(compiled, base))
    return (
        table(rows)
        + f"\n--compile warm-up (first decode call: tracing + compiling): {warm} s; --pack_weights false is the "
        + f"engine before packing (vs default: {spread([u['rate'] / b['rate'] for u, b in zip(unpacked, base)], '{:.2f}x')})"
        + f"\ngoal (--compile true >= 1.3x --compile false, warm-up included): {'MET' if verdict >= 1.3 else 'NOT MET'}"
    )


def _quantiles(lengths: list[int]) -> str:
    q = statistics.quantiles(lengths, n=4) if len(lengths) > 1 else [lengths[0]] * 3
    return f"min {min(lengths)} / p25 {q[0]:.0f} / median {q[1]:.0f} / p75 {q[2]:.0f} / max {max(lengths)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, few prompts: checks the harness only")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median and min-max reported)")
    parser.add_argument("--prompts", type=int, help="prompts per workload (default: 128; 48 / 64 with --checkpoint)")
    parser.add_argument("--checkpoint", type=Path, help="a real instruct litgpt checkpoint (see the module docstring)")
    parser.add_argument("--precision", default="32-true", help="every contender's precision (bf16-true on a GPU)")
    parser.add_argument("--skip_switches", action="store_true", help="leave out the --pack_weights/--compile runs")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    real = args.checkpoint is not None
    rounds = 1 if args.smoke else args.rounds
    batch = 8 if args.smoke else 32
    if args.smoke:
        sizes = {"a": (12, 16), "b": (12, 24)}
    elif real:
        sizes = {"a": (args.prompts or 48, 48), "b": (args.prompts or 64, 96)}
    else:
        sizes = {"a": (args.prompts or 128, 128), "b": (args.prompts or 128, 256)}
    litgpt_n = 3 if args.smoke else 12
    # (a smoke run of the --checkpoint path checks the chat-row harness only)
    switches = not (args.smoke and real) and not args.skip_switches
    workloads = [
        Workload("a", 100 if args.smoke else 400, sizes["a"][1], sizes["a"][1], 0.0, None),
        Workload("b", 60 if real else TRAIN_DOC_WORDS, sizes["b"][1], 0, 0.8, 200),
    ]
    dtype = {"32-true": torch.float32, "bf16-true": torch.bfloat16, "16-true": torch.float16}[args.precision]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if real:
            ckpt, hf_dir = args.checkpoint, tmp / "hf"
            run_measured([sys.executable, "-m", "litgpt_ext", "export_hf", str(ckpt), "--out_dir", str(hf_dir)])
        else:
            ckpt, hf_dir = _train_student(tmp, args.smoke)
        from litgpt.config import Config
        from litgpt.model import GPT
        from litgpt.tokenizer import Tokenizer
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from litgpt_ext.chat_template import ChatTemplate

        prompting = Prompting(ChatTemplate.from_checkpoint(ckpt) if real else None)
        lit_tok = Tokenizer(ckpt)
        prompts = {w.name: _prompts(sizes[w.name][0], lit_tok, w.doc_words, prompting) for w in workloads}
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(device).eval()
        hf_tok = AutoTokenizer.from_pretrained(hf_dir)
        hf_tok.padding_side = "left"
        hf_tok.pad_token = hf_tok.pad_token or hf_tok.eos_token
        lit = GPT(Config.from_file(ckpt / "model_config.yaml"))
        state = torch.load(ckpt / "lit_model.pth", weights_only=True)
        lit.load_state_dict(state.get("model", state))
        lit = lit.to(device=device, dtype=dtype).eval()
        params = sum({t.data_ptr(): t.numel() for t in state.get("model", state).values()}.values()) / 1e6
        results = {(w.name, c): [] for w in workloads for c in ("ours", "hf", "litgpt", *SWITCHES)}
        for r in range(rounds):
            for w in workloads:
                print(f"round {r + 1}/{rounds}, workload ({w.name}) ...", flush=True)
                ps = prompts[w.name]
                results[w.name, "ours"].append(bench_ours(ckpt, ps, tmp, w, batch, prompting, args.precision))
                if w.name == "a" and switches:
                    for flag, argv in SWITCHES.items():
                        results[w.name, flag].append(
                            bench_ours(ckpt, ps, tmp, w, batch, prompting, args.precision, argv)
                        )
                results[w.name, "hf"].append(bench_transformers(hf, hf_tok, lit_tok, ps, w, batch, prompting))
                results[w.name, "litgpt"].append(bench_litgpt(lit, lit_tok, ps[:litgpt_n], w, prompting))
    model = (
        f"{args.checkpoint.name} ({params:.0f}M params, its chat template)" if real else f"{params:.0f}M-param model"
    )
    print(
        f"\nbench-generate: {model}, batch {batch}, {args.precision} on {device.type}, torch threads {THREADS}, {rounds} "
        f"interleaved round(s), median (min-max); litgpt one prompt at a time on the first {litgpt_n} prompts"
    )
    for w in workloads:
        lengths = [p["tokens"] for p in prompts[w.name]]
        print(
            f"({w.name}) {len(lengths)} prompts of {min(lengths)}-{max(lengths)} tokens ({sum(lengths):,} in all; "
            f"documents of up to {w.doc_words} words)"
        )
    rows = [("workload", "generate_batch tok/s", "transformers tok/s", "ours / tf", "litgpt tok/s", "ours / litgpt")]
    verdicts = []
    for w in workloads:
        ours, tf, lit = (results[w.name, c] for c in ("ours", "hf", "litgpt"))
        vs_tf = [o["rate"] / t["rate"] for o, t in zip(ours, tf)]
        vs_lit = [o["rate"] / x["rate"] for o, x in zip(ours, lit)]
        label = (
            f"({w.name}) greedy, {w.max_new} tokens per row"
            if w.temperature == 0
            else f"({w.name}) T={w.temperature} top-k {w.top_k}, <= {w.max_new} tokens"
        )
        rows.append(
            (
                label,
                spread([o["rate"] for o in ours], "{:,.1f}"),
                spread([t["rate"] for t in tf], "{:,.1f}"),
                spread(vs_tf, "{:.2f}x"),
                spread([x["rate"] for x in lit], "{:,.1f}"),
                spread(vs_lit, "{:.2f}x"),
            )
        )
        verdicts.append((w, statistics.median(vs_tf), statistics.median(vs_lit)))
    print(table(rows))
    for w in workloads:
        ours, tf = results[w.name, "ours"][-1], results[w.name, "hf"][-1]
        early = sum(n < w.max_new for n in ours["lengths"])
        print(
            f"({w.name}) generated tokens: ours {ours['tokens']:,} ({_quantiles(ours['lengths'])}; {early} of "
            f"{len(ours['lengths'])} rows stopped before {w.max_new}), transformers {tf['tokens']:,} "
            f"({_quantiles(tf['lengths'])})"
        )
        if w.temperature == 0:
            same = sum(a == b for a, b in zip(ours["texts"], tf["texts"]))
            print(f"({w.name}) greedy texts identical to transformers': {same} of {len(ours['texts'])}")
    if switches:
        print("\n" + _switch_table(results, workloads[0]))
    if not args.smoke:
        (_, a_tf, _), (_, b_tf, b_lit) = verdicts
        if real:
            same = all(a == b for a, b in zip(results["a", "ours"][-1]["texts"], results["a", "hf"][-1]["texts"]))
            met = a_tf >= 2 and b_tf >= 4 and same
            goal = "(a) >= 2x transformers; (b) >= 4x transformers; greedy texts identical"
        else:
            met = a_tf >= 1.5 and b_tf >= 2.5 and b_lit >= 5.0
            goal = "(a) >= 1.5x transformers; (b) >= 2.5x transformers and >= 5x litgpt"
        print(f"goal ({goal}): {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
