"""The embedded default student: tiny checkpoints that litgpt's own commands accept."""

from __future__ import annotations

import pytest
import torch
import yaml
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer

from conftest import run_cli


@pytest.mark.parametrize("model", ["llama", "mistral", "qwen2", "gpt-neox", "phi"])
def test_each_family_loads_strictly_and_runs(tiny_factory, model):
    ckpt = tiny_factory(model=model)
    config = Config.from_file(ckpt / "model_config.yaml")
    gpt = GPT(config)
    gpt.load_state_dict(torch.load(ckpt / "lit_model.pth"), strict=True)
    tok = Tokenizer(ckpt)
    ids = tok.encode("Question: What does Ivel sell?")
    assert ids[0].item() == tok.bos_id == 1 and tok.eos_id == 2
    logits = gpt(ids[None])
    assert logits.shape == (1, len(ids), config.padded_vocab_size)
    assert torch.isfinite(logits).all()


def test_sentencepiece_variant_round_trips(tiny_factory):
    ckpt = tiny_factory(tokenizer="sentencepiece")
    assert (ckpt / "tokenizer.model").is_file() and not (ckpt / "tokenizer.json").exists()
    tok = Tokenizer(ckpt)
    assert tok.backend == "sentencepiece"
    text = "The roofs in Avalon are white."
    assert tok.decode(tok.encode(text)[1:]) == text


def test_litgpt_finetune_lora_generate_and_merge_run_on_it(tiny_checkpoint, tmp_path):
    import json

    data = [
        {"instruction": f"What does town {i} sell?", "input": "", "output": f"Town {i} sells salt."} for i in range(20)
    ]
    (tmp_path / "train.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    result = run_cli(
        "finetune_lora",
        tiny_checkpoint,
        "--data",
        "JSON",
        "--data.json_path",
        tmp_path / "train.json",
        "--data.val_split_fraction",
        "0.2",
        "--train.max_steps",
        "3",
        "--train.global_batch_size",
        "2",
        "--train.micro_batch_size",
        "1",
        "--train.lr_warmup_steps",
        "1",
        "--eval.interval",
        "100",
        "--eval.max_new_tokens",
        "4",
        "--precision",
        "32-true",
        "--out_dir",
        out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = out / "final"
    assert (final / "lit_model.pth.lora").is_file() and (final / "lit_model.pth").is_file()
    # litgpt's own save_hyperparameters stripped its sub-command through our CLI
    assert yaml.safe_load((final / "hyperparameters.yaml").read_text())["checkpoint_dir"] == str(tiny_checkpoint)

    (final / "lit_model.pth").unlink()
    merged = run_cli("merge_lora", final)
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert (final / "lit_model.pth").is_file()

    gen = run_cli(
        "generate", final, "--prompt", "What does town 3 sell?", "--max_new_tokens", "4", "--precision", "32-true"
    )
    assert gen.returncode == 0, gen.stderr[-2000:]


def test_bad_corpus_is_a_one_line_error(tmp_path):
    result = run_cli("make_tiny_checkpoint", "--out_dir", tmp_path / "x", "--corpus", tmp_path / "missing.txt")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing.txt: corpus file not found" in result.stderr
