"""litgpt families beyond the dense ones, on scaled-down configs of real models (``make_tiny_checkpoint --like``)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import DEMO, run_cli, tokenized_for


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """Qwen3-30B-A3B's architecture (MoE: 4 experts here, 2 per token; qk-norm) at a tiny size."""
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(out_dir=tmp_path_factory.mktemp("moe") / "Qwen3-30B-A3B", like="Qwen3-30B-A3B")


def test_scaled_down_config_keeps_the_architecture(moe):
    from litgpt.config import Config

    config = Config.from_file(moe / "model_config.yaml")
    assert (config.name, config.mlp_class_name, config.n_expert, config.n_expert_per_token) == (
        "Qwen3-30B-A3B", "LLaMAMoE", 4, 2)  # fmt: skip
    assert config.norm_qk and config.n_layer == 2 and config.n_embd == 64


def test_moe_last_block_rows_give_the_full_forwards_loss_and_gradients(moe):
    """The last block at answer rows only routes each row on its own: exact for an MoE MLP too."""
    from litgpt.config import Config
    from litgpt.model import GPT

    from litgpt_ext.model.patches import FastPaths, patched
    from litgpt_ext.training.objectives.sft import SFTObjective

    model = GPT(Config.from_file(moe / "model_config.yaml"))
    model.load_state_dict(torch.load(moe / "lit_model.pth", weights_only=True))
    model.eval()
    sft = SFTObjective()
    batch = sft.collate([{"input_ids": torch.randint(4, 200, (n,)), "labels": torch.randint(4, 200, (n,))}
                         for n in (9, 14)])  # fmt: skip
    results = []
    for prune in (False, True):
        with patched(model, "training", FastPaths(forwards=False, last_block_rows=prune)):
            model.zero_grad(set_to_none=True)
            loss, _ = sft.compute(model, batch)
            loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


def _sft_losses(ckpt, out, mode: str, steps: int) -> list[float]:
    """``finetune_sft`` through the CLI for ``steps`` steps: no traceback, the logged losses."""
    result = run_cli("finetune_sft", ckpt, "--data", DEMO / "qa.json", "--out_dir", out, "--mode", mode,
                     "--precision", "32-true", "--train.max_steps", str(steps), "--train.epochs", "null",
                     "--train.global_batch_size", "4", "--train.micro_batch_size", "4", "--train.log_interval", "1",
                     "--eval.interval", "100", "--eval.final_validation", "false")  # fmt: skip
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_finetune_sft_trains_an_moe_model(moe, tmp_path, mode):
    losses = _sft_losses(moe, tmp_path / "out", mode, 3)
    assert len(losses) == 3 and all(0 < v < 20 for v in losses)


def test_data_tokenized_for_another_model_is_refused_in_one_line(tiny_factory, tmp_path):
    """train.pt records the tokenizer it was made with: a finetune of a model with another vocabulary stops at start
    (and an old file without the record is caught by its ids past the model's embedding)."""
    other, student = tiny_factory(vocab_size=1024), tiny_factory()
    data = tokenized_for(other, tmp_path / "data")

    def finetune():
        return run_cli("finetune_sft", student, "--data", data, "--out_dir", tmp_path / "out", "--mode", "full",
                       "--train.max_steps", "1", "--precision", "32-true")  # fmt: skip

    result = finetune()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {data / 'train.pt'}: tokenizer: tokenized with "
                                                             f"another tokenizer ({other}")  # fmt: skip
    for split in ("train", "val"):  # a file of an older version: no record, ids past the 512-row embedding
        packed = torch.load(data / f"{split}.pt", weights_only=True)
        packed.pop("tokenizer")
        packed["input_ids"][0] = 1000
        torch.save(packed, data / f"{split}.pt")
    result = finetune()
    assert result.returncode == 2 and "token id 1000 is past the model's vocabulary (512 ids)" in result.stderr
    assert not (tmp_path / "out" / "final").exists()


def test_generate_merge_names_the_row_without_its_line_number(tmp_path):
    shard = tmp_path / "shard.jsonl"
    shard.write_text(json.dumps({"id": "a", "_line": 1, "generations": ["x"]}) + "\n" + json.dumps({"id": "b"}) + "\n")
    result = run_cli("generate_merge", "--inputs", f"[{shard}]", "--output", tmp_path / "merged.jsonl")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {shard}:2: _line: missing")
    assert not (tmp_path / "merged.jsonl").exists()


# -- final logit softcapping (Gemma-2) ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    """Gemma-2-2b's architecture at a tiny size: final logits capped at 30, attention logits at 50, post-norms,
    alternating sliding-window layers."""
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(out_dir=tmp_path_factory.mktemp("gemma2") / "Gemma-2-2b", like="Gemma-2-2b")


def _loaded(ckpt, scale: float = 1.0):
    """The checkpoint's model, its head scaled so that the final softcapping bites (random-init logits are small)."""
    from litgpt.config import Config
    from litgpt.model import GPT

    model = GPT(Config.from_file(ckpt / "model_config.yaml"))
    model.load_state_dict(torch.load(ckpt / "lit_model.pth", weights_only=True))
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model.eval()


def _batch(seed: int = 0):
    from litgpt_ext.data.batches import pad_collate

    g = torch.Generator().manual_seed(seed)
    samples = []
    for n in (9, 14):
        ids = torch.randint(4, 200, (n,), generator=g)
        labels = ids.clone()
        labels[: n // 2] = -100  # the prompt
        samples.append({"input_ids": ids, "labels": labels})
    return pad_collate(samples)


def test_softcapped_models_train_with_litgpts_capped_logits(gemma2):
    """SFT's answer-only head and KD's blockwise head give the loss and gradients of litgpt's own forward, whose logits
    are capped (cap * tanh(logits / cap)); before, the objectives refused such models with a traceback."""
    import torch.nn.functional as F
    from litgpt.config import Config

    from litgpt_ext.kd.teacher import TeacherBlock
    from litgpt_ext.training.objectives.divergences import jsd_loss
    from litgpt_ext.training.objectives.kd import KDSettings, kd_forward
    from litgpt_ext.training.objectives.sft import answer_cross_entropy

    cap = Config.from_file(gemma2 / "model_config.yaml").final_logit_softcapping
    assert cap == 30.0
    batch = _batch()
    inputs, labels = batch["input_ids"][:, :-1], batch["labels"][:, 1:]
    results = []
    for ours in (True, False):
        model = _loaded(gemma2, scale=25.0)
        if ours:
            loss = answer_cross_entropy(model, batch)
        else:
            logits = model(inputs)
            peak = float(logits.detach().abs().max())
            assert 0.5 * cap < peak < cap  # capped, and it bites
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for name, grad in results[1][1].items():
        torch.testing.assert_close(results[0][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)

    # KD with a softcapped teacher and student: the blockwise loss equals the divergence of the two models' logits
    student, teacher = _loaded(gemma2, scale=25.0), _loaded(gemma2, scale=20.0)
    index = batch["answer_index"]
    targets = labels.reshape(-1).index_select(0, index)
    with torch.no_grad():
        t_logits = teacher(inputs).reshape(-1, teacher.config.padded_vocab_size)[index]
    kd = KDSettings(beta=0.0, kd_ratio=1.0, scale_by_t2=False)
    ours, _ = kd_forward(student, inputs, index, targets, lambda a, b: TeacherBlock(logits=t_logits[a:b]), kd)
    with torch.no_grad():
        theirs = jsd_loss(student(inputs), teacher(inputs), labels, beta=0.0)
    assert abs(float(ours.detach()) - float(theirs)) < 1e-5


def test_finetune_sft_trains_a_softcapped_model(gemma2, tmp_path):
    losses = _sft_losses(gemma2, tmp_path / "out", "lora", 2)
    assert len(losses) == 2 and all(0 < v < 40 for v in losses)


def test_replacement_forwards_leave_subclasses_that_compute_differently_alone(tiny_factory):
    """A replacement stands in only where the class computes as litgpt's: litgpt's adapter attention (its own
    scaled_dot_product_attention) and a subclass overriding forward keep theirs; litgpt's LoRA classes are replaced."""
    from litgpt.adapter import GPT as AdapterGPT
    from litgpt.adapter import Config as AdapterConfig
    from litgpt.lora import GPT as LoraGPT
    from litgpt.lora import Config as LoraConfig
    from litgpt.model import RMSNorm

    from litgpt_ext.model.decode_attention import install_grouped_decode
    from litgpt_ext.model.fast_attention import grouped_training_attention
    from litgpt_ext.model.fast_lora import lean_lora_qkv
    from litgpt_ext.model.fast_norm import fused_rms_norm

    ckpt = tiny_factory()
    lora = LoraGPT(LoraConfig.from_file(ckpt / "model_config.yaml", lora_r=4, lora_query=True, lora_value=True))
    assert grouped_training_attention(lora) == lora.config.n_layer and lean_lora_qkv(lora) == lora.config.n_layer
    adapter = AdapterGPT(AdapterConfig.from_file(ckpt / "model_config.yaml", adapter_start_layer=0))
    assert grouped_training_attention(adapter) == 0
    assert not install_grouped_decode(adapter)
    assert install_grouped_decode(LoraGPT(LoraConfig.from_file(ckpt / "model_config.yaml")))
    assert all("forward" not in vars(block.attn) for block in adapter.transformer.h)

    class ScaledNorm(RMSNorm):
        def forward(self, x):
            return 2 * super().forward(x)

    model = LoraGPT(LoraConfig.from_file(ckpt / "model_config.yaml"))
    model.transformer.ln_f = ScaledNorm(model.config.n_embd)
    plain_norms = sum(type(m) is RMSNorm for m in model.modules())
    assert fused_rms_norm(model) == plain_norms and "forward" not in vars(model.transformer.ln_f)


# -- mixed sliding-window and global layers in generation (Gemma 2 / 3) ------------------------------------------
@pytest.mark.parametrize("like", ["Gemma-2-2b", "gemma-3-1b-it"])
def test_generation_keeps_each_layers_window_and_softcapped_masks(tmp_path, like):
    """The engine's greedy tokens equal greedy decoding by litgpt's full forward (its sliding-window and softcapped
    attention as in training) for prompts longer than the window (128 at this size); the windows matter for these
    prompts; and engine_on leaves no adjusted block behind. (litgpt's own KV-cache generation of Gemma 2 adds a boolean
    mask to its softcapped scores, masking nothing; the engine gives that attention 0 / -inf.)"""
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.generate.engine import Engine, Job, Settings
    from litgpt_ext.generate.on_model import sample_answers
    from litgpt_ext.generate.settings import greedy as greedy_sampling
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(out_dir=tmp_path / like, like=like)
    config = Config.from_file(ckpt / "model_config.yaml")
    assert config.sliding_window_size == 128 and 0 < sum(config.sliding_window_indices) < config.n_layer

    def fresh(windows: bool = True):
        model = GPT(config)
        model.load_state_dict(torch.load(ckpt / "lit_model.pth", weights_only=True))
        for block in model.transformer.h:
            block.attn.apply_sliding_window_attention &= windows
        return model.eval()

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, 500, (n,), generator=g).tolist() for n in (200, 150, 40, 300)]

    def greedy(model):
        out = []
        with torch.no_grad():
            for prompt in prompts:
                ids = list(prompt)
                for _ in range(8):
                    ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
                out.append(ids[len(prompt) :])
        return out

    want = greedy(fresh())
    assert want != greedy(fresh(windows=False))  # the windows change these answers
    engine = Engine(fresh(), Tokenizer(ckpt), Settings(greedy_sampling(8), max_batch_size=3, max_seq_length=320),
                    torch.device("cpu"), torch.float32)  # fmt: skip
    got = {}
    engine.run([Job(str(i), i, p, 1, 8) for i, p in enumerate(prompts)], lambda j: got.update({j.id: j.token_ids[0]}))
    assert [got[str(i)] for i in range(len(prompts))] == want

    model = fresh()
    answers = sample_answers(model, Tokenizer(ckpt), prompts, greedy_sampling(8), 0, 320)
    assert [ids for ids, _ in answers] == want
    assert not any("forward" in vars(block) or "forward" in vars(block.attn) for block in model.transformer.h)
