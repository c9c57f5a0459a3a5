"""Tiny smoke runs of each benchmark harness (the benchmarks themselves are `make bench-*`, not part of the tests)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("bench_sft", ["tokens/s (non-padding)", "peak RSS MB"]),
        ("bench_teacher", ["requests/min through the limit", "20 % faults", "records/s", "while sending"]),
        (
            "bench_generate",
            [
                "generate_batch tok/s",
                "greedy texts identical",
                "rows stopped",
                "--compile warm-up",
                "--pack_weights false",
            ],
        ),
        ("bench_dpo", ["ours tokens/s", "TRL tokens/s", "DPO", "ORPO"]),
        ("bench_sql_label", ["statements/s (execution phase)", "cache-hit rerun"]),
        ("bench_orm", ["scoring rows/s", "training tokens/s"]),
        ("bench_prm", ["step scoring rows/s"]),
        (
            "bench_kd",
            [
                "ours tokens/s",
                "TRL tokens/s",
                "online, lora",
                "offline top-20",
                "positions/s",
                "ours steps/s",
                "on-policy, lora",
                "generated lengths",
                "bench-kd divergences",
                "skew reverse KL (alpha 0.1)",
                "adaptive KL (mu 0.5)",
            ],
        ),  # fmt: skip
    ],
)
def test_bench_smoke(module, expected):
    _smoke(module, expected)


def _smoke(module, expected, *extra):
    # the contenders run in the bench's own process: a smoke run checks the harness, not the speed
    result = subprocess.run(
        [sys.executable, "-m", f"tests.bench.{module}", "--smoke", *map(str, extra)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LITGPT_EXT_BENCH_IN_PROCESS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(text in result.stdout for text in expected), result.stdout


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("bench_generate", ["its chat template", "greedy texts identical"]),
        ("bench_sft", ["tokens/s (non-padding)"]),
        ("bench_shared_prefix", ["--prefix_cache false", "prompt tokens reused", "with vs without the cache 12 of 12"]),
        (
            "bench_serve",
            [
                "serve_batch, 4 openai clients",
                "equal generate_batch's: 12 of 12",
                "time to first token",
                "logprobs + top_logprobs",
            ],
        ),
        (
            "profile_prefill",
            [
                "the body's linear GEMMs, alone",
                "attention's GEMMs, each alone",
                "body / all its GEMMs",
                "after vs before",
                "Self CPU",
            ],
        ),
    ],
)
def test_bench_smoke_on_a_checkpoint(module, expected, tiny_instruct):
    _smoke(module, expected, "--checkpoint", tiny_instruct)
