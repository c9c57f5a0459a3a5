"""The pipeline make targets on the tiny demo task, for real (the stand-in teacher server, the tiny student), in a
temporary RUN folder: the whole chain, a rerun that does nothing, a changed teacher prompt that re-runs from the
teacher stage, stale outputs moved aside, and a failed teacher stage that stops the chain."""

from __future__ import annotations

import json
import socket

import pytest

from conftest import REPO, run_make


def _commands(output: str) -> list[str]:
    """The toolchain commands make ran (or would run), by name."""
    names = ("distill_query", "distill_convert", "distill_tokenize", "finetune_sft", "export_hf", "generate_batch")
    return [name for line in output.splitlines() if "-m litgpt_ext" in line for name in names if f" {name} " in line]


def _first_records(tmp_path, n: int = 20):
    records = tmp_path / "records.jsonl"
    records.write_text("".join((REPO / "artifacts" / "demo" / "records.jsonl").read_text().splitlines(True)[:n]))
    return records


def test_pipeline_targets_run_the_chain_once_and_rerun_from_what_changed(tmp_path):
    # a long RUN path: settings stamps over 200 bytes once hit a GNU make 4.3 $(file <) bug (every stage reran)
    run, prompt = tmp_path / ("long-folder-name-" * 8) / "run", tmp_path / "teacher_prompt.md"
    prompt.write_text((REPO / "prompts" / "search_queries.md").read_text())
    task = ["TASK=demo-tiny", f"RUN={run}", f"RECORDS={_first_records(tmp_path)}", f"TEACHER_PROMPT={prompt}"]
    task.append("FINETUNE_FLAGS=--train.max_steps 2")
    chain = ["distill_query", "distill_convert", "distill_tokenize", "finetune_sft", "export_hf", "generate_batch"]

    assert _commands(run_make("-n", "generate", *task).stdout) == chain  # make -n shows the chain
    first = run_make("generate", *task)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert _commands(first.stdout) == chain
    generations = [json.loads(line) for line in (run / "distilled_generations.jsonl").read_text().splitlines()]
    assert len(generations) == 20 and (run / "hf-distilled" / "config.json").is_file()
    queries = {r["output"] for r in json.loads((run / "distilled" / "train.json").read_text())}

    again = run_make("generate", *task)  # nothing changed: nothing runs
    assert again.returncode == 0 and _commands(again.stdout) == [], again.stdout[-2000:]
    assert run_make("-q", "generate", *task).returncode == 0
    # a changed flag re-runs its stage and what follows it, nothing before
    assert _commands(run_make("-n", "generate", *task[:-1], "FINETUNE_FLAGS=--train.max_steps 3").stdout) == chain[3:]

    # a changed teacher prompt re-runs from the teacher stage (the stand-in teacher answers categories now)
    prompt.write_text(prompt.read_text() + "\nThen list the document's categories instead.\n")
    assert _commands(run_make("-n", "generate", *task).stdout) == chain
    converted = run_make("convert", *task)
    assert converted.returncode == 0 and _commands(converted.stdout) == chain[:2]
    assert "20 to send" in converted.stdout
    categories = {r["output"] for r in json.loads((run / "distilled" / "train.json").read_text())}
    assert categories and not categories & queries and all(c[0].isupper() for c in categories)
    assert _commands(run_make("-n", "generate", *task).stdout) == chain[2:]

    rest = run_make("generate", *task)
    assert rest.returncode == 0 and _commands(rest.stdout) == chain[2:]
    assert f"{run}/sft-distilled predates" in rest.stdout and (run / "sft-distilled.previous" / "final").is_dir()
    assert (run / "distilled_generations.jsonl.previous").is_file()
    assert len((run / "distilled_generations.jsonl").read_text().splitlines()) == 20


def test_a_teacher_stage_that_cannot_finish_stops_the_chain(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = tmp_path / "run"
    done = run_make(
        "generate",
        "TASK=demo-tiny",
        f"RUN={run}",
        f"RECORDS={_first_records(tmp_path)}",
        "TEACHER_WRAP=",
        f"TEACHER_FLAGS=--base_url http://127.0.0.1:{port}/v1 --timeout 1",
        env={"OPENAI_API_KEY": "sk-test"},
    )
    assert done.returncode != 0
    assert f"cannot reach http://127.0.0.1:{port}/v1" in done.stdout + done.stderr
    assert _commands(done.stdout) == ["distill_query"]  # nothing after the failed stage ran
    assert not (run / ".make" / "teacher.done").exists() and not (run / "distilled").exists()
    assert not (run / "responses.jsonl").exists() or (run / "responses.jsonl").read_text() == ""


def test_the_distilled_student_reproduces_the_teacher_on_held_out_records(tmp_path):
    """`make report` on the tiny demo task with a shorter finetune (220 steps instead of 300): the student's items on
    the 80 held-out records reach F1 >= 0.6 against the teacher's (a broken pipeline — wrong references, prompts or
    parser, no learning — stays near the untrained student's 0), and the report prices the teacher's 400 answers
    next to the student's measured throughput."""
    run = tmp_path / "run"
    task = [
        "TASK=demo-tiny",
        f"RUN={run}",
        "FINETUNE_FLAGS=--train.max_steps 220",
        "TEACHER_FLAGS=--rpm 20000 --concurrency 16 --timeout 0.5",
        "TEACHER_WRAP=.venv/bin/python -m distill.teacher.fake_server --rpm 20000 --fault_rate 0.1 --stall_s 1 --",
    ]
    done = run_make("report", *task)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    fidelity, untrained = report["fidelity"], report["untrained_student"]
    assert fidelity["scored"] == 80 and fidelity["item_f1"] >= 0.6, fidelity
    assert untrained["item_f1"] <= 0.1 and fidelity["item_f1"] - untrained["item_f1"] >= 0.5
    teacher, student = report["teacher"], report["student"]
    assert teacher["records_answered"] == 400 and teacher["usd"] > 0 and teacher["model"] == "gpt-4o-mini"
    assert teacher["usd_per_1m_records"] == pytest.approx(teacher["usd"] / 400 * 1e6, rel=0.01)
    assert student["records"] == 320 and student["records_per_s"] > 0 and student["tokens_per_s"] > 0
    assert "== fidelity: student vs teacher on 80 held-out records ==" in done.stdout
    assert run_make("-q", "report", *task).returncode == 0  # up to date: nothing to rerun


def test_settings_stamps_of_any_length_are_up_to_date_once_written(tmp_path):
    """A stage's settings stamp, once written, is up to date (`make -q` exits 0) whatever the length of the paths in
    it: GNU make 4.3's $(file <) corrupted stamps of some lengths (over ~200 bytes) and every such stage reran."""
    stale = []
    for n in range(0, 240, 8):
        folder = tmp_path / ("x" * (n + 1))
        task = ["TASK=demo-tiny", f"RUN={folder}/run", f"RECORDS={folder}/records.jsonl"]
        for stage in ("teacher", "convert", "student", "generate"):
            stamp = f"{folder}/run/.make/{stage}.settings"
            assert run_make(stamp, *task).returncode == 0
            if run_make("-q", stamp, *task).returncode != 0:
                stale.append((n, stage))
    assert stale == []


def test_make_serve_puts_the_tasks_local_teacher_where_its_teacher_stage_asks(tiny_instruct, tmp_path):
    """A task naming a local teacher: ``make serve`` starts serve_batch on TEACHER_CHECKPOINT at TEACHER_URL (asking
    for TEACHER_API_KEY), ``make teacher`` sends distill_query there with that key — the OpenAI key in the
    environment is never sent (the server would refuse it: 401) — and the answers land in the task's cache."""
    import os
    import signal
    import subprocess
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    task = ["TASK=demo-tiny", f"RUN={run}", f"RECORDS={_first_records(tmp_path, 4)}", "TEACHER_WRAP=",
            f"TEACHER_CHECKPOINT={tiny_instruct}", "TEACHER_MODEL=local", f"TEACHER_URL=http://127.0.0.1:{port}/v1",
            f"TEACHER_PROMPT={REPO / 'prompts' / 'one_search_query.md'}",
            'TEACHER_FLAGS=--temperature 0 --max_tokens 16 --stop \'["e", " "]\' --concurrency 4']  # fmt: skip
    env = {"TEACHER_API_KEY": "sk-local-teacher", "OPENAI_API_KEY": "sk-openai-must-not-leave"}
    assert f"--base_url http://127.0.0.1:{port}/v1" in run_make("-n", "teacher", *task, env=env).stdout
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    server = subprocess.Popen(["make", "--no-print-directory", "serve", *task], cwd=REPO, env={**clean, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert server.poll() is None, server.stdout.read()[-2000:]
        done = run_make("teacher", *task, env=env)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    rows = [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["status"] == "ok" and r["model"] == "local" for r in rows)
    assert "serve_batch" in output and "--api_key_env TEACHER_API_KEY" in output
    assert "sk-local-teacher" not in output + done.stdout + done.stderr  # (make echoes ${TEACHER_API_KEY}, not the key)
