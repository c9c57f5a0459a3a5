"""Prefix caching: a prompt that starts with an earlier prompt's tokens reuses their keys and values, and nothing a
user sees changes — greedy answers equal token for token with the cache off, a seeded sampled run gives the same
texts, log-probs agree — while the stats count what was reused and the memory cap holds."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer

from litgpt_ext.generate.engine import Engine, Settings
from litgpt_ext.generate.jobs import Job
from litgpt_ext.generate.settings import Sampling, greedy
from litgpt_ext.model.prefix_cache import BLOCK, PrefixCache


def _model(checkpoint):
    model = GPT(Config.from_file(checkpoint / "model_config.yaml"))
    model.load_state_dict(torch.load(checkpoint / "lit_model.pth", weights_only=True, map_location="cpu"))
    return model.eval(), Tokenizer(checkpoint)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_checkpoint):
    return _model(tiny_checkpoint)


def _prompts(vocab: int) -> list[list[int]]:
    """Prompts that share nothing, a partial block, several blocks, all but their last token, everything (a
    repeated prompt), and exactly whole blocks plus one token."""
    rng = random.Random(0)
    draw = lambda n: [rng.randrange(3, vocab) for _ in range(n)]  # noqa: E731
    system = draw(3 * BLOCK + 5)
    base = draw(50)
    return [
        system + draw(9),
        system + draw(30),
        draw(40),  # shares nothing
        system[:10] + draw(20),  # shares less than a block
        base,
        base[:-1] + [(base[-1] + 1) % vocab or 3],  # all but the last token
        list(base),  # the same prompt again
        system[: 2 * BLOCK] + draw(1),  # two whole blocks and one token
        system + draw(17),
        draw(2 * BLOCK),
    ]


def _run(model, tokenizer, jobs, **settings) -> tuple[dict[str, Job], dict]:
    done: dict[str, Job] = {}
    config = Settings(**{"max_batch_size": 3, "max_seq_length": 256, **settings})
    with Engine(model, tokenizer, config, torch.device("cpu"), torch.float32) as engine:
        engine.run(jobs, lambda job: done.__setitem__(job.id, job))
        return done, engine.prefix_stats()


def _jobs(prompts, sampling=None, logprobs=None, samples=1) -> list[Job]:
    return [Job(str(i), i, p, samples, 12, sampling=sampling, seed=5, logprobs=logprobs) for i, p in enumerate(prompts)]


def test_greedy_answers_equal_with_and_without_the_cache_and_reuse_is_counted(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = _prompts(tok.vocab_size)
    off, none = _run(model, tok, _jobs(prompts, greedy(12), logprobs=3))
    on, stats = _run(model, tok, _jobs(prompts, greedy(12), logprobs=3), prefix_cache=True)
    assert none == {}
    for i in map(str, range(len(prompts))):
        assert on[i].token_ids == off[i].token_ids, i
        for a, b in zip(on[i].token_logprobs[0], off[i].token_logprobs[0], strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
            assert [t for t, _ in a.top] == [t for t, _ in b.top]
    assert stats["hits"] >= 5 and stats["lookups"] == len(prompts)
    assert stats["prompt_tokens_reused"] + stats["prompt_tokens_computed"] == sum(map(len, prompts))
    assert stats["prompt_tokens_reused"] % BLOCK == 0 and stats["prompt_tokens_reused"] >= 3 * 3 * BLOCK
    assert stats["bytes"] > 0 and stats["evictions"] == 0


def test_a_seeded_sampled_run_gives_the_same_texts(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = _prompts(tok.vocab_size)
    sampling = Sampling(max_new_tokens=12, temperature=0.9, top_k=40)
    off, _ = _run(model, tok, _jobs(prompts, sampling, samples=2))
    on, stats = _run(model, tok, _jobs(prompts, sampling, samples=2), prefix_cache=True)
    assert {i: j.texts for i, j in on.items()} == {i: j.texts for i, j in off.items()}
    assert stats["prompt_tokens_reused"] > 0


def test_rows_admitted_together_compute_each_shared_prefix_once(model_and_tokenizer):
    """Eight prompts arrive at once: a common head (2 blocks), then one of two instruction blocks (3 blocks each),
    then a record. The head is computed once, each instruction block once; every other row reuses them."""
    model, tok = model_and_tokenizer
    rng = random.Random(1)
    draw = lambda n: [rng.randrange(3, tok.vocab_size) for _ in range(n)]  # noqa: E731
    head, a, b = draw(2 * BLOCK), draw(3 * BLOCK), draw(3 * BLOCK)
    prompts = [head + (a if i % 2 else b) + draw(5 + i) for i in range(8)]
    off, _ = _run(model, tok, _jobs(prompts, greedy(12)), max_batch_size=8)
    on, stats = _run(model, tok, _jobs(prompts, greedy(12)), max_batch_size=8, prefix_cache=True)
    assert {i: j.token_ids for i, j in on.items()} == {i: j.token_ids for i, j in off.items()}
    # the first instruction's leader computes everything; its 3 followers and the other instruction's leader (the
    # head) reuse in the second wave, that leader's 3 followers in the third
    assert stats["prompt_tokens_reused"] == (3 * 5 + 2 + 3 * 5) * BLOCK and stats["hits"] == 7


def test_the_memory_cap_evicts_least_recently_used_blocks(model_and_tokenizer):
    model, tok = model_and_tokenizer
    config = model.config
    block_bytes = config.n_layer * 2 * config.n_query_groups * BLOCK * config.head_size * 4
    prompts = _prompts(tok.vocab_size)
    off, _ = _run(model, tok, _jobs(prompts, greedy(12)))
    on, stats = _run(model, tok, _jobs(prompts, greedy(12)), prefix_cache=True, prefix_cache_bytes=3 * block_bytes)
    assert {i: j.token_ids for i, j in on.items()} == {i: j.token_ids for i, j in off.items()}
    assert stats["evictions"] > 0 and stats["bytes"] <= 3 * block_bytes and stats["blocks"] <= 3


def test_a_block_is_found_only_after_the_same_prefix():
    cache = PrefixCache(max_bytes=2**20)
    a = list(range(1, 3 * BLOCK + 2))
    cache.store(a, 0, lambda s, e: torch.full((1, 2, 1, e - s, 2), float(s)))
    assert cache.stats.blocks == 3
    reused, blocks = cache.match(a)  # the whole prompt: its last token is still computed
    assert reused == 3 * BLOCK and [float(b[0, 0, 0, 0, 0]) for b in blocks] == [0.0, BLOCK, 2 * BLOCK]
    assert cache.match(a[: 3 * BLOCK])[0] == 2 * BLOCK  # exactly three blocks long: the third is computed
    shifted = [0] + a  # the same blocks one position later are other blocks
    assert cache.match(shifted)[0] == 0
    changed = a[:BLOCK] + [999] + a[BLOCK + 1 :]
    assert cache.match(changed)[0] == BLOCK
    assert cache.next_missing(a) is None and cache.next_missing(changed) is not None


def test_sliding_window_and_mixed_window_models_reuse_prefixes_exactly(tiny_factory, tmp_path):
    """Mistral (every layer windowed) and Gemma 3 (windowed and global layers, softcapping off) with a window
    shorter than the shared prefixes: the reused keys are attended through the same windowed masks."""
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    for ckpt in (tiny_factory(model="mistral"), make_tiny_checkpoint(out_dir=tmp_path / "g3", like="gemma-3-1b-it")):
        config = Config.from_file(ckpt / "model_config.yaml")
        config.sliding_window_size = 20
        model = GPT(config)
        model.load_state_dict(torch.load(ckpt / "lit_model.pth", weights_only=True, map_location="cpu"))
        model.eval()
        tok = Tokenizer(ckpt)
        assert any(block.attn.apply_sliding_window_attention for block in model.transformer.h)
        prompts = _prompts(tok.vocab_size)
        off, _ = _run(model, tok, _jobs(prompts, greedy(12)))
        on, stats = _run(model, tok, _jobs(prompts, greedy(12)), prefix_cache=True)
        assert {i: j.token_ids for i, j in on.items()} == {i: j.token_ids for i, j in off.items()}, ckpt
        assert stats["prompt_tokens_reused"] > 0


def test_generate_batch_caches_by_default_and_the_flag_turns_it_off(tiny_instruct, tmp_path):
    """Chat rows sharing a system prompt through the CLI: the same file either way, the reuse in the summary and
    in the stats file; ``--prefix_cache false`` reuses nothing."""
    import json

    from conftest import run_cli

    system = "You are a careful assistant. Answer in one short sentence, naming the place and the thing it sells. " * 3
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": str(i), "messages": [{"role": "system", "content": system},
                                                                  {"role": "user", "content": f"What does shop {i} sell?"}]}) + "\n"
                            for i in range(12)))  # fmt: skip
    outputs = {}
    for flag in ("true", "false"):
        out = tmp_path / f"{flag}.jsonl"
        done = run_cli("generate_batch", tiny_instruct, "--input", rows, "--output", out, "--temperature", "0",
                       "--max_new_tokens", "8", "--max_batch_size", "4", "--precision", "32-true",
                       "--prefix_cache", flag)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[flag] = {r["id"]: r["generations"] for r in map(json.loads, out.read_text().splitlines())}
        stats = json.loads(out.with_name(f"{flag}.stats.json").read_text())["prefix_cache"]
        if flag == "true":
            assert "prefix cache:" in done.stdout + done.stderr and stats["hits"] == 11
            assert stats["prompt_tokens_reused"] >= 11 * BLOCK
        else:
            assert stats is None
    assert outputs["true"] == outputs["false"]
    bad = run_cli("generate_batch", tiny_instruct, "--input", rows, "--output", tmp_path / "x.jsonl",
                  "--prefix_cache_gb", "-1")  # fmt: skip
    assert bad.returncode != 0 and "prefix_cache_gb" in bad.stderr and not (tmp_path / "x.jsonl").exists()


def test_long_prefills_attend_block_by_block_as_litgpt_attends(model_and_tokenizer, monkeypatch):
    """Prompts long enough for several blocks of the CPU prefill's attention, from position 0 and after a reused
    prefix: each block meets only the keys up to its own end, and the greedy tokens and log-probs equal litgpt's
    own forwards without the cache."""
    import litgpt_ext.model.prefill_attention as prefill

    model, tok = model_and_tokenizer
    rng = random.Random(2)
    draw = lambda n: [rng.randrange(3, tok.vocab_size) for _ in range(n)]  # noqa: E731
    first = draw(400)
    prompts = [first, first[: 4 * BLOCK] + draw(270), draw(20)]  # the longest goes first: the second reuses from it
    reaches = []
    baddbmm = torch.baddbmm

    def counted(bias, rows, keys, **kw):
        reaches.append(keys.size(-1))
        return baddbmm(bias, rows, keys, **kw)

    monkeypatch.setattr(prefill.torch, "baddbmm", counted)
    ours, stats = _run(model, tok, _jobs(prompts, greedy(12), logprobs=2), prefix_cache=True, max_seq_length=512)
    theirs, _ = _run(model, tok, _jobs(prompts, greedy(12), logprobs=2), fast_forwards=False, max_seq_length=512)
    monkeypatch.undo()
    step = prefill.BLOCK
    assert set(range(step, 400, step)) | {400} <= set(reaches)  # the first prompt, block by block
    assert {4 * BLOCK + step, 4 * BLOCK + 270} <= set(reaches) and 20 in reaches  # after a reused prefix; a short one
    assert max(reaches) == 400
    assert stats["prompt_tokens_reused"] == 4 * BLOCK
    for i in map(str, range(len(prompts))):
        assert ours[i].token_ids == theirs[i].token_ids, i
        for a, b in zip(ours[i].token_logprobs[0], theirs[i].token_logprobs[0], strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


@pytest.mark.parametrize("window", [None, 50])
def test_blocked_prefill_attention_equals_sdpa(window):
    """The CPU prefill's block-by-block attention against PyTorch's own on per-head copies: queries after a prefix,
    a per-row boolean mask (a sliding window in it) and the same mask as additive scores."""
    from litgpt_ext.model.prefill_attention import BLOCK as STEP
    from litgpt_ext.model.prefill_attention import _blocked

    g = torch.Generator().manual_seed(0)
    B, heads, groups, hs, before, T = 2, 6, 2, 16, 37, 2 * STEP + 5
    q = torch.randn(B, heads, T, hs, generator=g)
    k, v = torch.randn(2, B, groups, before + T, hs, generator=g)
    positions = torch.stack([torch.arange(before, before + T), torch.arange(before, before + T) - 3])  # row 1 lags
    keys = torch.arange(before + T)
    mask = (keys <= positions[..., None]).unsqueeze(1)  # (B, 1, T, S)
    if window is not None:
        mask &= (keys > positions[..., None] - window).unsqueeze(1)
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1),
                                              attn_mask=mask, scale=0.25).transpose(1, 2)  # fmt: skip
    torch.testing.assert_close(_blocked(q, k, v, mask, 0.25), expected, atol=1e-5, rtol=1e-5)
    additive = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
    torch.testing.assert_close(_blocked(q, k, v, additive, 0.25), expected, atol=1e-5, rtol=1e-5)
