"""Models with the contexts users run (Llama 3.x: 131,072 tokens; Qwen 2.5: 32,768): what a run holds depends on the
lengths it admits, never on the context the model could take — for generate_batch, --eval.test and the on-policy
sampler alike."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO

LLAMA3_CONTEXT = 131_072


@pytest.fixture(scope="module")
def long_context(tiny_factory, tmp_path_factory):
    """The session's tiny checkpoint twice over: as made (512 positions) and with Llama 3.x's context."""
    import shutil

    short = tiny_factory()
    long = tmp_path_factory.mktemp("long") / "llama3-context"
    shutil.copytree(short, long)
    config = yaml.safe_load((long / "model_config.yaml").read_text())
    config["block_size"] = LLAMA3_CONTEXT
    (long / "model_config.yaml").write_text(yaml.safe_dump(config))
    return short, long


_MEASURE = """
import json, resource, sys
from litgpt_ext.generate.command import generate_batch
generate_batch(sys.argv[1], input=sys.argv[2], output=sys.argv[3], max_new_tokens=8, temperature=0, precision="32-true")
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _generate(checkpoint, prompts, out) -> tuple[float, list]:
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(checkpoint), str(prompts), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    return peak, [r["generations"] for r in map(json.loads, out.read_text().splitlines())]


def test_generation_memory_does_not_grow_with_the_models_context(long_context, tmp_path):
    """litgpt's mask cache alone is context² booleans — 16 GiB at 131,072 (the kernel killed this run at 24 GB
    before). The same 8 tokens of one prompt cost the same memory at 512 and at 131,072, with the same text."""
    short, long = long_context
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "What is SQL? Explain it to me."}) + "\n")
    rss_short, text_short = _generate(short, prompts, tmp_path / "short.jsonl")
    rss_long, text_long = _generate(long, prompts, tmp_path / "long.jsonl")
    assert text_long == text_short
    assert rss_long <= 1.2 * rss_short, (rss_short, rss_long)


def test_the_engine_sizes_mask_and_caches_by_the_admitted_lengths(long_context):
    """Inside the engine: the mask, the KV caches and litgpt's limit follow the rows admitted, and the model comes
    back as it was (its own rope tables, by identity)."""
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.generate.engine import CACHE_STEP, Engine, Job, Settings
    from litgpt_ext.generate.settings import greedy

    _, long = long_context
    model = GPT(Config.from_file(long / "model_config.yaml")).eval()
    cos, limit = model.cos, model.max_seq_length
    settings = Settings(greedy(600), max_batch_size=2, max_seq_length=LLAMA3_CONTEXT)
    sizes = []
    with Engine(model, Tokenizer(long), settings, torch.device("cpu"), torch.float32) as engine:
        assert engine.caches.capacity == CACHE_STEP and model.mask_cache.shape[-1] == CACHE_STEP
        engine.run([Job("a", 0, [1, 5, 9], 1, 600)], lambda job: sizes.append(model.mask_cache.shape[-1]))
        assert engine.caches.capacity == model.mask_cache.shape[-1] == sizes[0] < 4 * CACHE_STEP
    assert model.mask_cache is None and model.cos is cos and model.max_seq_length == limit
