"""A local model as the teacher, through the door OpenAI's take: ``serve_batch`` answers ``distill_query`` (live, with
log-probs), ``distill_convert --logprobs`` maps them to the student's ids, ``finetune_kd`` learns from the stored
top-k and, with ``--teacher_url``, from the server itself; and the teacher stage's guarantee holds against it — a
server killed mid-run loses no finished answer, and the rerun sends only the rest."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

from serve_helpers import ServerProcess
from teacher_helpers import write_records

from conftest import REPO, run_cli

PROMPT = "Title: {title}\nBody: {body}\nWrite three search queries."
KD_STEPS = ["--mode", "full", "--train.max_steps", "8", "--train.epochs", "null", "--train.global_batch_size", "4",
            "--train.micro_batch_size", "4", "--train.lr_warmup_steps", "0", "--eval.interval", "100",
            "--eval.initial_validation", "true", "--optimizer.lr", "0.003", "--kd_ratio", "1.0", "--precision",
            "32-true"]  # fmt: skip


def _answered(path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("status") == "ok"]


def test_distill_query_convert_and_kd_through_serve_batch(pair, tmp_path):
    teacher, student = pair
    records = write_records(tmp_path / "records.jsonl", 16)
    responses = tmp_path / "responses.jsonl"
    with ServerProcess(teacher, "--max_batch_size", "8") as server:
        done = run_cli("distill_query", "--records", records, "--prompt", PROMPT, "--out", responses, "--model",
                       "teacher", "--base_url", server.base_url, "--logprobs", "5", "--max_tokens", "16",
                       "--temperature", "0", "--concurrency", "8", "--stop", '["e", "a", "o", "i"]',
                       env={"OPENAI_API_KEY": "sk-local"})  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        rows = _answered(responses)
        assert len(rows) == 16 and all(len(r["choices"][0]["logprobs"]) > 0 for r in rows)
        data = tmp_path / "data"
        done = run_cli("distill_convert", "--records", records, "--responses", responses, "--out_dir", data,
                       "--instruction", "Queries for: {title}", "--logprobs", "true", "--tokenizer", student,
                       "--val_fraction", "0.25")  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        stored = tmp_path / "kd-stored"
        done = run_cli("finetune_kd", student, "--data", data, "--teacher_logprobs", data / "teacher_logprobs",
                       "--out_dir", stored, *KD_STEPS)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        vals = [m for m in map(json.loads, (stored / "metrics.jsonl").read_text().splitlines()) if "val_loss" in m]
        assert vals[-1]["val_kl_teacher_student"] < vals[0]["val_kl_teacher_student"]
        # the server scores the student's data itself (echo + logprobs on /v1/completions, as vLLM does)
        online = tmp_path / "kd-url"
        done = run_cli("finetune_kd", student, "--data", data, "--teacher_url", server.base_url, "--teacher_model",
                       "teacher", "--out_dir", online, *KD_STEPS)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        vals = [m for m in map(json.loads, (online / "metrics.jsonl").read_text().splitlines()) if "val_loss" in m]
        assert all(math.isfinite(v["val_kl_teacher_student"]) for v in vals)
        assert vals[-1]["val_kl_teacher_student"] < vals[0]["val_kl_teacher_student"]
    assert not any("Traceback" in line for line in server.lines)


def test_a_server_killed_mid_run_loses_no_answer_and_the_rerun_sends_only_the_rest(pair, tmp_path):
    teacher, _ = pair
    records = write_records(tmp_path / "records.jsonl", 120)
    responses = tmp_path / "responses.jsonl"
    query = [sys.executable, "-m", "litgpt_ext", "distill_query", "--records", str(records), "--prompt", PROMPT,
             "--out", str(responses), "--model", "teacher", "--max_tokens", "32", "--concurrency", "1",
             "--max_attempts", "2", "--timeout", "5", "--temperature", "0", "--stop", '["e", "a", "o", "i"]']  # fmt: skip
    env = {"OPENAI_API_KEY": "sk-local", "PATH": "/usr/bin:/bin"}
    first = ServerProcess(teacher, "--max_batch_size", "2").start()
    client = subprocess.Popen([*query, "--base_url", first.base_url], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and (not responses.exists() or len(_answered(responses)) < 4):
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    output = client.communicate(timeout=120)[0]
    finished = _answered(responses)
    assert 4 <= len(finished) < 120, output[-2000:]
    assert client.returncode != 0  # the run did not finish: a pipeline must not go on
    # the requests the dead server could not answer are in the cache as failures; the rerun re-sends those only
    with ServerProcess(teacher, "--max_batch_size", "8") as second:
        rerun = subprocess.run([*query, "--base_url", second.base_url, "--retry_failed", "true", "--concurrency", "8"],
                               cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    said = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, said[-3000:]
    assert f"{120 - len(finished)} to send" in said, said[-2000:]
    sent = [line for line in second.lines if line.startswith("/v1/chat/completions ")]
    assert len(sent) == 120 - len(finished)
    answers = _answered(responses)
    assert len(answers) == 120 and len({r["ids"][0] for r in answers}) == 120
    assert answers[: len(finished)] == finished  # what finished before the kill was kept, as it was
