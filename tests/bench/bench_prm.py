"""``make bench-prm``: process-reward scoring, ``prm_score`` vs transformers ``AutoModelForTokenClassification`` on
the exported model, in one run.

Model: the ~35M-parameter llama-style checkpoint (32k vocabulary) with a 2-class step head; transformers loads its
``export_hf`` copy. Workload: rows of 1-8 steps of 3-40 words each (the prompt 5 words), cut to the 512-token
context on both sides, the same batch size, fp32 CPU. Each side is timed from its first row to its last (model
loading excluded): ours through ``prm_score`` (streamed JSONL, piecewise step tokenization, length-sorted batches,
the head at the step ends only, fsync'd output); transformers as the exported model card shows — the same piecewise
tokenization, rows in input order, right-padded to the batch's longest, ``model(...).logits`` read at the step
ends. Contenders run interleaved; the table shows the median and min-max.
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
from transformers import AutoModelForTokenClassification, AutoTokenizer
model_dir, rows_file, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForTokenClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
limit = model.config.max_position_embeddings
rows = [json.loads(l) for l in open(rows_file)]
enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]
t0 = time.perf_counter()
steps_scored = 0
with torch.no_grad():
    for i in range(0, len(rows), batch):
        ids, ends = [], []
        for r in rows[i : i + batch]:
            x, e = tok(r["prompt"])["input_ids"], []
            for k, step in enumerate(r["completions"]):
                x += enc(step)
                e.append(len(x) - 1)
                if k + 1 < len(r["completions"]):
                    x += enc("\n")
            cut = max(0, len(x) - limit)
            ids.append(x[cut:]); ends.append([p - cut for p in e if p >= cut])
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [tok.pad_token_id or 0] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        probs = model(input_ids=input_ids, attention_mask=mask).logits.softmax(-1)[..., 1]
        scores = [probs[b, e].tolist() for b, e in enumerate(ends)]
        steps_scored += sum(map(len, scores))
print(json.dumps({"rows": len(rows), "steps": steps_scored, "seconds": time.perf_counter() - t0}))
"""


def make_rows(path: Path, n: int, seed: int = 0) -> None:
    words = (REPO / "artifacts/demo/corpus.txt").read_text().split()
    rng = random.Random(seed)
    rows = [
        {"id": f"q{i // 4}#{i % 4}", "question_id": f"q{i // 4}", "prompt": " ".join(rng.choices(words, k=5)) + "\n",
         "completions": [" ".join(rng.choices(words, k=rng.randint(3, 40))) for _ in range(rng.randint(1, 8))]}
        for i in range(n)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def ours(ckpt: Path, rows: Path, out: Path, batch: int) -> float:
    out.unlink(missing_ok=True)
    run = run_measured([sys.executable, "-m", "litgpt_ext", "prm_score", str(ckpt), "--input", str(rows), "--output",
                        str(out), "--batch_size", str(batch), "--precision", "32-true"])  # fmt: skip
    line = next(ln for ln in run.stdout.splitlines() if "rows scored in" in ln)
    n = int(line.split(" rows")[0].replace(",", ""))
    return n / float(line.split("rows scored in ")[1].split("s")[0])


def theirs(hf: Path, rows: Path, batch: int) -> float:
    run = run_measured([sys.executable, "-c", HF_SCORER, str(hf), str(rows), str(batch)])
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return result["rows"] / result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, few rows, one round")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    n, rounds = (48, 1) if args.smoke else (args.rows, args.rounds)
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
        ckpt = tmp / "prm"
        shutil.copytree(tmp / "base", ckpt)
        sys.path.insert(0, str(REPO))
        import torch
        from litgpt.config import Config

        n_embd = Config.from_file(ckpt / "model_config.yaml").n_embd
        torch.manual_seed(0)
        torch.save({"weight": torch.randn(2, n_embd) * 0.02}, ckpt / "orm_head.pth")
        config = {"head": "classifier", "num_labels": 2, "reward": "process", "step_separator": "\n"}
        (ckpt / "orm_config.json").write_text(json.dumps(config))
        run_measured([py, "-m", "litgpt_ext", "export_hf", str(ckpt), "--out_dir", str(tmp / "hf")])
        rows = tmp / "rows.jsonl"
        make_rows(rows, n)
        steps = sum(len(json.loads(line)["completions"]) for line in rows.read_text().splitlines())
        results: dict[str, list[float]] = {}
        for r in range(rounds):
            for name, fn in (
                ("prm_score", lambda: ours(ckpt, rows, tmp / "scored.jsonl", args.batch)),
                ("transformers", lambda: theirs(tmp / "hf", rows, args.batch)),
            ):
                results.setdefault(name, []).append(fn())
                print(f"round {r + 1}/{rounds} {name}: {results[name][-1]:,.1f} rows/s", flush=True)
    ratio = [a / b for a, b in zip(results["prm_score"], results["transformers"])]
    header = "bench-prm (smoke)" if args.smoke else (
        f"bench-prm: ~35M-param llama-style model, 32k vocab, fp32 CPU; {n} rows, {steps} steps (1-8 steps of 3-40 "
        f"words, cut to the 512-token context on both sides), batch {args.batch}; {rounds} interleaved rounds: "
        "median (min-max)"
    )  # fmt: skip
    print("\n" + header)
    print(table([("", "ours", "baseline", "ratio"),
                 ("step scoring rows/s (prm_score vs transformers TokenCls)", spread(results["prm_score"]),
                  spread(results["transformers"]), spread(ratio, "{:.2f}"))]))  # fmt: skip
    if not args.smoke:
        print(f"goal (ratio >= 1.5): {'MET' if statistics.median(ratio) >= 1.5 else 'NOT MET'}")


if __name__ == "__main__":
    main()
