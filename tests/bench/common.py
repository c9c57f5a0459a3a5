"""Helpers shared by the benchmarks: run a command as a child process and measure its wall time and peak RSS."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ChildRun:
    seconds: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    cpu_s: float = 0.0
    """User + system CPU seconds the child used."""


def run_measured(
    args: list[str], cwd: Path | None = None, env: dict | None = None, ok_codes: tuple[int, ...] = (0,)
) -> ChildRun:
    """Run ``python -m litgpt_ext ARGS``-style commands; peak RSS comes from the child's own rusage (wait4).

    With ``LITGPT_EXT_BENCH_IN_PROCESS=1`` (the smoke runs of ``tests/test_bench_smoke.py``) a ``python -m MODULE``
    command with no environment of its own runs in this process instead: a smoke run checks the harness — its
    contenders, outputs and tables — not their speed, and a new interpreter per contender costs seconds of imports
    each. Its time and RSS are then this process's, meaningless as measurements."""
    if os.environ.get("LITGPT_EXT_BENCH_IN_PROCESS") == "1" and args[:2] == [sys.executable, "-m"] and not env:
        return _in_process(args, cwd, ok_codes)
    out_f = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}-{time.time_ns()}.out", "w+")
    err_f = open(out_f.name + ".err", "w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out_f, stderr=err_f)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_f.seek(0), err_f.seek(0)
    result = ChildRun(seconds, usage.ru_maxrss / 1024, out_f.read(), err_f.read(), usage.ru_utime + usage.ru_stime)
    for f in (out_f, err_f):
        f.close()
        os.unlink(f.name)
    if proc.returncode not in ok_codes:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(map(str, args))}")
    return result


def _in_process(args: list[str], cwd: Path | None, ok_codes: tuple[int, ...]) -> ChildRun:
    """``python -m MODULE ARGV`` run here: ``litgpt_ext`` through its CLI's ``main_in_process``, any other module as
    ``__main__`` with ``sys.argv`` set, its output captured."""
    import contextlib
    import io
    import resource
    import runpy

    module, argv = str(args[2]), [str(a) for a in args[3:]]
    out, err = io.StringIO(), io.StringIO()
    t0, cwd_before, argv_before = time.perf_counter(), os.getcwd(), sys.argv
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if module == "litgpt_ext":
                from litgpt_ext.cli import main_in_process

                code = main_in_process(argv)
            else:
                sys.argv = [module, *argv]
                try:
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                except SystemExit as stop:
                    code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        os.chdir(cwd_before)
        sys.argv = argv_before
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = ChildRun(seconds, usage.ru_maxrss / 1024, out.getvalue(), err.getvalue(), usage.ru_utime + usage.ru_stime)
    if code not in ok_codes:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"benchmark command failed ({code}): {' '.join(map(str, args))}")
    return result


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """Median, then (min-max) when there is more than one round."""
    med = statistics.median(values)
    return fmt.format(med) + (f" ({fmt.format(min(values))}-{fmt.format(max(values))})" if len(values) > 1 else "")


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).rjust(w) if j else str(c).ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows
    )


def hf_precision(precision: str) -> dict:
    """What a Hugging Face trainer (TRL) needs to run at ``precision`` — the contenders of a bench compare at one
    precision, whatever the device: the model's dtype, the ``TrainingArguments`` flags, and the device (CUDA when
    there is one). ``32-true``: fp32; ``bf16-mixed``: fp32 weights under bf16 autocast (``bf16=True``);
    ``bf16-true``: the model held in bf16. Anything else is refused: no contender may run at another precision."""
    import torch

    if precision not in ("32-true", "bf16-mixed", "bf16-true"):
        raise SystemExit(f"error: precision: the TRL contender runs 32-true, bf16-mixed or bf16-true, not {precision}")
    return {
        "dtype": torch.bfloat16 if precision == "bf16-true" else torch.float32,
        # bf16=False also stops transformers autocasting to bf16 on a CPU that supports it
        "args": {"bf16": precision == "bf16-mixed", "use_cpu": not torch.cuda.is_available()},
    }
