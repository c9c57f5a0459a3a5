"""The SLURM job scripts under bash, with SLURM's variables set and stand-in ``sbatch`` / ``srun`` / ``make`` /
``litgpt-ext`` executables on PATH that record their arguments and environment (there is no SLURM here)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import REPO, run_make

RECORDER = """#!/usr/bin/env bash
# stand-in: record the arguments (NUL-separated) and the environment, answer like the real tool would
n=$(( $(cat "$RECORD_DIR/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$RECORD_DIR/count"
printf '%s\\0' "$(basename "$0")" "$@" > "$RECORD_DIR/$n.args"
env -0 > "$RECORD_DIR/$n.env"
if [ "$(basename "$0")" = sbatch ]; then echo "$((4100 + n));cluster-a"; fi
"""


def _stand_ins(tmp_path: Path, *names: str) -> tuple[dict, Path]:
    bin_dir, record_dir = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    record_dir.mkdir()
    for name in names:
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD_DIR": str(record_dir),
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_ID": "4242",
        "OPENAI_API_KEY": "sk-secret-from-the-shell",
    }
    return env, record_dir


def _calls(record_dir: Path) -> list[tuple[list[str], dict]]:
    count = int((record_dir / "count").read_text()) if (record_dir / "count").exists() else 0
    calls = []
    for n in range(1, count + 1):
        args = (record_dir / f"{n}.args").read_bytes().decode().split("\0")[:-1]
        env = dict(kv.split("=", 1) for kv in (record_dir / f"{n}.env").read_bytes().decode().split("\0") if "=" in kv)
        calls.append((args, env))
    return calls


def _bash(script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "jobs" / script), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_submit_pipeline_chains_every_stage_with_afterok_and_exports_the_task(tmp_path):
    env, calls_dir = _stand_ins(tmp_path, "sbatch")
    env["GENERATE_SHARDS"] = "4"
    env["FINETUNE_NODES"] = "2"
    done = _bash("submit_pipeline.sh", env, "demo-tiny")
    assert done.returncode == 0, done.stderr
    calls = _calls(calls_dir)
    scripts = [args[-1] for args, _ in calls]
    assert scripts == [
        "jobs/teacher.sbatch",
        "jobs/data.sbatch",
        "jobs/finetune.sbatch",
        "jobs/generate_array.sbatch",
        "jobs/merge_generations.sbatch",
    ]
    ids = [str(4100 + n) for n in range(1, 6)]
    for n, (args, job_env) in enumerate(calls):
        assert args[0] == "sbatch" and "--parsable" in args and "--export=ALL" in args
        dependency = [a for a in args if a.startswith("--dependency=")]
        assert dependency == ([] if n == 0 else [f"--dependency=afterok:{ids[n - 1]}"])  # each waits for the last
        assert job_env["TASK"] == "demo-tiny" and job_env["OPENAI_API_KEY"] == "sk-secret-from-the-shell"
        assert not any("sk-secret" in a for a in args)  # the key travels in the environment only
    finetune_args, finetune_env = calls[2]
    assert "--nodes=2" in finetune_args
    assert finetune_env["STUDENT"] == "artifacts/runs/demo/tiny/student"
    assert finetune_env["FINETUNE_CONFIG"] == "artifacts/tasks/demo-tiny-finetune.yaml"
    assert finetune_env["FINETUNE_DIR"] == "artifacts/runs/demo/tiny/sft-distilled"
    assert finetune_env["HF_DIR"] == "artifacts/runs/demo/tiny/hf-distilled"
    generate_args, generate_env = calls[3]
    assert "--array=0-3" in generate_args
    assert generate_env["CHECKPOINT"] == "artifacts/runs/demo/tiny/sft-distilled/final"
    assert generate_env["INPUT"] == "artifacts/runs/demo/tiny/distilled/prompts.jsonl"
    assert generate_env["OUTPUT"] == "artifacts/runs/demo/tiny/distilled_generations.jsonl"
    assert generate_env["EXTRA_ARGS"] == "--max_new_tokens 32 --temperature 0 --precision 32-true"
    assert calls[4][1]["OUTPUT"] == "artifacts/runs/demo/tiny/distilled_generations.jsonl"
    assert f"merge {ids[4]}" in done.stdout


def test_submit_pipeline_stops_before_submitting_when_the_task_is_unknown(tmp_path):
    env, calls_dir = _stand_ins(tmp_path, "sbatch")
    done = _bash("submit_pipeline.sh", env, "no-such-task")
    assert done.returncode != 0 and "no task file artifacts/tasks/no-such-task.mk" in done.stderr
    assert _calls(calls_dir) == []


def test_finetune_job_takes_devices_and_nodes_from_the_allocation_and_resumes(tmp_path):
    env, calls_dir = _stand_ins(tmp_path, "srun", "litgpt-ext")
    env.update(
        SLURM_NTASKS_PER_NODE="4",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NNODES="2",
        SLURM_NTASKS="8",
        SLURM_RESTART_COUNT="1",
        LITGPT_EXT=str(tmp_path / "bin" / "litgpt-ext"),
        STUDENT="checkpoints/s",
        DATA_DIR="out/data",
        FINETUNE_DIR="out/ft",
        FINETUNE_CONFIG="litgpt_ext/configs/sft-lora.yaml",
        FINETUNE="finetune_dpo",
        FINETUNE_FLAGS="--beta 0.2 --train.max_steps 100",
        HF_DIR="out/hf",
        EXPORT_FLAGS="--dtype bf16",
    )
    done = _bash("finetune.sbatch", env)
    assert done.returncode == 0, done.stderr
    (srun, srun_env), (export, _) = _calls(calls_dir)
    assert srun[:3] == ["srun", "--kill-on-bad-exit=1", env["LITGPT_EXT"]] and srun[3:] == [
        "finetune_dpo",
        "checkpoints/s",
        "--config",
        "litgpt_ext/configs/sft-lora.yaml",
        "--data",
        "out/data",
        "--out_dir",
        "out/ft",
        "--devices",
        "4",
        "--num_nodes",
        "2",
        "--resume",
        "auto",
        "--beta",
        "0.2",
        "--train.max_steps",
        "100",
    ]
    assert srun_env["SLURM_NTASKS"] == "8"  # Fabric reads the ranks from the environment srun passes on
    assert export == ["litgpt-ext", "export_hf", "out/ft/final", "--out_dir", "out/hf", "--overwrite", "true"] + [
        "--dtype",
        "bf16",
    ]
    assert "2 node(s) x 4 device(s) (restart 1)" in done.stdout


def test_finetune_job_refuses_to_start_without_its_settings(tmp_path):
    env, calls_dir = _stand_ins(tmp_path, "srun", "litgpt-ext")
    done = _bash("finetune.sbatch", env)
    assert done.returncode != 0 and "set STUDENT" in done.stderr and _calls(calls_dir) == []


def test_teacher_and_data_jobs_run_the_task_make_targets(tmp_path):
    env, calls_dir = _stand_ins(tmp_path, "make")
    env["TASK"] = "mytask"
    for script in ("teacher.sbatch", "data.sbatch"):
        done = _bash(script, env)
        assert done.returncode == 0, done.stderr
    (teacher, teacher_env), (data, _) = _calls(calls_dir)
    assert teacher == ["make", "--no-print-directory", "teacher", "TASK=mytask"]
    assert data == ["make", "--no-print-directory", "tokenize", "TASK=mytask"]
    assert teacher_env["OPENAI_API_KEY"] == "sk-secret-from-the-shell"
    no_task = {k: v for k, v in env.items() if k != "TASK"}
    assert _bash("teacher.sbatch", no_task).returncode != 0


def test_the_job_scripts_declare_requeue_where_a_rerun_resumes():
    for script in ("teacher.sbatch", "finetune.sbatch", "generate_array.sbatch"):
        text = (REPO / "jobs" / script).read_text()
        assert "#SBATCH --requeue" in text and "set -euo pipefail" in text


def test_every_shipped_task_file_resolves_its_settings():
    """make task-env reads a task file without running anything: the template and the demo both parse."""
    for task in ("demo", "example"):
        done = run_make("-s", "task-env", f"TASK={task}")
        assert done.returncode == 0, done.stderr
        settings = dict(line.split("=", 1) for line in done.stdout.splitlines())
        assert settings["TASK"] == task and settings["STUDENT"] and settings["FINETUNE_CONFIG"].endswith(".yaml")
        assert (REPO / settings["FINETUNE_CONFIG"]).is_file() and (REPO / settings["TEACHER_PROMPT"]).is_file()


def test_every_log_folder_a_job_writes_to_ships_with_a_fresh_clone():
    """SLURM opens ``#SBATCH --output`` before the script's first line and does not create its folder: a job
    submitted on its own (docs/pipeline.md's sbatch lines) from a fresh clone failed before it started."""
    import re

    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split())
    folders = set()
    for script in (REPO / "jobs").glob("*.sbatch"):
        for match in re.finditer(r"^#SBATCH --(?:output|error)=(\S+)", script.read_text(), re.M):
            folders.add(str(Path(match.group(1)).parent))
    assert folders == {"logs"}
    assert all(f"{folder}/.gitignore" in tracked for folder in folders), folders
