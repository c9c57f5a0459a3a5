"""litgpt_ext/model/ owns every change to litgpt's modules: installed and undone by one context, switched off by one
flag, refused up front by one support list; and the folders import one way."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import DEMO, REPO, run_cli


def _module_state(model: torch.nn.Module) -> dict:
    """Every module's own attributes and submodules, by identity: what an install would change."""
    return {
        name: (
            {k: id(v) for k, v in vars(m).items() if not k.startswith("_")},
            {k: id(v) for k, v in m._modules.items()},
        )
        for name, m in model.named_modules()
    }


def _lora_model(ckpt: Path):
    from litgpt.lora import GPT, Config

    config = Config.from_file(ckpt / "model_config.yaml", lora_r=4, lora_alpha=8, lora_query=True, lora_value=True)
    model = GPT(config)
    model.load_state_dict(torch.load(ckpt / "lit_model.pth", weights_only=True), strict=False)
    return model


def test_patched_installs_the_training_forwards_and_restores_every_module(tiny_checkpoint):
    from litgpt_ext.model.patches import FastPaths, fast_paths, patched

    model = _lora_model(tiny_checkpoint)
    before = _module_state(model)
    assert model.config.n_query_groups < model.config.n_head  # grouped attention: every replacement applies
    with pytest.raises(RuntimeError, match="inside"):
        with patched(model, "training"):
            replaced = [n for n, m in model.named_modules() if "forward" in vars(m)]
            kinds = {type(m).__name__ for n, m in model.named_modules() if "forward" in vars(m)}
            assert {"RMSNorm", "CausalSelfAttention", "LoRAQKVLinear", "LLaMAMLP"} <= kinds, kinds
            assert fast_paths(model) == FastPaths()
            raise RuntimeError("a failure inside the block")
    assert replaced and _module_state(model) == before
    with patched(model, "training", FastPaths(forwards=False, last_block_rows=False)):
        assert not any("forward" in vars(m) for m in model.modules())  # litgpt's own forwards
        assert not fast_paths(model).last_block_rows
    assert _module_state(model) == before and fast_paths(model) == FastPaths()


def test_an_engine_inside_a_training_run_gives_back_the_training_forwards(tiny_checkpoint):
    """On-policy sampling: the engine's decode installs sit on top of the training ones and come off on close."""
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.generate.engine import Engine, Job, Settings
    from litgpt_ext.model.patches import patched

    model = _lora_model(tiny_checkpoint).eval()
    plain = _module_state(model)
    ids = torch.randint(0, 100, (2, 7))
    with patched(model, "training"):
        training = _module_state(model)
        reference = model(ids).detach()
        with Engine(model, Tokenizer(tiny_checkpoint), Settings(max_batch_size=2, max_seq_length=48), torch.device("cpu"), torch.float32) as engine:  # fmt: skip
            assert _module_state(model) != training
            done = []
            engine.run([Job("a", 0, [1, 5, 9], 1, 4), Job("b", 1, [2, 7], 1, 4)], done.append)
            assert len(done) == 2
        assert _module_state(model) == training
        torch.testing.assert_close(model(ids), reference, rtol=0, atol=0)
    assert _module_state(model) == plain


def _sft(ckpt: Path, out: Path, *extra: str) -> list[float]:
    result = run_cli("finetune_sft", ckpt, "--data", DEMO / "qa.json", "--out_dir", out, "--mode", "full",
                     "--precision", "32-true", "--train.max_steps", "3", "--train.epochs", "null",
                     "--train.global_batch_size", "4", "--train.micro_batch_size", "2", "--train.log_interval", "1",
                     "--train.lr_warmup_steps", "0", "--eval.interval", "100", "--eval.final_validation", "false",
                     *extra)  # fmt: skip
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_fast_forwards_false_trains_with_litgpts_forwards_to_the_same_losses(tiny_checkpoint, tmp_path):
    fast = _sft(tiny_checkpoint, tmp_path / "fast")
    plain = _sft(tiny_checkpoint, tmp_path / "plain", "--fast_forwards", "false")
    assert len(fast) == len(plain) == 3
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=1e-5, atol=1e-6)
    hparams = yaml.safe_load((tmp_path / "plain" / "final" / "hyperparameters.yaml").read_text())
    assert hparams["fast_forwards"] is False and hparams["lora_r"] == 8  # the common flags, as the CLI shows them
    # equal losses would also come from a flag that did nothing: which forwards ran is recorded, and differs
    replaced = {run: json.loads((tmp_path / run / "sft_metadata.json").read_text())["replaced_forwards"]
                for run in ("fast", "plain")}  # fmt: skip
    assert replaced == {"fast": ["CausalSelfAttention", "LLaMAMLP", "RMSNorm"], "plain": []}, replaced


def test_generate_batch_with_litgpts_forwards_writes_the_same_greedy_texts(tiny_checkpoint, tmp_path):
    from litgpt_ext.generate.command import generate_batch

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": str(i), "prompt": "What is SQL? " * (i + 1)}) + "\n" for i in range(5))
    )
    texts = []
    for fast in (True, False):
        out = tmp_path / f"out-{fast}.jsonl"
        generate_batch(tiny_checkpoint, input=prompts, output=out, max_new_tokens=12, precision="32-true",
                       max_batch_size=3, fast_forwards=fast)  # fmt: skip
        texts.append({r["id"]: r["generations"] for r in map(json.loads, out.read_text().splitlines())})
        replaced = json.loads(out.with_suffix(".stats.json").read_text())["replaced_forwards"]
        # the grouped decode step, the packed decode matmuls (fp32 on a CPU) and the one-op norm, or none: the flag was honoured
        assert replaced == (["CausalSelfAttention", "LLaMAMLP", "Linear", "RMSNorm"] if fast else []), replaced
    assert texts[0] == texts[1] and len(texts[0]) == 5


@pytest.fixture
def latent_attention_checkpoint(tiny_checkpoint, tmp_path) -> Path:
    """A checkpoint directory whose config asks for DeepSeek's multi-head latent attention."""
    ckpt = tmp_path / "mla"
    shutil.copytree(tiny_checkpoint, ckpt)
    config = yaml.safe_load((ckpt / "model_config.yaml").read_text())
    config["n_query_groups"] = config["n_head"]  # litgpt's latent attention has no grouped queries
    config["latent_attention"] = {"q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8,
                                  "qk_nope_head_dim": 8, "v_head_dim": 16}  # fmt: skip
    (ckpt / "model_config.yaml").write_text(yaml.safe_dump(config))
    return ckpt


def test_support_list_names_what_each_path_does_not_handle(latent_attention_checkpoint, tiny_checkpoint):
    from litgpt.config import Config

    from litgpt_ext.model.support import support

    mla = Config.from_file(latent_attention_checkpoint / "model_config.yaml")
    assert support(mla, "finetune_full") == []  # litgpt's own forward runs it
    assert "latent attention" in support(mla, "finetune_lora")[0]
    assert "latent attention" in support(mla, "generate_batch")[0]
    plain = Config.from_file(tiny_checkpoint / "model_config.yaml")
    assert all(support(plain, path) == [] for path in ("finetune_lora", "finetune_full", "generate_batch"))


def test_an_unsupported_feature_is_refused_at_start_in_one_line(latent_attention_checkpoint, tmp_path):
    """Also a config litgpt itself cannot build: one line naming the file, not litgpt's assertion traceback."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    commands = [
        ("finetune_sft", latent_attention_checkpoint, "--data", DEMO / "qa.json", "--out_dir", tmp_path / "out"),
        ("generate_batch", latent_attention_checkpoint, "--input", prompts, "--output", tmp_path / "gen.jsonl"),
    ]
    for command in commands:
        result = run_cli(*command)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "latent attention" in lines[-1] and "model_config.yaml" in lines[-1], lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "gen.jsonl").exists()
    config = yaml.safe_load((latent_attention_checkpoint / "model_config.yaml").read_text())
    config["n_query_groups"] = 2  # litgpt asserts latent attention has one key/value head per query head
    (latent_attention_checkpoint / "model_config.yaml").write_text(yaml.safe_dump(config))
    result = run_cli(*commands[0])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "litgpt cannot build this model config" in result.stderr and "model_config.yaml" in result.stderr


# -- structure ------------------------------------------------------------------------------------------------------
LAYERS = [
    "api",
    "data",
    "model",
    "generate",
    "evaluate",
    "training",
    "kd",
    "reward",
    "export",
    "gguf",
    "prune",
    "finetune",
    "serve",
]
"""litgpt_ext's folders, lower first: a folder imports only folders before it (and the top-level basics)."""
ALLOWED_BACK_ARROWS = {("training", "generate"), ("training", "evaluate")}
"""On-policy distillation samples with the generator's engine; validation scores generations with evaluate's
metrics. Both are libraries there, though generate/ and evaluate/ also hold commands."""


def _folder_imports() -> dict[tuple[str, str], list[str]]:
    root = REPO / "litgpt_ext"
    edges: dict[tuple[str, str], list[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if len(parts) == 1:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            for module in modules:
                target = module.split(".")
                if (
                    target[0] == "litgpt_ext"
                    and len(target) > 1
                    and (root / target[1]).is_dir()
                    and target[1] != parts[0]
                ):
                    edges.setdefault((parts[0], target[1]), []).append(str(path.relative_to(REPO)))
    return edges


def test_folders_import_one_way():
    edges = _folder_imports()
    assert {folder for edge in edges for folder in edge} <= set(LAYERS)
    back = {(a, b) for a, b in edges if LAYERS.index(b) > LAYERS.index(a)}
    assert back <= ALLOWED_BACK_ARROWS, {e: edges[e] for e in back - ALLOWED_BACK_ARROWS}
    cycles = {(a, b) for a, b in edges if (b, a) in edges}
    assert not cycles, {e: edges[e] for e in cycles}


def test_no_source_file_is_over_400_lines():
    long = {
        str(p.relative_to(REPO)): n
        for folder in ("litgpt_ext", "distill")
        for p in (REPO / folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400 and p.name != "fake_server.py"  # the stand-in teacher server
    }
    assert not long, long
