"""``make bench-sql-label``: distill_sql_label throughput, ``--workers 1`` vs all cores, and the cache-hit rerun.

Workload: the 60-question fixture (3 small SQLite databases); per question its rule-made mutations plus distinct
variants of the gold (``SELECT * FROM (gold) LIMIT n`` and the gold's rows re-ordered by each column), so every
candidate is a distinct statement that really executes — ~1 ms queries, where the harness (IPC, hashing, the
fsync'd cache) matters as much as SQLite. Each measured run is the whole command in a fresh process with an empty
cache (start-up included), timed from the label step's own ``executions.seconds`` (execution phase) and the wall
clock. Runs are interleaved (1 worker, N workers, repeated); the table shows the median and min-max.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from tests.bench.common import REPO, run_measured, spread, table

sys.path.insert(0, str(REPO / "artifacts" / "sql_fixture"))
from build_fixture import build  # noqa: E402


def make_candidates(fixture: Path, per_question: int, out: Path) -> int:
    from distill.sql.candidates import distill_sql_candidates

    mutations = out.with_name("mutations.jsonl")
    distill_sql_candidates(
        questions=fixture / "questions.jsonl",
        db_dir=fixture / "database",
        output=out.with_name("prompts.jsonl"),
        mutate=8,
        mutations_output=mutations,
    )
    rows, total = [], 0
    for line in mutations.read_text().splitlines():
        row = json.loads(line)
        gold = row["generations"][0]
        extra = [f"SELECT * FROM ({gold}) LIMIT {n}" for n in range(1, per_question - len(row["generations"]) + 1)]
        row["generations"] += extra
        total += len(row["generations"])
        rows.append(row)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return total


def label(fixture: Path, candidates: Path, out_dir: Path, workers: int) -> dict:
    run = run_measured(
        [
            sys.executable,
            "-m",
            "litgpt_ext",
            "distill_sql_label",
            "--questions",
            str(fixture / "questions.jsonl"),
            "--db_dir",
            str(fixture / "database"),
            "--candidates",
            f"[{candidates}]",
            "--out_dir",
            str(out_dir),
            "--version",
            "v2",
            "--workers",
            str(workers),
        ]
    )
    summary = json.loads((out_dir / "summary.json").read_text())
    ex = summary["executions"]
    return {"wall": run.seconds, "executed": ex["executed"], "cached": ex["cached"], "exec_s": ex.get("seconds", 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few hundred candidates, one round")
    parser.add_argument("--per_question", type=int, default=340, help="candidates per question (60 questions)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    per_question, rounds = (8, 1) if args.smoke else (args.per_question, args.rounds)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fixture = build(tmp / "fixture")
        candidates = tmp / "candidates.jsonl"
        total = make_candidates(fixture, per_question, candidates)
        runs: dict[int, list[dict]] = {1: [], cores: []}
        for r in range(rounds):
            for workers in dict.fromkeys((1, cores)):
                result = label(fixture, candidates, tmp / f"out-{workers}-{r}", workers)
                runs[workers].append(result)
                print(f"round {r + 1}/{rounds} workers={workers}: {result}", flush=True)
        rerun = label(fixture, candidates, tmp / f"out-{cores}-0", cores)  # same out_dir: every query cached
        print(f"cache-hit rerun: {rerun}", flush=True)

    def rate(results: list[dict], key: str) -> list[float]:
        return [r["executed"] / r[key] for r in results]

    executed = runs[1][0]["executed"]
    print(
        f"\nbench-sql-label: {executed:,} distinct statements ({total:,} candidates incl. duplicates of the gold, "
        f"+ 60 golds), 60 questions, 3 SQLite databases; {rounds} interleaved round(s), {cores} cores"
    )
    rows = [("", "statements/s (execution phase)", "statements/s (whole command)")]
    for workers in dict.fromkeys((1, cores)):
        rows.append(
            (f"--workers {workers}", spread(rate(runs[workers], "exec_s")), spread(rate(runs[workers], "wall")))
        )
    print(table(rows))
    if cores > 1:
        speedup = statistics.median(rate(runs[cores], "exec_s")) / statistics.median(rate(runs[1], "exec_s"))
        print(f"speed-up of {cores} workers over 1 (execution phase): {speedup:.2f}x")
    print(
        f"cache-hit rerun: {rerun['cached']:,} cached, {rerun['executed']} executed, whole command {rerun['wall']:.1f}s"
    )


if __name__ == "__main__":
    main()
