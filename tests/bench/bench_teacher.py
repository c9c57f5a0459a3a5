"""``make bench-teacher``: the teacher stage against its baselines, in one run.

1. Queries: the local OpenAI-compatible server with 300 ms latency and a 1,200 requests/min limit; 2,000 requests
   through ``distill_query --rpm 1200`` (a subprocess, real HTTP). Printed: achieved requests/min (server-side,
   first admitted request to last answer), utilisation of the limit, 429s, duplicates — once clean and once with
   20 % injected faults (429 with retry-after, 500/503, dropped connections, 200 with a cut-off body), where every
   request must end answered or quarantined and none be answered twice. Baseline: the reference
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
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.common import REPO, run_measured, spread, table

FAULTS = ("429", "500", "503", "drop", "cut_body")
"""The faulty run: 429 with retry-after, 5xx, dropped connections, 200 with a cut-off body, 20 % of requests."""


def run_queries(tmp: Path, n: int, rpm: int, latency: float, fault_rate: float, concurrency: int = 64) -> dict:
    """distill_query against the local server; server-side counts, and what the output file holds."""
    from distill.teacher.fake_server import FakeOpenAI, ServerConfig

    key = "sk-bench"
    records, out = tmp / "records.jsonl", tmp / f"r-{fault_rate}-{time.time_ns()}.jsonl"  # a fresh cache each run
    with open(records, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": i, "question": f"What is fact number {i}?"}) + "\n")
    config = ServerConfig(api_key=key, latency_s=latency, rpm=rpm, fault_rate=fault_rate, faults=FAULTS, seed=1)
    with FakeOpenAI(config) as server:
        child = run_measured(
            [sys.executable, "-m", "litgpt_ext", "distill_query", "--records", str(records),
             "--prompt", str(REPO / "prompts" / "answer_question.md"), "--out", str(out),
             "--base_url", server.base_url, "--rpm", str(rpm), "--concurrency", str(concurrency), "--max_tokens", "64",
             "--max_attempts", "10", "--timeout", "10"],
            env={"OPENAI_API_KEY": key},
            ok_codes=(0, 3),  # 3: some requests quarantined after their retries
        )  # fmt: skip
        st = server.state
        minutes = (st.last_answered - st.first_admitted) / 60
        times = sorted(t for t, _ in st.window)  # every admission (a run under a minute)
        steady = _steady_rate(times)
        rows = [json.loads(line) for line in out.read_text().splitlines() if '"status"' in line]
        ids = {i for r in rows for i in r["ids"]}
        return {
            "admitted_per_min": st.admitted / minutes,
            "answered_per_min": sum(st.answered.values()) / minutes,
            "rate_limited": st.rate_limited,
            "faults": st.faults_injected,
            "duplicates": st.duplicates(),
            "answered": sum(r["status"] == "ok" for r in rows),
            "quarantined": sum(r["status"] == "failed" for r in rows),
            "lost": n - len(ids),
            "client_cpu_ms_per_request": 1000 * child.cpu_s / max(1, st.admitted),
            "steady_per_min": steady,
            "tail_s": (st.last_answered - times[int(0.99 * (len(times) - 1))]) if times else 0.0,
        }


def _steady_rate(times: list[float]) -> float:
    """Admissions per minute from the 1st to the 99th percentile admission: the rate the client holds while it has
    requests to send, without the start-up and the tail of last retries (their backoff, not the client's speed)."""
    if len(times) < 100:
        return 0.0
    lo, hi = int(0.01 * (len(times) - 1)), int(0.99 * (len(times) - 1))
    return (hi - lo) / max(times[hi] - times[lo], 1e-9) * 60


def bench_queries(n: int, rpm: int, latency: float, baseline_n: int) -> tuple[list[tuple], float, float]:
    import openai

    from distill.teacher.fake_server import FakeOpenAI, ServerConfig

    key = "sk-bench"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clean = run_queries(tmp, n, rpm, latency, 0.0)
        faulty = run_queries(tmp, n, rpm, latency, 0.2)
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
    rows = [
        ("", "distill_query", "distill_query, 20 % faults", "sequential + fixed sleep"),
        ("requests", f"{n:,}", f"{n:,} ({faulty['faults']:,} faults injected)", f"{baseline_n:,}"),
        ("requests/min through the limit", f"{clean['admitted_per_min']:,.0f}", f"{faulty['admitted_per_min']:,.0f}",
         f"{base_rpm:,.0f}"),
        (f"utilisation of {rpm:,}/min", f"{clean['admitted_per_min'] / rpm:.1%}", f"{faulty['admitted_per_min'] / rpm:.1%}",
         f"{base_rpm / rpm:.1%}"),
        ("answered / quarantined / lost", f"{clean['answered']:,} / {clean['quarantined']} / {clean['lost']}",
         f"{faulty['answered']:,} / {faulty['quarantined']} / {faulty['lost']}", ""),
        ("429s from the rate limit", f"{clean['rate_limited']}", f"{faulty['rate_limited']}", ""),
        ("duplicate requests", f"{clean['duplicates']}", f"{faulty['duplicates']}", ""),
    ]  # fmt: skip
    return rows, clean["admitted_per_min"] / rpm, faulty["admitted_per_min"] / rpm


def bench_top_tier(n: int, rpm: int, latency: float, concurrency: int, rounds: int) -> tuple[list[tuple], float]:
    """The top usage tier: ``rpm`` (30,000/min) at ``latency`` seconds, clean and with 20 % faults, interleaved
    (clean, faulty, clean, faulty, ...); median (min-max) over the rounds."""
    runs = {0.0: [], 0.2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for fault_rate in runs:
                runs[fault_rate].append(run_queries(Path(tmp), n, rpm, latency, fault_rate, concurrency))

    def col(key, scale=1.0, fmt="{:,.0f}"):
        return tuple(spread([r[key] * scale for r in runs[f]], fmt) for f in runs)

    def total(key):
        return tuple(f"{sum(r[key] for r in runs[f]):,}" for f in runs)

    util_steady = min(statistics.median(r["steady_per_min"] / rpm for r in runs[f]) for f in runs)
    rows = [
        ("", "distill_query", "distill_query, 20 % faults"),
        ("requests x rounds", f"{n:,} x {rounds}", f"{n:,} x {rounds} ({runs[0.2][0]['faults']:,} faults a round)"),
        ("requests/min while sending (1st-99th pct admission)", *col("steady_per_min")),
        (f"utilisation of {rpm:,}/min while sending", *col("steady_per_min", 100 / rpm, "{:.1f}%")),
        ("requests/min, whole run incl. the last retries", *col("admitted_per_min")),
        ("utilisation, whole run", *col("admitted_per_min", 100 / rpm, "{:.1f}%")),
        ("last 1 % of admissions -> last answer (s)", *col("tail_s", 1, "{:.1f}")),
        ("client CPU per request (ms)", *col("client_cpu_ms_per_request", 1, "{:.2f}")),
        ("answered / quarantined / lost (all rounds)", *(
            f"{sum(r['answered'] for r in runs[f]):,} / {sum(r['quarantined'] for r in runs[f])} / "
            f"{sum(r['lost'] for r in runs[f])}" for f in runs)),
        ("duplicate requests (all rounds)", *total("duplicates")),
    ]  # fmt: skip
    return rows, util_steady


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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the top-tier runs")
    args = parser.parse_args()
    if args.smoke:
        q_rows, util, util_faults = bench_queries(n=40, rpm=1200, latency=0.05, baseline_n=5)
        top = dict(n=200, rpm=30_000, latency=0.05, concurrency=64, rounds=1)
        t_rows, ratio = bench_tokenize(n=2000, baseline_n=500)
    else:
        q_rows, util, util_faults = bench_queries(n=2000, rpm=1200, latency=0.3, baseline_n=100)
        top = dict(n=12_000, rpm=30_000, latency=0.3, concurrency=256, rounds=args.rounds)
        t_rows, ratio = bench_tokenize(n=1_000_000, baseline_n=100_000)
    top_rows, top_util = bench_top_tier(**top)
    print("\nbench-teacher: queries (local OpenAI-compatible server, real HTTP)")
    print(table(q_rows))
    print(
        f"\nbench-teacher: the top usage tier, {top['rpm']:,} requests/min at {top['latency']} s latency, "
        f"--concurrency {top['concurrency']}"
    )
    print(table(top_rows))
    print("\nbench-teacher: tokenization")
    print(table(t_rows))
    if not args.smoke:
        print(
            f"\ngoals: utilisation >= 95%: {'MET' if min(util, util_faults) >= 0.95 else 'NOT MET'} "
            f"({util:.1%}; with 20 % faults {util_faults:.1%}); at 30,000/min while sending: "
            f"{'MET' if top_util >= 0.95 else 'NOT MET'} ({top_util:.1%}, the lower of clean and faulty); "
            f"tokenize >= 5x: {'MET' if ratio >= 5 else 'NOT MET'} ({ratio:.1f}x)"
        )


if __name__ == "__main__":
    main()
