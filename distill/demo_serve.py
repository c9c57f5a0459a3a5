"""``make demo``'s local-teacher stage: the real SmolLM2-135M-Instruct behind ``serve_batch`` answers a few demo
records through ``distill_query`` — real model answers, with their log-probs, through the path OpenAI's take — and
the server's ``/metrics`` shows the task prompt's shared head reused across records (the prefix cache)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from distill.demo_steps import DEMO_DATA, REPO, RUN, rel

RECORDS = 6


def local_teacher_stage(student: Path) -> list[tuple[str, Path]]:
    teacher = REPO / "checkpoints" / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
    out = RUN / "local-teacher"
    out.mkdir(parents=True, exist_ok=True)
    records = out / "records.jsonl"
    records.write_text("".join((DEMO_DATA / "records.jsonl").read_text().splitlines(keepends=True)[:RECORDS]))
    responses = out / "responses.jsonl"
    responses.unlink(missing_ok=True)  # a fresh run each time: the demo shows the server answering
    serve = ["litgpt-ext", "serve_batch", rel(teacher), "--model_name", "smollm2", "--port", "0"]
    print(f"\n$ {shlex.join(serve)} &", flush=True)
    lines: list[str] = []
    server = subprocess.Popen([sys.executable, "-m", "litgpt_ext", *serve[1:]], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True).start()
    try:
        url = _wait_for_url(server, lines)
        query = ["litgpt-ext", "distill_query", "--records", rel(records), "--prompt", "prompts/one_search_query.md",
                 "--model", "smollm2", "--base_url", url, "--out", rel(responses), "--max_tokens", "64",
                 "--temperature", "0", "--logprobs", "3", "--concurrency", "8"]  # fmt: skip
        print(f"\n$ OPENAI_API_KEY=local {shlex.join(query)}", flush=True)
        t0 = time.perf_counter()
        env = {**os.environ, "OPENAI_API_KEY": "local"}  # a keyless local server: the user's key is not sent
        done = subprocess.run([sys.executable, "-m", "litgpt_ext", *query[1:]], cwd=REPO, env=env)
        print(f"  ({time.perf_counter() - t0:.1f}s)", flush=True)
        if done.returncode not in (0, 3):  # 3: some answers ran into --max_tokens and were quarantined, as designed
            raise subprocess.CalledProcessError(done.returncode, query)
        import httpx

        metrics = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    if code != 0:
        raise SystemExit(f"serve_batch exited {code}:\n" + "".join(lines[-20:]))
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if " " in line)
    answers = [r for r in map(json.loads, responses.read_text().splitlines()) if r.get("status") == "ok"]
    if not answers:
        raise SystemExit(f"the local teacher answered none of the {RECORDS} records within --max_tokens")
    first = answers[0]["choices"][0]
    print(f"  {len(answers)} answers from the local SmolLM2; {answers[0]['ids'][0]}:")
    print("    " + first["content"].strip().replace("\n", "\n    "))
    print(f"  with log-probs: {len(first['logprobs'])} tokens, top-3 each; the server reused "
          f"{values['litgpt_ext:prefix_cache_prompt_tokens_reused']} of "
          f"{int(values['litgpt_ext:prefix_cache_prompt_tokens_reused']) + int(values['litgpt_ext:prefix_cache_prompt_tokens_computed'])} "
          f"prompt tokens (the task prompt's shared head, prefix cache)")  # fmt: skip
    return [("local teacher's answers (serve_batch + distill_query)", responses)]


def _wait_for_url(server: subprocess.Popen, lines: list[str], timeout: float = 180) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in list(lines):
            if found := re.search(r"at (http://\S+/v1)", line):
                print("  " + line.strip(), flush=True)
                return found.group(1)
        if server.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit("serve_batch did not start:\n" + "".join(lines[-20:]))
