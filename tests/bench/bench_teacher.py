"""``make bench-teacher``: the teacher stage against its baselines, in one run.

1. Queries: the local OpenAI-compatible server with 300 ms latency and a 1,200 requests/min limit; 2,000 requests
   through ``distill_query --rpm 1200`` (a subprocess, real HTTP). Printed: achieved requests/min (server-side,
   first admitted request to last answer), utilisation of the limit, 429s, duplicates. Baseline: the reference
   script's shape — one request at a time with a fixed sleep of 60/rpm between them — measured on 100 requests.
   Goal: >= 95 % utilisation.
2. Tokenization: ``distill_tokenize`` on 1,000,000 short records (read JSON, tokenize, pack, write train.pt) vs
   tokenizing one record at a time with litgpt's own ``SFTDataset.__getitem__`` (what litgpt's data modules do),
   measured on 100,000 records (a rate). Goal: >= 5x records/s, compared like for like (the tokenize phase, which
   the command times itself); the whole command's rate, start-up and file I/O included, is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.common import REPO, run_measured, table


def bench_queries(n: int, rpm: int, latency: float, baseline_n: int) -> list[tuple]:
    import openai

    from distill.teacher.fake_server import FakeOpenAI, ServerConfig

    key = "sk-bench"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with open(tmp / "records.jsonl", "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"id": i, "question": f"What is fact number {i}?"}) + "\n")
        with FakeOpenAI(ServerConfig(api_key=key, latency_s=latency, rpm=rpm)) as server:
            run_measured(
                [
                    sys.executable,
                    "-m",
                    "litgpt_ext",
                    "distill_query",
                    "--records",
                    str(tmp / "records.jsonl"),
                    "--prompt",
                    str(REPO / "prompts" / "answer_question.md"),
                    "--out",
                    str(tmp / "r.jsonl"),
                    "--base_url",
                    server.base_url,
                    "--rpm",
                    str(rpm),
                    "--concurrency",
                    "64",
                    "--max_tokens",
                    "64",
                ],
                env={"OPENAI_API_KEY": key},
            )
            st = server.state
            minutes = (st.last_answered - st.first_admitted) / 60
            ours = (sum(st.answered.values()) / minutes, st.rate_limited, st.duplicates())
            answered = sum(1 for line in (tmp / "r.jsonl").read_text().splitlines() if '"status": "ok"' in line)
        with FakeOpenAI(ServerConfig(api_key=key, latency_s=latency, rpm=rpm)) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=5)
            t0 = time.monotonic()
            for i in range(baseline_n):  # the reference script: sequential, fixed sleep, no cache
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    max_tokens=64,
                    messages=[{"role": "user", "content": f"What is fact number {i}?"}],
                )
                time.sleep(60 / rpm)
            base_rpm = baseline_n / ((time.monotonic() - t0) / 60)
    return [
        ("", "distill_query", "sequential + fixed sleep", "ratio"),
        ("requests", f"{n:,} ({answered:,} answered)", f"{baseline_n:,}", ""),
        ("achieved requests/min", f"{ours[0]:,.0f}", f"{base_rpm:,.0f}", f"{ours[0] / base_rpm:.1f}x"),
        (f"utilisation of {rpm:,}/min", f"{ours[0] / rpm:.1%}", f"{base_rpm / rpm:.1%}", ""),
        ("429s seen", f"{ours[1]}", "", ""),
        ("duplicate requests", f"{ours[2]}", "", ""),
    ], ours[0] / rpm


def bench_tokenize(n: int, baseline_n: int) -> tuple[list[tuple], float]:
    from litgpt.data.base import SFTDataset
    from litgpt.prompts import PromptStyle
    from litgpt.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_measured(
            [
                sys.executable,
                "-m",
                "litgpt_ext",
                "make_tiny_checkpoint",
                "--out_dir",
                str(tmp / "ckpt"),
                "--vocab_size",
                "4096",
            ]
        )
        words = (REPO / "artifacts/demo/corpus.txt").read_text().split()
        rng = random.Random(0)
        rows = [
            {
                "id": str(i),
                "instruction": " ".join(rng.choices(words, k=rng.randint(5, 15))),
                "input": "",
                "output": " ".join(rng.choices(words, k=rng.randint(3, 10))),
            }
            for i in range(n)
        ]
        (tmp / "data").mkdir()
        (tmp / "data" / "train.json").write_text(json.dumps(rows))
        ours = run_measured(
            [
                sys.executable,
                "-m",
                "litgpt_ext",
                "distill_tokenize",
                "--data_dir",
                str(tmp / "data"),
                "--checkpoint_dir",
                str(tmp / "ckpt"),
                "--max_seq_length",
                "256",
            ]
        )
        ours_rate = n / ours.seconds
        phases = json.loads((tmp / "data" / "tokenize_stats.json").read_text())["train"]["seconds"]
        tokenize_rate = n / phases["tokenize"]

        dataset = SFTDataset(
            rows[:baseline_n],
            Tokenizer(tmp / "ckpt"),
            PromptStyle.from_name("alpaca"),
            max_seq_length=256,
            mask_prompt=True,
        )
        t0 = time.perf_counter()
        for i in range(baseline_n):  # litgpt's own per-record tokenization, as its data modules run it
            dataset[i]
        base_rate = baseline_n / (time.perf_counter() - t0)
    return [
        ("", "distill_tokenize", "litgpt SFTDataset[i]", "ratio"),
        ("records", f"{n:,}", f"{baseline_n:,}", ""),
        (
            "records/s, tokenizing (like for like)",
            f"{tokenize_rate:,.0f}",
            f"{base_rate:,.0f}",
            f"{tokenize_rate / base_rate:.1f}x",
        ),
        (
            "records/s, whole command (start-up, JSON read, .pt write)",
            f"{ours_rate:,.0f}",
            "",
            f"{ours_rate / base_rate:.1f}x",
        ),
        ("phases (s): read / tokenize / write", f"{phases['read']} / {phases['tokenize']} / {phases['write']}", "", ""),
        ("cores used", f"{os.cpu_count()}", "1", ""),
    ], tokenize_rate / base_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes: checks the harness only")
    args = parser.parse_args()
    if args.smoke:
        q_rows, util = bench_queries(n=40, rpm=1200, latency=0.05, baseline_n=5)
        t_rows, ratio = bench_tokenize(n=2000, baseline_n=500)
    else:
        q_rows, util = bench_queries(n=2000, rpm=1200, latency=0.3, baseline_n=100)
        t_rows, ratio = bench_tokenize(n=1_000_000, baseline_n=100_000)
    print("\nbench-teacher: queries (local OpenAI-compatible server, real HTTP)")
    print(table(q_rows))
    print("\nbench-teacher: tokenization")
    print(table(t_rows))
    if not args.smoke:
        print(
            f"\ngoals: utilisation >= 95%: {'MET' if util >= 0.95 else 'NOT MET'} ({util:.1%}); "
            f"tokenize >= 5x: {'MET' if ratio >= 5 else 'NOT MET'} ({ratio:.1f}x)"
        )


if __name__ == "__main__":
    main()
