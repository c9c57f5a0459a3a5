"""The last block works only at the positions a head reads: losses and gradients equal the full forward's, for
every family's block layout (sequential and parallel residual, shared attention norm), LoRA and full."""

from __future__ import annotations

import pytest
import torch


def _loss_and_grads(model, batch, objective, prune: bool, monkeypatch):
    from litgpt_ext.model import heads
    from litgpt_ext.model.patches import FastPaths, patched

    calls = []
    forward = heads._RowsOnlyLastBlock.forward
    monkeypatch.setattr(heads._RowsOnlyLastBlock, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    model.zero_grad(set_to_none=True)
    with patched(model, "training", FastPaths(forwards=False, last_block_rows=prune)):
        loss, _ = objective.compute(model, batch)
        loss.backward()
    assert len(calls) == int(prune)
    assert all(type(b).__name__ != "_RowsOnlyLastBlock" for b in model.transformer.h)
    assert "_fast_paths" not in vars(model)
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family, lora", [("llama", True), ("llama", False), ("gpt-neox", False), ("phi", True)])
def test_pruned_last_block_gives_the_full_forwards_loss_and_gradients(tiny_factory, family, lora, monkeypatch):
    from litgpt.config import Config

    from litgpt_ext.training.objectives.orm import ORMObjective
    from litgpt_ext.training.objectives.sft import SFTObjective

    ckpt = tiny_factory(model=family)
    torch.manual_seed(0)
    if lora:
        from litgpt.lora import GPT, mark_only_lora_as_trainable
        from litgpt.lora import Config as LoRAConfig

        config = LoRAConfig.from_file(ckpt / "model_config.yaml", lora_r=4, lora_alpha=8, lora_query=True, lora_value=True,
                                  lora_mlp=True)  # fmt: skip
        model = GPT(config)
        model.load_state_dict(torch.load(ckpt / "lit_model.pth"), strict=False)
        mark_only_lora_as_trainable(model)
        for name, p in model.named_parameters():  # LoRA B starts at zero: give the adapters a real effect
            if "lora_B" in name:
                p.data.normal_(0, 0.02)
    else:
        from litgpt.model import GPT

        model = GPT(Config.from_file(ckpt / "model_config.yaml"))
        model.load_state_dict(torch.load(ckpt / "lit_model.pth"))
    model.eval()  # no dropout: the two forwards must see the same masks
    samples = []
    for n in (9, 14, 6):
        ids = torch.randint(4, 200, (n,))
        labels = ids.clone()
        labels[: n // 2] = -100
        samples.append({"input_ids": ids, "labels": labels})
    sft = SFTObjective()
    batch = sft.collate(samples)
    full = _loss_and_grads(model, batch, sft, False, monkeypatch)
    pruned = _loss_and_grads(model, batch, sft, True, monkeypatch)
    torch.testing.assert_close(pruned[0], full[0], atol=1e-6, rtol=1e-5)
    assert pruned[1].keys() == full[1].keys() and full[1]
    for name in full[1]:
        torch.testing.assert_close(pruned[1][name], full[1][name], atol=1e-6, rtol=1e-4, msg=name)
    # a reward head on the last token (on_positions) too
    orm = ORMObjective(head="yes_token", yes_id=5, no_id=6)
    rows = [{"input_ids": s["input_ids"], "label": i % 2, "group": f"g{i}"} for i, s in enumerate(samples)]
    batch = orm.collate(rows)
    full = _loss_and_grads(model, batch, orm, False, monkeypatch)
    pruned = _loss_and_grads(model, batch, orm, True, monkeypatch)
    torch.testing.assert_close(pruned[0], full[0], atol=1e-6, rtol=1e-5)
    for name in full[1]:
        torch.testing.assert_close(pruned[1][name], full[1][name], atol=1e-6, rtol=1e-4, msg=name)


def _tiny_model(ckpt, lora: bool):
    """The tiny checkpoint as a litgpt model in eval mode: LoRA on q/v with a non-zero B (so LoRA changes the
    output), or plain."""
    torch.manual_seed(0)
    if lora:
        from litgpt.lora import GPT, Config, mark_only_lora_as_trainable

        model = GPT(Config.from_file(ckpt / "model_config.yaml", lora_r=4, lora_alpha=8, lora_query=True,
                                     lora_value=True))  # fmt: skip
        model.load_state_dict(torch.load(ckpt / "lit_model.pth"), strict=False)
        mark_only_lora_as_trainable(model)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.02)
    else:
        from litgpt.config import Config
        from litgpt.model import GPT

        model = GPT(Config.from_file(ckpt / "model_config.yaml"))
        model.load_state_dict(torch.load(ckpt / "lit_model.pth"))
    return model.eval()


def _assert_same_sft_loss_and_gradients(model, changed, lengths=(9, 12)):
    from litgpt_ext.training.objectives.sft import SFTObjective

    sft = SFTObjective()
    samples = [{"input_ids": torch.randint(4, 200, (n,)), "labels": torch.randint(4, 200, (n,))} for n in lengths]
    batch = sft.collate(samples)
    results = []
    for m in (model, changed):
        loss, _ = sft.compute(m, batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("lora", [False, True])
def test_fused_rms_norm_gives_litgpts_loss_and_gradients(tiny_factory, lora):
    """F.rms_norm in place of litgpt's RMSNorm forward: the same loss and gradients (norm weights included)."""
    import copy

    from litgpt_ext.model.fast_norm import fused_rms_norm

    model = _tiny_model(tiny_factory(), lora)
    if not lora:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(1.0, 0.1)  # norms that do something
    fused = copy.deepcopy(model)
    assert fused_rms_norm(fused) == 2 * len(model.transformer.h) + 1
    _assert_same_sft_loss_and_gradients(model, fused)


@pytest.mark.parametrize(
    ("groups", "parts"),
    [(2, dict(lora_query=True, lora_value=True)), (4, dict(lora_query=True, lora_value=True)),
     (2, dict(lora_query=True, lora_key=True, lora_value=True)), (1, dict(lora_key=True))],
)  # fmt: skip
def test_lean_lora_qkv_gives_litgpts_outputs_and_gradients(groups, parts):
    """The one-addmm LoRAQKVLinear forward equals litgpt's (grouped, multi-head and multi-query layouts; any subset
    of q/k/v), in outputs and in the gradients of lora_A, lora_B and the input; merging still gives the same layer."""
    import copy

    from litgpt.lora import Config, LoRAQKVLinear

    from litgpt_ext.model.fast_lora import lean_lora_qkv

    torch.manual_seed(0)
    cfg = Config(n_embd=64, n_head=4, n_query_groups=groups, head_size=16, lora_r=4, lora_alpha=8, **parts)
    enable = (cfg.lora_query, cfg.lora_key, cfg.lora_value)
    out = (cfg.n_head + 2 * groups) * cfg.head_size
    layer = LoRAQKVLinear(64, out, head_size=16, n_head=4, n_query_groups=groups, r=4, lora_alpha=8, enable_lora=enable)
    torch.nn.init.normal_(layer.lora_B)
    lean = copy.deepcopy(layer)
    assert lean_lora_qkv(torch.nn.Sequential(lean)) == 1
    x = torch.randn(3, 7, 64, requires_grad=True)
    results = []
    for m in (layer, lean):
        y = m(x)
        grads = torch.autograd.grad(y.square().sum(), [m.lora_A, m.lora_B, x])
        results.append((y.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):  # float rounding of sums in another order
        torch.testing.assert_close(b, a, atol=1e-6 * a.abs().max().item(), rtol=1e-4)
    lean.merge()
    layer.merge()
    torch.testing.assert_close(lean(x), layer(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("family", "groups", "lora"),
    [("llama", 2, True), ("llama", 1, False), ("llama", 4, True), ("gpt-neox", None, False), ("mistral", 2, True)],
)
def test_grouped_training_attention_gives_litgpts_loss_and_gradients(tiny_factory, family, groups, lora):
    """SDPA on grouped keys/values (no per-head copies, no empty rope concatenation) in place of litgpt's training
    attention: the same loss and gradients for grouped, multi-query and multi-head models, partial rope (gpt-neox)
    and LoRA; sliding-window blocks (mistral's tiny config slides) keep litgpt's forward."""
    import copy

    from litgpt_ext.model.fast_attention import grouped_training_attention

    model = _tiny_model(tiny_factory(family, **({} if groups is None else {"n_query_groups": groups})), lora)
    fast = copy.deepcopy(model)
    changed = grouped_training_attention(fast)
    sliding = sum(block.attn.apply_sliding_window_attention for block in model.transformer.h)
    assert changed == len(model.transformer.h) - sliding and (changed > 0) == (family != "mistral")
    _assert_same_sft_loss_and_gradients(model, fast, lengths=(9, 14))


def test_lean_swiglu_gives_litgpts_outputs_and_gradients_and_keeps_two_activations():
    from litgpt.config import Config
    from litgpt.model import LLaMAMLP

    from litgpt_ext.model.fast_mlp import lean_swiglu

    torch.manual_seed(0)
    mlp = LLaMAMLP(Config(n_embd=32, intermediate_size=48, bias=False))
    lean = LLaMAMLP(Config(n_embd=32, intermediate_size=48, bias=False))
    lean.load_state_dict(mlp.state_dict())
    assert lean_swiglu(torch.nn.Sequential(lean)) == 1
    x = torch.randn(3, 5, 32, requires_grad=True)
    results = []
    for m in (mlp, lean):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t.numel()) or t, lambda t: t):
            y = m(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *m.parameters()])
        results.append((y.detach(), grads, sum(n for n in saved if n == 3 * 5 * 48)))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(b, a, atol=1e-6 * a.abs().max().item(), rtol=1e-5)
    assert results[1][2] == results[0][2] - 3 * 5 * 48  # one activation-sized tensor fewer kept for backward
    with torch.no_grad():
        torch.testing.assert_close(lean(x), mlp(x))
