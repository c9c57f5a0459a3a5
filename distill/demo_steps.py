"""How ``make demo`` runs its stages: each is the ``litgpt-ext`` command a user would type, echoed, run as a subprocess
(alone, or side by side where stages are independent), with its outputs under ``artifacts/runs/demo/``."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


DEMO_DATA = REPO / "artifacts" / "demo"


RUN = REPO / "artifacts" / "runs" / "demo"


TINY = RUN / "tiny"
"""The demo task on the tiny student (``make report TASK=demo-tiny``): the base of the stages here."""


def litgpt_ext(*args: object) -> None:
    """Run one CLI stage, echoing the command like a user would type it."""
    cmd = ["litgpt-ext", *map(str, args)]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "litgpt_ext", *cmd[1:]], check=True, cwd=REPO)
    print(f"  ({time.perf_counter() - t0:.1f}s)", flush=True)


def litgpt_ext_in_process(*args: object) -> None:
    """:func:`litgpt_ext` in this process (a smoke run of a study: dozens of short stages, no interpreter each);
    a stage that fails stops the run as the subprocess would."""
    from litgpt_ext.cli import main_in_process

    cmd = ["litgpt-ext", *map(str, args)]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    code = main_in_process(cmd[1:])
    if code:
        raise subprocess.CalledProcessError(code, cmd)


def litgpt_ext_side_by_side(*commands: tuple) -> None:
    """Run independent CLI stages at the same time, as many as there are cores, each with its share of the cores as
    torch threads (oversubscribed threads spin against each other), then echo each command with its output, in order,
    as :func:`litgpt_ext` does. Their imports and model loads — most of a short stage — overlap."""
    import os

    cores = os.cpu_count() or 1
    width = max(1, min(len(commands), cores))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // width))}
    results: list[tuple[list[str], subprocess.CompletedProcess, float]] = []
    pending = list(commands)
    while pending:
        batch, pending = pending[:width], pending[width:]
        started = []
        for args in batch:
            cmd = ["litgpt-ext", *map(str, args)]
            proc = subprocess.Popen([sys.executable, "-m", "litgpt_ext", *cmd[1:]], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
            started.append((cmd, proc, time.perf_counter()))
        for cmd, proc, t0 in started:
            output, _ = proc.communicate()
            results.append((cmd, subprocess.CompletedProcess(cmd, proc.returncode, output), time.perf_counter() - t0))
    for cmd, done, seconds in results:
        print(f"\n$ {shlex.join(cmd)}", flush=True)
        print(done.stdout.rstrip())
        print(f"  ({seconds:.1f}s, side by side)", flush=True)
    for _, done, _ in results:
        done.check_returncode()


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))
