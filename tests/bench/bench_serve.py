"""``make bench-serve``: ``serve_batch`` under concurrent ``openai`` clients vs ``generate_batch`` on the same prompts
vs litgpt's own ``serve --openai_spec true`` (LitServe), one run, contenders interleaved.

Workload: ``--prompts`` (128) chat rows (a question behind a document of up to 60 words, 16-512 tokens through the
model's chat template, bench-generate's (b) prompts), greedy, up to ``--max_tokens`` (48) tokens, ending at the
model's end of turn. Contenders, per round:
* ``generate_batch`` on a file of the rows (``--max_batch_size`` 32): its own clock, model loading excluded;
* ``serve_batch`` (``--max_batch_size`` 32, a fresh server each round, started before the clock: loading excluded;
  its prefix cache starts empty, as generate_batch's does) under ``--clients``
  (64) concurrent ``openai.AsyncOpenAI`` clients, each sending the next row when its answer arrives: the wall time
  from the first request to the last answer; completion tokens from ``usage``;
* litgpt ``serve --openai_spec true`` (``pip install litserve`` for the bench only; skipped, said so, when it is
  missing), started once with ``--temperature 0 --max_new_tokens`` N (it fixes both at start-up), under 32 clients on
  the first ``--litserve_prompts`` (32) rows (it answers one request at a time); its tokens counted by re-tokenizing
  its answers.
Then, on the idle ``serve_batch``: time to first token of one 200-token request, streamed (5 tries, median); and
``finetune_kd`` of a random-init 6-layer student on the checkpoint's tokenizer (bench-kd's off-policy workload: 8
steps of 8 sequences of 100-400 tokens, full weights) with the checkpoint as its teacher in process (``--teacher``)
and through this server (``--teacher_url``: the prompt scored by ``echo`` + top-20 log-probs on
``/v1/completions``), interleaved: training tokens/s and the training process's peak RSS (``--skip_kd`` leaves it
out).
Reported: generated tokens/s, median (min-max) over rounds, ratios per round, request latency p50 / p99, and the
checks: ``serve_batch``'s greedy texts equal ``generate_batch``'s; what each server answers to the same feature
probes (per-request temperature and max tokens, log-probs, n, echo) side by side.
Goals: ``serve_batch`` >= 90 % of ``generate_batch``'s tokens/s; >= 5x litgpt serve's; time to first token <= 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tests.bench.bench_generate import THREADS, Prompting, Workload, _prompts, bench_ours
from tests.bench.common import spread, table
from tests.serve_helpers import ServerProcess

BATCH = 32


async def _drive(base_url: str, model: str, prompts: list[dict], clients: int, max_tokens: int) -> dict:
    """``clients`` concurrent clients over the rows; each row's answer, tokens and latency."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-unused", max_retries=0, timeout=3600)
    queue: asyncio.Queue = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    texts, tokens, latency = {}, {}, []

    async def worker() -> None:
        while not queue.empty():
            p = queue.get_nowait()
            t0 = time.perf_counter()
            answer = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": p["prompt"]}], max_tokens=max_tokens, temperature=0
            )
            latency.append(time.perf_counter() - t0)
            texts[p["id"]] = answer.choices[0].message.content
            tokens[p["id"]] = answer.usage.completion_tokens if answer.usage else None

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    await client.close()
    return {"wall": wall, "texts": [texts[p["id"]] for p in prompts], "tokens": [tokens[p["id"]] for p in prompts],
            "latency": latency}  # fmt: skip


def _rate(run: dict, count=None) -> dict:
    """Tokens/s of a run: the server's ``usage``, or — ``count`` given (a server whose usage is not the tokens it
    generated: LitServe reports zeros) — its answers re-tokenized."""
    tokens = [count(text) if count else t for t, text in zip(run["tokens"], run["texts"])]
    return {**run, "rate": sum(tokens) / run["wall"], "total": sum(tokens)}


def _ttft(base_url: str, model: str, prompt: str, tries: int) -> list[float]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-unused", max_retries=0)
    times = []
    for _ in range(tries):
        t0 = time.perf_counter()
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=16, temperature=0, stream=True)  # fmt: skip
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                times.append(time.perf_counter() - t0)
                break
        stream.close()
    return times


def _probe(base_url: str, model: str, count) -> dict[str, str]:
    """What a server answers to the features a distillation pipeline asks for, each tried with a real request."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-unused", max_retries=0, timeout=600)
    messages = [{"role": "user", "content": "Name a colour."}]
    found: dict[str, str] = {}

    def attempt(name: str, call, judge) -> None:
        try:
            found[name] = judge(call())
        except Exception as err:  # a probe records what the server did, error included
            found[name] = f"no ({type(err).__name__})"

    attempt("max_tokens per request (asked 3)", lambda: client.chat.completions.create(
        model=model, messages=messages, max_tokens=3, temperature=0),
        lambda a: "yes" if _tokens(a, count) <= 3 else f"no ({_tokens(a, count)} tokens)")  # fmt: skip
    attempt("logprobs + top_logprobs", lambda: client.chat.completions.create(
        model=model, messages=messages, max_tokens=3, temperature=0, logprobs=True, top_logprobs=3),
        lambda a: "yes" if a.choices[0].logprobs and a.choices[0].logprobs.content else "no (none returned)")  # fmt: skip
    attempt("n = 2", lambda: client.chat.completions.create(
        model=model, messages=messages, max_tokens=3, temperature=1.0, n=2),
        lambda a: "yes" if len(a.choices) == 2 else f"no ({len(a.choices)} choice)")  # fmt: skip
    attempt("echo + logprobs (prompt scoring)", lambda: client.completions.create(
        model=model, prompt="The sky is", max_tokens=1, echo=True, logprobs=1, temperature=0),
        lambda a: "yes" if a.choices[0].logprobs and a.choices[0].logprobs.token_logprobs else "no (none returned)")  # fmt: skip
    return found


def _tokens(answer, count) -> int:
    """An answer's tokens: its ``usage``, else (zeros there: LitServe) its text re-tokenized."""
    if answer.usage and answer.usage.completion_tokens:
        return answer.usage.completion_tokens
    return count(answer.choices[0].message.content)


class LitgptServe:
    """litgpt's ``serve --openai_spec true`` as a process on a free port (None where litserve is not installed)."""

    def __init__(self, checkpoint: Path, max_tokens: int, precision: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.args = [sys.executable, "-m", "litgpt", "serve", str(checkpoint), "--openai_spec", "true", "--port",
                     str(self.port), "--temperature", "0", "--max_new_tokens", str(max_tokens), "--precision",
                     precision, "--timeout", "3600", "--accelerator", "cuda" if torch.cuda.is_available() else "cpu"]  # fmt: skip
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LitgptServe:
        import httpx

        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            self.args, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )  # (LitServe starts workers of its own: stopped together)
        deadline = time.time() + 300
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.log.seek(0)
        raise SystemExit("litgpt serve did not start:\n" + self.log.read()[-3000:])

    def __exit__(self, *exc) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def _kd(teacher: Path, url: str, tmp: Path, rounds: int, smoke: bool) -> dict[str, list[dict]]:
    """finetune_kd of a random-init student on ``teacher``'s tokenizer, the teacher in process and on the server."""
    from tests.bench.bench_kd import PY, make_examples, ours
    from tests.bench.common import run_measured

    student, data = tmp / "kd-student", tmp / "kd-data.json"
    size = ["--n_layer", "1", "--n_embd", "64", "--n_head", "4"] if smoke else ["--n_layer", "6", "--n_embd", "384",
                                                                                "--n_head", "6"]  # fmt: skip
    run_measured([PY, "-m", "litgpt_ext", "make_tiny_checkpoint", "--out_dir", str(student), *size, "--block_size",
                  "1024", "--tokenizer_from", str(teacher)])  # fmt: skip
    make_examples(data, 100 if smoke else 400)
    os.environ["BENCH_SERVE_KEY"] = "local"  # the keyless server's placeholder (no real key is sent anywhere)
    steps = 2 if smoke else 8
    sources = {"--teacher (in process)": ["--teacher", str(teacher)],
               "--teacher_url (serve_batch)": ["--teacher_url", url, "--teacher_model", "m", "--server.top_k", "20",
                                               "--server.api_key_env", "BENCH_SERVE_KEY"]}  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name in sources}
    for _ in range(rounds):
        for name, source in sources.items():
            runs[name].append(ours(student, data, tmp / f"kd-{len(runs[name])}-{name[2:9]}", steps, 2, 4, False,
                                   source))  # fmt: skip
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a litgpt instruct checkpoint (SmolLM2)")
    parser.add_argument("--prompts", type=int, default=128, help="rows (default 128)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients of serve_batch")
    parser.add_argument("--max_tokens", type=int, default=48, help="tokens per answer at most")
    parser.add_argument("--litserve_prompts", type=int, default=32, help="rows sent to litgpt serve")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median and min-max reported)")
    parser.add_argument("--precision", default="32-true", help="every contender's precision (bf16-true on a GPU)")
    parser.add_argument("--skip_kd", action="store_true", help="leave out finetune_kd --teacher_url vs --teacher")
    parser.add_argument("--smoke", action="store_true", help="few rows, one round: checks the harness only")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    n, clients, rounds = (12, 4, 1) if args.smoke else (args.prompts, args.clients, args.rounds)
    lit_n = min(4 if args.smoke else args.litserve_prompts, n)
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.chat_template import ChatTemplate

    ckpt = args.checkpoint
    prompting = Prompting(ChatTemplate.from_checkpoint(ckpt))
    tok = Tokenizer(ckpt)
    prompts = _prompts(n, tok, 60, prompting)
    count = lambda text: len(tok.encode(text, bos=False))  # noqa: E731
    w = Workload("serve", 60, args.max_tokens, 0, 0.0, None)
    try:
        import litserve  # noqa: F401

        have_litserve = True
    except ImportError:
        have_litserve = False
    results: dict[str, list[dict]] = {"generate_batch": [], "serve_batch": [], "litgpt serve": []}
    env = {"OMP_NUM_THREADS": str(THREADS)}

    def server() -> ServerProcess:
        return ServerProcess(ckpt, "--max_batch_size", str(BATCH), "--precision", args.precision, env=env,
                             model_name="m")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lit = LitgptServe(ckpt, args.max_tokens, args.precision) if have_litserve else None
        if lit is not None:
            lit.__enter__()
        try:
            for r in range(rounds):
                print(f"round {r + 1}/{rounds} ...", flush=True)
                batch = bench_ours(ckpt, prompts, tmp, w, BATCH, prompting, args.precision)
                results["generate_batch"].append({**batch, "total": batch["tokens"]})
                # a fresh server each round, as generate_batch is a fresh process: one kept across rounds would
                # answer the next round's prompts from its prefix cache (the previous stop's 0.89 was measured so)
                with server() as ours:
                    run = asyncio.run(_drive(ours.base_url, "m", prompts, clients, args.max_tokens))
                results["serve_batch"].append(_rate(run))
                if lit is not None:
                    run = asyncio.run(_drive(lit.base_url, "m", prompts[:lit_n], 32, args.max_tokens))
                    results["litgpt serve"].append(_rate(run, count))
            long_prompt = " ".join((Path(__file__).parents[2] / "artifacts/demo/corpus.txt").read_text().split()[:400])
            while count(prompting.text(long_prompt)) > 200:
                long_prompt = long_prompt.rsplit(" ", 10)[0]
            with server() as ours:
                ttft = _ttft(ours.base_url, "m", long_prompt, 5)
                kd = {} if args.skip_kd else _kd(ckpt, ours.base_url, tmp, rounds, args.smoke)
                probes = {"serve_batch": _probe(ours.base_url, "m", count)}
            if lit is not None:
                probes["litgpt serve"] = _probe(lit.base_url, "m", count)
        finally:
            if lit is not None:
                lit.__exit__()
    lengths = [p["tokens"] for p in prompts]
    print(
        f"\nbench-serve: {ckpt.name}, {n} chat rows of {min(lengths)}-{max(lengths)} prompt tokens ({sum(lengths):,} "
        f"in all), greedy, <= {args.max_tokens} tokens each, batch {BATCH}, {args.precision}, torch threads {THREADS} "
        f"per process, {rounds} interleaved round(s), median (min-max)"
    )
    base = results["generate_batch"]
    rows = [("contender", "generated tok/s", "vs generate_batch", "latency p50 / p99 s")]
    rows.append(("generate_batch (a file of the rows)", spread([x["rate"] for x in base], "{:,.1f}"), "1.00", "-"))
    for name, label in (("serve_batch", f"serve_batch, {clients} openai clients"),
                        ("litgpt serve", f"litgpt serve --openai_spec true, 32 clients, first {lit_n} rows")):  # fmt: skip
        runs = results[name]
        if not runs:
            rows.append((label, "not installed (pip install litserve)", "-", "-"))
            continue
        lat = sorted(x for run in runs for x in run["latency"])
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        rows.append((label, spread([x["rate"] for x in runs], "{:,.1f}"),
                     spread([x["rate"] / b["rate"] for x, b in zip(runs, base)], "{:.2f}"),
                     f"{statistics.median(lat):.2f} / {p99:.2f}"))  # fmt: skip
    print(table(rows))
    served, same = results["serve_batch"][-1], 0
    same = sum(a == b for a, b in zip(served["texts"], base[-1]["texts"]))
    print(f"serve_batch's greedy texts equal generate_batch's: {same} of {n}")
    print(f"time to first token, one 200-token request on the idle serve_batch (streamed): "
          f"{spread(ttft, '{:.3f}')} s over {len(ttft)} tries")  # fmt: skip
    names = list(probes)
    print(table([("feature probe", *names)] + [(f, *(probes[s][f] for s in names)) for f in probes["serve_batch"]]))
    if results["litgpt serve"]:
        vs_lit = [a["rate"] / b["rate"] for a, b in zip(results["serve_batch"], results["litgpt serve"])]
        print(f"serve_batch vs litgpt serve, tokens/s: {spread(vs_lit, '{:.1f}x')}")
    if kd:
        rows = [("finetune_kd, 6-layer student", "training tokens/s", "vs teacher in process", "peak RSS MB")]
        for name, runs in kd.items():
            rows.append((name, spread([r["tps"] for r in runs], "{:,.1f}"),
                         spread([r["tps"] / b["tps"] for r, b in zip(runs, kd["--teacher (in process)"])], "{:.2f}x"),
                         spread([r["rss"] for r in runs], "{:,.0f}")))  # fmt: skip
        print(table(rows))
    if not args.smoke:
        share = statistics.median(x["rate"] / b["rate"] for x, b in zip(results["serve_batch"], base))
        met = share >= 0.9 and statistics.median(ttft) <= 0.5 and same == n
        if results["litgpt serve"]:
            met = met and statistics.median(vs_lit) >= 5
        goal = ">= 90 % of generate_batch, time to first token <= 0.5 s, texts equal"
        goal += ", >= 5x litgpt serve" if results["litgpt serve"] else " (litgpt serve not measured)"
        print(f"goal ({goal}): {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
