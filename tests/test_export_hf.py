"""export_hf: transformers / peft load the result as-is and agree with litgpt."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer

from conftest import DEMO, run_cli
from litgpt_ext.errors import UserError
from litgpt_ext.export.command import export_hf
from litgpt_ext.finetune.sft import setup as finetune_sft
from litgpt_ext.training.args import EvalArgs, TrainArgs

TEXT = "Question: What does Ivel sell? The roofs in Avalon are 3 colors."


def _litgpt_logits(ckpt, ids):
    model = GPT(Config.from_file(ckpt / "model_config.yaml"))
    state = torch.load(ckpt / "lit_model.pth")
    model.load_state_dict(state.get("model", state))
    model.eval()
    with torch.no_grad():
        return model(ids)


def _hf(out):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    return model.eval(), info


@pytest.mark.parametrize(
    ("family", "tokenizer"),
    [
        ("llama", "bpe"),
        ("llama", "sentencepiece"),
        ("mistral", "bpe"),
        ("qwen2", "bpe"),
        ("gpt-neox", "bpe"),
        ("phi", "bpe"),
    ],
)
def test_full_export_loads_cleanly_and_matches_litgpt(tiny_factory, tmp_path, family, tokenizer):
    from transformers import AutoTokenizer

    ckpt = tiny_factory(model=family, tokenizer=tokenizer)
    out = tmp_path / "hf"
    export_hf(ckpt, out_dir=out, dtype="fp32")
    model, info = _hf(out)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids = Tokenizer(ckpt).encode(TEXT)
    assert AutoTokenizer.from_pretrained(out)(TEXT)["input_ids"] == ids.tolist()
    with torch.no_grad():
        hf_logits = model(ids[None].long()).logits
    assert torch.allclose(hf_logits, _litgpt_logits(ckpt, ids[None].long()), atol=1e-4)
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (1, 2)
    assert (out / "README.md").read_text().startswith("---\nlibrary_name: transformers")


@pytest.fixture(scope="module")
def lora_run(tiny_factory, tmp_path_factory):
    """A LoRA finetune touching every projection (and the head), so the adapter is not trivially zero."""
    out = tmp_path_factory.mktemp("lora")
    secret = "hf_do_not_leak_123456"
    os.environ["HF_TOKEN"] = secret
    try:
        finetune_sft(
            tiny_factory(),
            data=DEMO / "qa.json",
            out_dir=out,
            precision="32-true",
            lora_key=True,
            lora_mlp=True,
            lora_projection=True,
            lora_head=True,
            train=TrainArgs(
                save_interval=None, global_batch_size=4, micro_batch_size=4, max_steps=5, epochs=None, lr_warmup_steps=1
            ),
            eval=EvalArgs(interval=100, max_iters=1),
            optimizer={"lr": 0.05},
        )
    finally:
        del os.environ["HF_TOKEN"]
    return out / "final", secret


def test_lora_checkpoint_as_full_matches_merged_and_as_peft_matches_through_peftmodel(lora_run, tiny_factory, tmp_path):
    from peft import PeftModel

    final, _ = lora_run
    ids = Tokenizer(final).encode(TEXT)[None].long()
    merged = _litgpt_logits(final, ids)
    assert not torch.allclose(merged, _litgpt_logits(tiny_factory(), ids), atol=1e-2)  # LoRA changed the model

    unmerged = tmp_path / "unmerged"  # only the LoRA file: export must merge first
    shutil.copytree(final, unmerged)
    (unmerged / "lit_model.pth").unlink()
    export_hf(unmerged, out_dir=tmp_path / "full", dtype="fp32")
    with torch.no_grad():
        assert torch.allclose(_hf(tmp_path / "full")[0](ids).logits, merged, atol=1e-4)

    export_hf(tiny_factory(), out_dir=tmp_path / "base", dtype="fp32")
    export_hf(final, out_dir=tmp_path / "adapter", format="peft", base_model=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (
        config["r"] == 8 and config["lora_alpha"] == 16 and config["base_model_name_or_path"] == str(tmp_path / "base")
    )
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    }
    peft_model = PeftModel.from_pretrained(_hf(tmp_path / "base")[0], tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, merged, atol=1e-4)


def test_model_card_and_files_hold_no_secret(lora_run, tmp_path):
    final, secret = lora_run
    export_hf(final, out_dir=tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "lora_r" in card and "train.max_steps" in card
    for path in (tmp_path / "hf").iterdir():
        assert secret.encode() not in path.read_bytes(), path


def test_sharding_writes_a_valid_index(tiny_factory, tmp_path):
    ckpt = tiny_factory()
    out = tmp_path / "hf"
    export_hf(ckpt, out_dir=out, dtype="fp32", max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == sum(4 * p.numel() for p in torch.load(ckpt / "lit_model.pth").values())
    model, info = _hf(out)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_bf16_export_and_refusing_to_overwrite(tiny_factory, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "hf"
    export_hf(tiny_factory(), out_dir=out, dtype="bf16")
    with safe_open(out / "model.safetensors", "pt") as fh:
        assert all(fh.get_tensor(k).dtype == torch.bfloat16 for k in fh.keys())
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with pytest.raises(UserError, match="exists and is not empty"):
        export_hf(tiny_factory(), out_dir=out)
    export_hf(tiny_factory(), out_dir=out, dtype="fp32", overwrite=True)


def test_unsupported_architecture_and_missing_file_are_one_line_errors(tiny_factory, tmp_path):
    ckpt = tmp_path / "gemma"
    shutil.copytree(tiny_factory(), ckpt)
    cfg = (ckpt / "model_config.yaml").read_text().replace("mlp_class_name: LLaMAMLP", "mlp_class_name: GemmaMLP")
    (ckpt / "model_config.yaml").write_text(cfg)
    result = run_cli("export_hf", ckpt, "--out_dir", tmp_path / "o")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "cannot export 'tiny-llama': a Gemma variant other than Gemma 1, 2 or 3; supported" in result.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()

    broken = tmp_path / "broken"
    shutil.copytree(tiny_factory(), broken)
    (broken / "lit_model.pth").unlink()
    result = run_cli("export_hf", broken, "--out_dir", tmp_path / "o")
    assert result.returncode == 2 and result.stderr.strip() == f"error: {broken}: checkpoint_dir: missing lit_model.pth"
    result = run_cli("export_hf", tiny_factory(), "--out_dir", tmp_path / "o", "--format", "peft")
    assert result.returncode == 2 and "missing lit_model.pth.lora" in result.stderr


def test_push_to_hub_uses_hf_token_and_uploads_the_folder(tiny_factory, tmp_path, monkeypatch):
    from litgpt_ext.export import hub

    calls = []

    class FakeApi:
        def __init__(self, token, endpoint=None):
            calls.append(("init", token))

        def create_repo(self, **kw):
            calls.append(("create_repo", kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", sorted(p.name for p in (tmp_path / "hf").iterdir())))
            return "https://hub.example/commit/1"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UserError, match="set HF_TOKEN"):
        hub.push_folder(tmp_path, "me/model", private=True)
    monkeypatch.setenv("HF_TOKEN", "hf_token_value")
    export_hf(tiny_factory(), out_dir=tmp_path / "hf", push_to_hub="me/tiny", private=True)
    assert calls[0] == ("init", "hf_token_value")
    assert calls[1] == ("create_repo", {"repo_id": "me/tiny", "repo_type": "model", "private": True, "exist_ok": True})
    assert "config.json" in calls[2][1] and "model.safetensors" in calls[2][1]


MEMORY_PROBE = """
import sys, threading, time
from pathlib import Path
from litgpt_ext.export.command import export_hf

def anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

base, peak, running = anon_kb(), [0], [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], anon_kb())
        time.sleep(0.002)
t = threading.Thread(target=sample)
t.start()
export_hf(Path(sys.argv[1]), out_dir=Path(sys.argv[2]), max_shard_size="16MB")
running[0] = False
t.join()
print(peak[0] - base)
"""


def test_export_streams_with_memory_far_below_the_model_size(tiny_factory, tmp_path):
    """Anonymous memory (the checkpoint itself is memory-mapped) grows by about one shard, not by the model."""
    import subprocess
    import sys

    ckpt = tiny_factory(n_layer=16, n_embd=512, n_head=8)
    state = torch.load(ckpt / "lit_model.pth")
    model_mb = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(ckpt), str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    growth_mb = int(result.stdout.strip().splitlines()[-1]) / 1024
    assert model_mb > 150 and growth_mb < 0.35 * model_mb, (growth_mb, model_mb)
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 5


@pytest.mark.parametrize(
    ("like", "cls"),
    [("Qwen3-0.6B", "Qwen3ForCausalLM"), ("Gemma-2b", "GemmaForCausalLM"), ("Gemma-2-2b", "Gemma2ForCausalLM"),
     ("Gemma-3-4b-it", "Gemma3ForCausalLM"), ("gemma-3-1b-it", "Gemma3ForCausalLM")],
)  # fmt: skip
def test_qwen3_and_gemma_export_full_and_peft_with_litgpts_logits(tmp_path, like, cls):
    """Qwen3 (qk-norm on every head, no qkv bias), Gemma 1 (multi-query, (1 + w) norms, scaled embeddings), Gemma 2
    (softcapping, norms around both sublayers, alternating sliding windows: 128 here, the text is longer) and Gemma 3
    (q/k norms, the local RoPE base on windowed layers, linear RoPE scaling on the global ones; and a checkpoint named
    in lower case, whose norms litgpt computes without Gemma's (1 + w), as its Config keys that on the name) at a tiny
    size: transformers loads the full export
    with no missing or unexpected weight and litgpt's logits; a LoRA run's adapter through PeftModel gives the merged
    logits."""
    from peft import PeftModel

    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(out_dir=tmp_path / like, like=like)
    with torch.no_grad():  # non-trivial q/k norm weights, so a dropped or misplaced norm shows in the logits
        state = torch.load(ckpt / "lit_model.pth", weights_only=True)
        g = torch.Generator().manual_seed(0)
        for name in [n for n in state if ".attn.norm_q." in n or ".attn.norm_k." in n]:
            state[name] = 1 + 0.5 * torch.randn(state[name].shape, generator=g)
        torch.save(state, ckpt / "lit_model.pth")
    export_hf(ckpt, out_dir=tmp_path / "hf", dtype="fp32")
    model, info = _hf(tmp_path / "hf")
    assert type(model).__name__ == cls
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids = Tokenizer(ckpt).encode(" ".join([TEXT] * 12))[None].long()
    assert ids.size(1) > 200
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, _litgpt_logits(ckpt, ids), atol=1e-4)

    out = tmp_path / "lora"
    finetune_sft(ckpt, data=DEMO / "qa.json", out_dir=out, precision="32-true", lora_key=True, lora_mlp=True,
                 train=TrainArgs(save_interval=None, global_batch_size=4, micro_batch_size=4, max_steps=3, epochs=None,
                                 lr_warmup_steps=1),
                 eval=EvalArgs(interval=100, max_iters=1, final_validation=False), optimizer={"lr": 0.05})  # fmt: skip
    merged = _litgpt_logits(out / "final", ids)
    export_hf(out / "final", out_dir=tmp_path / "adapter", format="peft", base_model=str(tmp_path / "hf"))
    peft_model = PeftModel.from_pretrained(_hf(tmp_path / "hf")[0], tmp_path / "adapter").eval()
    with torch.no_grad():
        diff = float((peft_model(ids).logits - merged).abs().max())
        assert diff < 1e-4, diff
        assert not torch.allclose(merged, _litgpt_logits(ckpt, ids), atol=1e-2)  # the adapter changed the model


@pytest.mark.parametrize(("like", "cls"), [("Mixtral-8x7B-v0.1", "MixtralForCausalLM"),
                                           ("Qwen3-30B-A3B", "Qwen3MoeForCausalLM")])  # fmt: skip
def test_moe_models_export_with_litgpts_logits_and_refuse_peft_in_one_line(tmp_path, like, cls):
    """litgpt's MoE router (top-k of the logits, softmax over those) is Mixtral's and Qwen3-MoE's (softmax, top-k,
    renormalised); every expert is a SwiGLU."""
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(out_dir=tmp_path / like, like=like)
    export_hf(ckpt, out_dir=tmp_path / "hf", dtype="fp32")
    model, info = _hf(tmp_path / "hf")
    assert type(model).__name__ == cls
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids = Tokenizer(ckpt).encode(TEXT)[None].long()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, _litgpt_logits(ckpt, ids), atol=1e-4)
    finetune_sft(ckpt, data=DEMO / "qa.json", out_dir=tmp_path / "lora", precision="32-true",
                 train=TrainArgs(save_interval=None, global_batch_size=2, micro_batch_size=2, max_steps=1, epochs=None,
                                 lr_warmup_steps=0),
                 eval=EvalArgs(interval=100, max_iters=1, final_validation=False))  # fmt: skip
    result = run_cli("export_hf", tmp_path / "lora" / "final", "--out_dir", tmp_path / "adapter", "--format", "peft")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "PEFT export is not supported for" in result.stderr and "use --format full" in result.stderr
    assert not (tmp_path / "adapter").exists()


def test_falcon_40b_is_refused_not_written_as_gpt_neox(tmp_path):
    """Falcon 40B's block (parallel residual, two norms, no biases, grouped keys) looks like GPT-NeoX's by its classes;
    transformers would load it as GPT-NeoX with every bias missing and no way to hold grouped keys."""
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(out_dir=tmp_path / "falcon-40b", like="falcon-40b")
    result = run_cli("export_hf", ckpt, "--out_dir", tmp_path / "hf")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "a parallel-residual model without biases or with grouped keys (Falcon)" in result.stderr
    assert not (tmp_path / "hf").exists()
