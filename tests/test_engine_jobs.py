"""The engine's per-job requests, as a server makes them: each job's own sampling settings and seed, the log-probs of
what it generates, its prompt's teacher-forced scores, its tokens as they come, and cancellation."""

from __future__ import annotations

import threading

import pytest
import torch
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer

from litgpt_ext.generate.engine import Engine, Settings
from litgpt_ext.generate.feed import QueueFeed
from litgpt_ext.generate.jobs import Job
from litgpt_ext.generate.settings import Sampling, greedy


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_checkpoint):
    torch.manual_seed(0)
    model = GPT(Config.from_file(tiny_checkpoint / "model_config.yaml"))
    model.load_state_dict(torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True, map_location="cpu"))
    return model.eval(), Tokenizer(tiny_checkpoint)


def _run(model, tokenizer, jobs, **settings) -> dict[str, Job]:
    done: dict[str, Job] = {}
    config = Settings(max_batch_size=4, max_seq_length=256, **settings)
    with Engine(model, tokenizer, config, torch.device("cpu"), torch.float32) as engine:
        engine.run(jobs, lambda job: done.__setitem__(job.id, job))
    return done


def _teacher_forced(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)


PROMPTS = [[1, 5, 9, 12, 40], [2, 7, 30], [3, 3, 8, 22, 41, 17, 9]]


def test_each_job_samples_as_it_asks_whatever_shares_its_steps(model_and_tokenizer):
    """Jobs of different settings in one run give what each gives in a run of its own settings."""
    model, tok = model_and_tokenizer
    settings = [greedy(10), Sampling(max_new_tokens=10, temperature=0.9, top_k=20),
                Sampling(max_new_tokens=10, temperature=1.2, top_p=0.8, min_new_tokens=6)]  # fmt: skip
    mixed = _run(model, tok, [Job(str(i), i, p, 2, 10, sampling=s, seed=7)
                              for i, (p, s) in enumerate(zip(PROMPTS, settings, strict=True))])  # fmt: skip
    for i, (p, s) in enumerate(zip(PROMPTS, settings, strict=True)):
        alone = _run(model, tok, [Job(str(i), i, p, 2, 10)], sampling=s, seed=7)
        assert mixed[str(i)].token_ids == alone[str(i)].token_ids, i
    assert all(len(t) >= 6 for t in mixed["2"].token_ids)  # its own min_new_tokens held


def test_generated_log_probs_are_the_models_log_softmax(model_and_tokenizer):
    model, tok = model_and_tokenizer
    done = _run(model, tok, [Job("a", 0, PROMPTS[0], 1, 6, sampling=Sampling(max_new_tokens=6, temperature=0.8),
                                 logprobs=5), Job("b", 1, PROMPTS[1], 1, 6)])  # fmt: skip
    tokens, logprobs = done["a"].token_ids[0], done["a"].token_logprobs[0]
    assert len(logprobs) == len(tokens) > 0 and done["b"].token_logprobs == [None]
    reference = _teacher_forced(model, PROMPTS[0] + tokens)
    for t, (token, lp) in enumerate(zip(tokens, logprobs, strict=True)):
        row = reference[len(PROMPTS[0]) - 1 + t]
        assert lp.logprob == pytest.approx(float(row[token]), abs=1e-4)
        values, ids = row[: tok.vocab_size].topk(5)
        assert [i for i, _ in lp.top] == ids.tolist()
        assert [v for _, v in lp.top] == pytest.approx(values.tolist(), abs=1e-4)


def test_prompt_scores_are_teacher_forced_and_one_token_comes_from_the_same_forward(model_and_tokenizer):
    model, tok = model_and_tokenizer
    jobs = [Job(str(i), i, p, 1, 1, sampling=greedy(1), prompt_logprobs=3) for i, p in enumerate(PROMPTS)]
    jobs.append(Job("long", 9, PROMPTS[2], 1, 4, sampling=greedy(4), prompt_logprobs=3))
    done = _run(model, tok, jobs)
    for i, prompt in enumerate(PROMPTS):
        scores, reference = done[str(i)].prompt_scores, _teacher_forced(model, prompt)
        assert len(scores.token_logprobs) == len(prompt) - 1
        for t in range(len(prompt) - 1):
            assert scores.token_logprobs[t] == pytest.approx(float(reference[t, prompt[t + 1]]), abs=1e-4)
            assert [i for i, _ in scores.top[t]] == reference[t, : tok.vocab_size].topk(3).indices.tolist()
        assert done[str(i)].token_ids[0] == [int(reference[-1].argmax())] or done[str(i)].finish_reasons == ["stop"]
    plain = _run(model, tok, [Job("long", 9, PROMPTS[2], 1, 4)], sampling=greedy(4))
    assert done["long"].token_ids == plain["long"].token_ids and done["long"].prompt_scores is not None


def test_tokens_stream_in_order_and_a_cancelled_job_is_dropped(model_and_tokenizer):
    """A queue feed (requests from other threads): tokens reach the job's callback as they are accepted; a job
    cancelled while it runs frees its slot and is never emitted; the engine returns when the feed closes."""
    model, tok = model_and_tokenizer
    feed, done, streamed = QueueFeed(), {}, []
    stop = Job("stop", 1, PROMPTS[1], 1, 200, sampling=greedy(200))

    def seen(sample, token, logprobs):
        streamed.append(token)
        if len(streamed) == 3:
            stop.cancelled = True  # as a server does when the client goes away

    keep = Job("keep", 0, PROMPTS[0], 1, 8, sampling=greedy(8))
    stop.on_token = seen
    config = Settings(max_batch_size=4, max_seq_length=256)
    with Engine(model, tok, config, torch.device("cpu"), torch.float32) as engine:
        thread = threading.Thread(target=engine.run, args=(feed, lambda job: done.__setitem__(job.id, job)))
        thread.start()
        feed.put(keep)
        feed.put(stop)
        feed.close()
        thread.join(timeout=60)
    assert not thread.is_alive() and set(done) == {"keep"}
    assert 3 <= len(streamed) < 200 and engine.slots == [None] * 4


def test_rows_that_finish_one_at_a_time_are_admitted_together(model_and_tokenizer, monkeypatch):
    """With more rows waiting than slots free, the engine gathers ``admit_batch`` free slots (for at most
    ``admit_wait`` steps) and admits their rows together — their prefills grouped — instead of one row per finished
    one: fewer prefills, the same greedy texts as admitting each row at once; nothing is held when every waiting row
    fits."""
    from litgpt_ext.generate.admission import Admission

    model, tok = model_and_tokenizer
    jobs = lambda: [Job(str(i), i, PROMPTS[i % 3] + [i + 4], 1, 3 + 2 * i) for i in range(12)]  # noqa: E731
    admitted: list[int] = []
    prefills: list[int] = []
    reserve, prefill = Admission._reserve, Admission._prefill
    monkeypatch.setattr(Admission, "_reserve", lambda self, rows: (admitted.append(len(rows)), reserve(self, rows)))
    monkeypatch.setattr(Admission, "_prefill", lambda self, g, m: (prefills.append(len(g)), prefill(self, g, m))[1])
    runs = {}
    for admit_batch in (1, 3):
        admitted.clear(), prefills.clear()
        done = _run(model, tok, jobs(), admit_batch=admit_batch, admit_wait=100, prefix_cache=False)
        runs[admit_batch] = ({k: j.token_ids for k, j in done.items()}, list(admitted), len(prefills))
    assert runs[1][0] == runs[3][0]  # each row's text does not depend on when it was admitted
    assert runs[1][1].count(1) > 2 and runs[3][2] < runs[1][2]
    assert runs[3][1][0] == 4 and all(n == 3 for n in runs[3][1][1:-1]) and sum(runs[3][1]) == 12, runs[3][1]
    admitted.clear()
    _run(model, tok, jobs()[:3], admit_batch=3, admit_wait=100)
    assert admitted == [3]  # three rows, four slots: all at the first step
    admitted.clear()
    _run(model, tok, jobs(), admit_batch=3, admit_wait=0)  # no steps held: each freed slot is refilled at once
    assert admitted[0] == 4 and admitted.count(1) > 2
