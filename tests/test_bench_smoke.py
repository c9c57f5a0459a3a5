"""Tiny smoke runs of each benchmark harness (the benchmarks themselves are `make bench-*`, not part of the tests)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_bench_sft_smoke():
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_sft", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tokens/s (non-padding)" in result.stdout and "peak RSS MB" in result.stdout


def test_bench_teacher_smoke():
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_teacher", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "achieved requests/min" in result.stdout and "records/s" in result.stdout


def test_bench_generate_smoke():
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_generate", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generated tokens/s" in result.stdout and "transformers generate" in result.stdout
