"""``serve_batch``: a real server process, driven by the real ``openai`` client (sync and async, streamed and not), on
a tiny chat checkpoint — its answers equal generate_batch's and the model's own log-softmax, many clients share one
continuously batched engine, and bad requests get OpenAI-shaped errors with the right status."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import openai
import pytest
import torch
from serve_helpers import ServerProcess

from conftest import run_in_process

QUESTIONS = ["What does Ivel sell?", "Where is Orra?", "Name the river of Bask.", "Who lives in Tume?",
             "Describe the market of Lira in one sentence.", "What is salt used for?"]  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_instruct):
    with ServerProcess(tiny_instruct, "--max_batch_size", "8") as proc:
        yield proc


@pytest.fixture(scope="module")
def model(tiny_instruct):
    from litgpt.config import Config
    from litgpt.model import GPT

    gpt = GPT(Config.from_file(tiny_instruct / "model_config.yaml"))
    gpt.load_state_dict(torch.load(tiny_instruct / "lit_model.pth", weights_only=True, map_location="cpu"))
    return gpt.eval()


def _log_softmax(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)


def _chat(client, question: str, **kw):
    return client.chat.completions.create(model="teacher", messages=[{"role": "user", "content": question}],
                                          temperature=0, max_tokens=12, **kw)  # fmt: skip


def test_greedy_answers_equal_generate_batch_on_the_same_chat_rows(server, tiny_instruct, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": str(i), "messages": [{"role": "user", "content": q}]}) + "\n"
                            for i, q in enumerate(QUESTIONS)))  # fmt: skip
    out = tmp_path / "gen.jsonl"
    done = run_in_process("generate_batch", tiny_instruct, "--input", rows, "--output", out, "--temperature", "0",
                          "--max_new_tokens", "12", "--precision", "32-true")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    expected = {
        r["id"]: (r["generations"][0], r["finish_reasons"][0]) for r in map(json.loads, out.read_text().splitlines())
    }
    client = server.client()
    for i, question in enumerate(QUESTIONS):
        answer = _chat(client, question)
        choice = answer.choices[0]
        assert (choice.message.content, choice.finish_reason) == expected[str(i)], question
        assert answer.usage.completion_tokens <= 12 and answer.model == "teacher"


def test_top_logprobs_are_the_models_log_softmax(server, model, tiny_instruct):
    """Sampled at temperature 0.8, the log-probs are the model's own (raw logits, temperature 1), for the chosen token
    and each alternative — checked against litgpt on the prompt + the tokens the server names by their bytes."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.chat_encode import renderer_for
    from litgpt_ext.kd.token_bytes import ByteVocab
    from litgpt_ext.prompts import resolve_prompt_style

    renderer = renderer_for(resolve_prompt_style("auto", tiny_instruct), Tokenizer(tiny_instruct))
    answer = _chat(server.client(), QUESTIONS[0], logprobs=True, top_logprobs=5, seed=3,
                   extra_body={"temperature": 0.8})  # fmt: skip
    content = answer.choices[0].logprobs.content
    prompt = renderer.prompt_ids([{"role": "user", "content": QUESTIONS[0]}])
    vocab = ByteVocab(tiny_instruct)
    tokens = [vocab.id_for(bytes(entry.bytes)) for entry in content]
    assert content and None not in tokens
    reference = _log_softmax(model, prompt + tokens)
    for t, entry in enumerate(content):
        row = reference[len(prompt) - 1 + t]
        assert entry.logprob == pytest.approx(float(row[tokens[t]]), abs=1e-4)
        assert len(entry.top_logprobs) == 5
        for alt in entry.top_logprobs:
            assert alt.logprob == pytest.approx(float(row[vocab.id_for(bytes(alt.bytes))]), abs=1e-4)
        assert [a.logprob for a in entry.top_logprobs] == sorted((a.logprob for a in entry.top_logprobs), reverse=True)


def test_echoed_prompt_log_probs_are_teacher_forced(server, model):
    ids = [1, 40, 77, 12, 9, 301, 5, 18]
    done = server.client().completions.create(model="teacher", prompt=ids, max_tokens=1, echo=True, logprobs=4,
                                              temperature=0, extra_body={"return_tokens_as_token_ids": True})  # fmt: skip
    lp = done.choices[0].logprobs
    reference = _log_softmax(model, ids)
    assert lp.tokens[: len(ids)] == [f"token_id:{i}" for i in ids] and lp.token_logprobs[0] is None
    for t in range(1, len(ids)):
        assert lp.token_logprobs[t] == pytest.approx(float(reference[t - 1, ids[t]]), abs=1e-4)
        top = {int(k.split(":")[1]): v for k, v in lp.top_logprobs[t].items()}
        assert sorted(top) == sorted(reference[t - 1, :512].topk(4).indices.tolist())
        assert all(v == pytest.approx(float(reference[t - 1, k]), abs=1e-4) for k, v in top.items())
    # the one new token came from the same forward's last position (greedy)
    assert lp.tokens[len(ids)] == f"token_id:{int(reference[-1].argmax())}"
    # and prompt_scores parses this body as it parses vLLM's
    from litgpt_ext.api.prompt_scores import parse_scores

    scores = parse_scores(done.model_dump(), len(ids))
    assert scores.target == pytest.approx([float(reference[t - 1, ids[t]]) for t in range(1, len(ids))], abs=1e-4)


def test_concurrent_clients_get_what_one_client_gets_one_by_one(server):
    """32 clients at once, async: continuous batching across requests gives each the answer it gets alone."""
    client = server.client()
    alone = [_chat(client, q).choices[0].message.content for q in QUESTIONS]

    async def everyone():
        async with server.async_client() as aclient:
            asks = [aclient.chat.completions.create(model="teacher", temperature=0, max_tokens=12,
                                                     messages=[{"role": "user", "content": QUESTIONS[i % 6]}])
                    for i in range(32)]  # fmt: skip
            return await asyncio.gather(*asks)

    answers = asyncio.run(everyone())
    assert [a.choices[0].message.content for a in answers] == [alone[i % 6] for i in range(32)]


def test_streams_sync_and_async_give_the_whole_answer(server):
    client = server.client()
    whole = _chat(client, QUESTIONS[1], n=2, seed=5, extra_body={"temperature": 0.9}).choices
    streamed = ["", ""]
    finish = [None, None]
    usage = None
    for chunk in _chat(client, QUESTIONS[1], n=2, seed=5, stream=True, stream_options={"include_usage": True},
                       extra_body={"temperature": 0.9}):  # fmt: skip
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
            finish[choice.index] = choice.finish_reason or finish[choice.index]
    assert streamed == [c.message.content for c in whole] and finish == [c.finish_reason for c in whole]
    assert usage.completion_tokens > 0

    async def legacy():
        async with server.async_client() as aclient:
            text = ""
            stream = await aclient.completions.create(model="teacher", prompt="Ivel sells", max_tokens=10,
                                                      temperature=0, stream=True)  # fmt: skip
            async for chunk in stream:
                text += chunk.choices[0].text
            return text

    plain = client.completions.create(model="teacher", prompt="Ivel sells", max_tokens=10, temperature=0)
    assert asyncio.run(legacy()) == plain.choices[0].text


def _status(call) -> tuple[int, str]:
    try:
        call()
    except openai.APIStatusError as err:
        return err.status_code, err.body["message"] if isinstance(err.body, dict) else str(err.body)
    return 200, ""


def test_bad_requests_get_openai_errors_with_the_right_status(server):
    client = server.client()
    chat = client.chat.completions.create
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        (lambda: chat(model="other", messages=msgs), 404, "The model `other` does not exist."),
        (lambda: chat(model="teacher", messages=[{"role": "robot", "content": "x"}]), 400, "unknown role 'robot'"),
        (lambda: chat(model="teacher", messages=[{"content": "x"}]), 400, "messages[0].role: missing"),
        (lambda: chat(model="teacher", messages="hello"), 400, "expected a list of turns"),
        (lambda: chat(model="teacher", messages=msgs, n=0), 400, "'n' must be in [1, 16]"),
        (lambda: chat(model="teacher", messages=msgs, logprobs=True, top_logprobs=21), 400, "'top_logprobs'"),
        (lambda: chat(model="teacher", messages=msgs, max_tokens=600), 400, "maximum context length is 512"),
        (lambda: chat(model="teacher", messages=[{"role": "user", "content": "word " * 600}]), 400,
         "in the messages, 1 in the completion"),
        (lambda: chat(model="teacher", messages=msgs, temperature=3), 400, "'temperature' must be in [0.0, 2.0]"),
        (lambda: client.completions.create(model="teacher", prompt=[1, 99999]), 400, "outside the vocabulary"),
    ]  # fmt: skip
    for call, status, message in cases:
        got = _status(call)
        assert got[0] == status and message in got[1], (status, message, got)
    raw = httpx.post(f"{server.base_url}/chat/completions", content=b"{not json", timeout=10)
    assert raw.status_code == 400 and "not JSON" in raw.json()["error"]["message"]
    big = httpx.post(f"{server.base_url}/chat/completions", content=b" " * (17 * 2**20), timeout=30)
    assert big.status_code == 413 and big.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(server.base_url.removesuffix("/v1") + "/health", timeout=10).json() == {"status": "ok"}
    assert not any("Traceback" in line for line in server.lines)


def test_a_client_that_goes_away_frees_its_rows_and_metrics_say_so(server):
    client = server.client()
    stream = client.chat.completions.create(model="teacher", messages=[{"role": "user", "content": "Tell me."}],
                                            max_tokens=400, temperature=1.0, stream=True)  # fmt: skip
    next(iter(stream))
    stream.close()  # gone after its first chunk: the job is cancelled, not generated to the end
    metrics = ""
    for _ in range(100):
        metrics = httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=10).text
        if "litgpt_ext:requests_running 0" in metrics:
            break
        time.sleep(0.05)
    assert "litgpt_ext:requests_running 0" in metrics and "litgpt_ext:requests_total" in metrics


def test_requests_sharing_a_system_prompt_reuse_its_keys_and_metrics_count_it(server):
    system = "You answer questions about the towns of the valley, in one sentence, naming the town. " * 4
    client = server.client()
    answers = [client.chat.completions.create(model="teacher", temperature=0, max_tokens=6, messages=[
                   {"role": "system", "content": system}, {"role": "user", "content": q}]).choices[0].message.content
               for q in QUESTIONS[:3]]  # fmt: skip
    metrics = httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines())
    assert (
        int(values["litgpt_ext:prefix_cache_hits"]) >= 2
        and int(values["litgpt_ext:prefix_cache_prompt_tokens_reused"]) >= 2 * 32
    )
    assert all(isinstance(a, str) for a in answers)


def test_a_key_is_asked_for_and_sigterm_ends_the_server_cleanly(tiny_instruct):
    with ServerProcess(tiny_instruct, "--api_key_env", "SERVE_KEY", env={"SERVE_KEY": "sk-right"}) as proc:
        wrong = _status(lambda: _chat(proc.client(api_key="sk-wrong"), "hi"))
        assert wrong[0] == 401 and "API key" in wrong[1]
        assert _chat(proc.client(api_key="sk-right"), "hi").choices[0].finish_reason in ("stop", "length")
        assert proc.stop(signal.SIGTERM) == 0
    assert any("stopped" in line for line in proc.lines) and not any("Traceback" in line for line in proc.lines)
    assert not any("sk-right" in line for line in proc.lines)  # the key is never printed
