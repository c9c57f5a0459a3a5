"""finetune_dpo / finetune_orpo on the one loop: losses, the reference, resume, learning, and what users do next."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from litgpt_ext.data.batches import pair_collate
from litgpt_ext.finetune import dpo, orpo, sft
from litgpt_ext.training.args import EvalArgs, TrainArgs
from litgpt_ext.training.objectives.dpo import dpo_losses
from litgpt_ext.training.objectives.orpo import odds_ratio
from litgpt_ext.training.objectives.pairs import pair_forward
from litgpt_ext.training.reference import lora_disabled

TOWNS = ["Ivel", "Orra", "Bask", "Tume", "Lira", "Marn", "Sobe", "Kest"]
GOODS = ["salt", "glass", "wool", "iron", "fish", "bread", "rope", "wine"]
RIGHT = dict(zip(TOWNS, GOODS))
DECOY = {t: GOODS[(i + 3) % 8] for i, t in enumerate(TOWNS)}


def _pairs_file(path, n=200, seed=0):
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        town = rng.choice(TOWNS)
        rows.append(
            {
                "id": f"p{i}",
                "prompt": f"What does {town} sell?",
                "chosen": f" {RIGHT[town]}",
                "rejected": f" {DECOY[town]}",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train_args(steps, batch=8, **kw):
    settings = dict(
        max_steps=steps,
        epochs=None,
        global_batch_size=batch,
        micro_batch_size=batch,
        lr_warmup_steps=2,
        save_interval=None,
        log_interval=1,
        min_lr=0.0,
    )
    return TrainArgs(**{**settings, **kw})


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# -- the losses, on hand-made numbers ------------------------------------------------------------------------------------
def test_dpo_losses_follow_their_formulas():
    c, r = torch.tensor([0.4, -0.2]), torch.tensor([-0.1, 0.3])
    delta = c - r
    beta, eps = 0.5, 0.2
    expected = -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    torch.testing.assert_close(dpo_losses(c, r, beta, "sigmoid", eps), expected)
    torch.testing.assert_close(dpo_losses(c, r, beta, "hinge"), torch.relu(1 - beta * delta))
    tokens_c, tokens_r = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0])
    ipo = (c / tokens_c - r / tokens_r - 1 / (2 * beta)) ** 2
    torch.testing.assert_close(dpo_losses(c, r, beta, "ipo", 0.0, tokens_c, tokens_r), ipo)


def test_orpo_odds_ratio_matches_the_naive_formula():
    c, r = torch.tensor([-0.3, -2.0, -0.01]), torch.tensor([-1.2, -0.5, -4.0])
    naive = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
    torch.testing.assert_close(odds_ratio(c, r), naive)
    assert torch.isfinite(odds_ratio(torch.tensor([-1e-7]), torch.tensor([-50.0]))).all()  # no cancellation


# -- one forward, the head on answer tokens only -------------------------------------------------------------------------
def _model(tiny_checkpoint, lora=False):
    from litgpt.config import Config

    if lora:
        from litgpt.lora import GPT, Config
    else:
        from litgpt.model import GPT
    targets = {
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_query": True,
        "lora_value": True,
        "lora_mlp": True,
        "lora_head": True,
    }
    config = Config.from_file(tiny_checkpoint / "model_config.yaml", **(targets if lora else {}))
    model = GPT(config)
    state = torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True)
    model.load_state_dict(state.get("model", state), strict=not lora)
    return model.eval()


def _samples():
    return [
        {
            "prompt_ids": torch.tensor([1, 40, 41, 42]),
            "chosen_ids": torch.tensor([50, 51, 2]),
            "rejected_ids": torch.tensor([60, 2]),
        },
        {
            "prompt_ids": torch.tensor([1, 43]),
            "chosen_ids": torch.tensor([52, 2]),
            "rejected_ids": torch.tensor([61, 62, 63, 64, 2]),
        },
    ]


def test_answer_logps_equal_a_full_forward_per_row_and_padding_is_irrelevant(tiny_checkpoint):
    model = _model(tiny_checkpoint)
    samples = _samples()
    with torch.no_grad():
        out = pair_forward(model, pair_collate(samples, pad_id=0))
        out_other_pad = pair_forward(model, pair_collate(samples, pad_id=7))
        expected = []
        for key in ("chosen_ids", "rejected_ids"):
            for s in samples:
                ids = torch.cat([s["prompt_ids"], s[key]]).unsqueeze(0)
                logps = torch.log_softmax(model(ids)[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
                expected.append(logps[len(s["prompt_ids"]) - 1 :].sum())
    torch.testing.assert_close(out.answer_logps, torch.stack(expected))
    torch.testing.assert_close(out.answer_logps, out_other_pad.answer_logps)
    assert out.mean_logits.shape[0] == 3 + 2 + 2 + 5  # answer tokens only reached the LM head
    assert out.answer_tokens.tolist() == [3, 2, 2, 5]


def test_blockwise_head_gives_the_same_loss_and_gradients(tiny_checkpoint, monkeypatch):
    """Blocks of 2 rows under activation checkpointing == one block: same log-probs, same parameter gradients."""
    from litgpt_ext.model import blockwise_head

    model = _model(tiny_checkpoint)
    batch = pair_collate(_samples(), pad_id=0)

    def grads_and_logps():
        model.zero_grad()
        out = pair_forward(model, batch)
        out.answer_logps.sum().backward()
        return out.token_logps.detach(), out.mean_logits, {n: p.grad.clone() for n, p in model.named_parameters()}

    whole = grads_and_logps()
    monkeypatch.setattr(blockwise_head, "HEAD_CHUNK_ELEMENTS", 2 * model.config.padded_vocab_size)
    blocks = grads_and_logps()
    torch.testing.assert_close(blocks[0], whole[0])
    torch.testing.assert_close(blocks[1], whole[1])
    for name, grad in whole[2].items():
        torch.testing.assert_close(blocks[2][name], grad, msg=name)


def test_frozen_head_shortcut_gives_autograds_gradients(tiny_checkpoint, monkeypatch):
    """LoRA model, frozen head: the fused log-prob head (backward done in the forward) == plain autograd."""
    from litgpt.lora import GPT, Config, mark_only_lora_as_trainable

    from litgpt_ext.model import blockwise_head
    from litgpt_ext.model.patches import FastPaths, patched

    config = Config.from_file(
        tiny_checkpoint / "model_config.yaml", lora_r=4, lora_alpha=8, lora_query=True, lora_value=True, lora_mlp=True
    )
    model = GPT(config)
    model.load_state_dict(torch.load(tiny_checkpoint / "lit_model.pth", weights_only=True), strict=False)
    mark_only_lora_as_trainable(model)
    assert blockwise_head.frozen_linear(model.lm_head) is not None
    batch = pair_collate(_samples(), pad_id=0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)  # B = 0 at init would hide mistakes in the LoRA gradients

    def grads_and_logps():
        model.zero_grad()
        out = pair_forward(model, batch)
        (out.answer_logps * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
        return (
            out.token_logps.detach(),
            out.mean_logits,
            {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad},
        )

    fused = grads_and_logps()
    monkeypatch.setattr(blockwise_head, "HEAD_CHUNK_ELEMENTS", 2**40)  # one block, no checkpointing: plain autograd
    with patched(model, "training", FastPaths(forwards=False, frozen_head=False)):
        plain = grads_and_logps()
    torch.testing.assert_close(fused[0], plain[0])
    torch.testing.assert_close(fused[1], plain[1])
    assert fused[2].keys() == plain[2].keys() and len(plain[2]) > 0
    for name, grad in plain[2].items():
        torch.testing.assert_close(fused[2][name], grad, msg=name)


def test_lora_disabled_is_exactly_the_base_model(tiny_checkpoint):
    base, lora = _model(tiny_checkpoint), _model(tiny_checkpoint, lora=True)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter: the LoRA path changes the output
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        assert not torch.allclose(lora(ids), base(ids))
        with lora_disabled(lora):
            torch.testing.assert_close(lora(ids), base(ids), rtol=0, atol=0)
        assert not torch.allclose(lora(ids), base(ids))  # restored


# -- the reference ----------------------------------------------------------------------------------------------------------
def test_lora_mode_builds_no_second_model(tiny_checkpoint, tmp_path, monkeypatch):
    import litgpt.lora
    import litgpt.model

    built = []
    for cls in (litgpt.model.GPT, litgpt.lora.GPT):  # litgpt's LoRA GPT does not call the base __init__

        def counting(self, *args, _original=cls.__init__, **kwargs):
            built.append(type(self).__module__)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    dpo.setup(
        tiny_checkpoint,
        data=_pairs_file(tmp_path / "p.jsonl", 40),
        out_dir=tmp_path / "out",
        precision="32-true",
        train=_train_args(2),
        eval=EvalArgs(interval=1000, max_iters=1, final_validation=False),
    )
    assert built == ["litgpt.lora"]  # one model for the whole run: no frozen copy, and the final merge reuses it
    meta = json.loads((tmp_path / "out" / "dpo_metadata.json").read_text())
    assert meta["method_config"]["reference"]["kind"] == "lora_off"


def test_precomputed_reference_equals_a_frozen_copy_and_resume_reuses_it(tiny_checkpoint, tmp_path, capsys):
    data = _pairs_file(tmp_path / "p.jsonl", 48)
    common = dict(
        data=data,
        mode="full",
        precision="32-true",
        eval=EvalArgs(interval=1000, max_iters=2, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
    )
    dpo.setup(tiny_checkpoint, out_dir=tmp_path / "live", train=_train_args(6, 4), reference="live", **common)
    dpo.setup(
        tiny_checkpoint,
        out_dir=tmp_path / "pre",
        train=_train_args(6, 4, save_interval=3),
        reference="precompute",
        **common,
    )
    live = {r["step"]: r["loss"] for r in _metrics(tmp_path / "live") if "loss" in r}
    pre = {r["step"]: r["loss"] for r in _metrics(tmp_path / "pre") if "loss" in r}
    assert live.keys() == pre.keys() and all(abs(live[s] - pre[s]) < 1e-6 for s in live)
    stored = list((tmp_path / "pre" / "reference_logps").glob("*.pt"))
    assert len(stored) == 1
    mtime = stored[0].stat().st_mtime_ns
    assert "computed once" in capsys.readouterr().out

    # resume from step 3: the stored reference is reused (never recomputed) and steps 4-6 are reproduced
    dpo.setup(
        tiny_checkpoint,
        out_dir=tmp_path / "pre",
        train=_train_args(6, 4, save_interval=3),
        reference="precompute",
        resume=tmp_path / "pre" / "step-000003",
        **common,
    )
    assert "reusing" in capsys.readouterr().out and stored[0].stat().st_mtime_ns == mtime
    resumed = {r["step"]: r["loss"] for r in _metrics(tmp_path / "pre") if "loss" in r}
    assert all(abs(resumed[s] - live[s]) < 1e-5 for s in (4, 5, 6))


# -- learning, and the checkpoint users take further ------------------------------------------------------------------------
def test_dpo_teaches_the_preferred_answer(tiny_checkpoint, tmp_path):
    """An SFT student that learned a noisy teacher (each town's decoy 60% of the time, so greedy answers the decoy)
    is corrected by DPO on (right, decoy) pairs: val reward accuracy reaches 1 and greedy answers follow the rule."""
    import random

    from litgpt_ext.generate.command import generate_batch

    rng = random.Random(1)
    noisy = [
        {"instruction": f"What does {t} sell?", "output": f" {DECOY[t] if rng.random() < 0.6 else RIGHT[t]}"}
        for t in (rng.choice(TOWNS) for _ in range(400))
    ]
    (tmp_path / "sft.json").write_text(json.dumps(noisy))
    from litgpt_ext.data.sft import SFTData

    sft.setup(
        tiny_checkpoint,
        data=SFTData(path=tmp_path / "sft.json", prompt_style="default"),
        out_dir=tmp_path / "sft",
        mode="full",
        precision="32-true",
        train=_train_args(60, 16),
        eval=EvalArgs(interval=1000, max_iters=1, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3, "weight_decay": 0.0}},
    )
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": t, "prompt": f"What does {t} sell?"}) + "\n" for t in TOWNS))

    def greedy_right(checkpoint, name):
        generate_batch(
            checkpoint, input=questions, output=tmp_path / name, temperature=0, max_new_tokens=6, precision="32-true"
        )
        rows = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        return sum(r["generations"][0].strip() == RIGHT[r["id"]] for r in rows)

    before = greedy_right(tmp_path / "sft" / "final", "before.jsonl")
    dpo.setup(
        tmp_path / "sft" / "final",
        data=_pairs_file(tmp_path / "pairs.jsonl"),
        out_dir=tmp_path / "dpo",
        rpo_alpha=1.0,
        lora_r=16,
        lora_mlp=True,
        lora_projection=True,
        lora_head=True,
        precision="32-true",
        train=_train_args(40),
        eval=EvalArgs(interval=10, max_iters=10, initial_validation=True),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 5e-3, "weight_decay": 0.0}},
    )
    val = [r for r in _metrics(tmp_path / "dpo") if "val_rewards/accuracies" in r]
    assert val[0]["step"] == 0 and val[0]["val_rewards/accuracies"] < 0.5  # policy == reference: no reward yet
    assert val[-1]["val_rewards/accuracies"] >= 0.9
    after = greedy_right(tmp_path / "dpo" / "final", "after.jsonl")
    assert before <= 4 and after >= 7, (before, after)
    for png in ("loss.png", "rewards.png", "margins.png", "accuracy.png"):
        assert (tmp_path / "dpo" / png).stat().st_size > 1000


def test_orpo_learns_and_reports_trl_metrics(tiny_checkpoint, tmp_path):
    orpo.setup(
        tiny_checkpoint,
        data=_pairs_file(tmp_path / "p.jsonl"),
        out_dir=tmp_path / "orpo",
        beta=0.5,
        lora_r=16,
        lora_mlp=True,
        lora_head=True,
        precision="32-true",
        prompt_style="default",
        train=_train_args(60),
        eval=EvalArgs(interval=1000, max_iters=10),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 5e-3, "weight_decay": 0.0}},
    )
    rows = _metrics(tmp_path / "orpo")
    train = [r for r in rows if "loss" in r]
    assert sum(r["loss"] for r in train[-3:]) < 0.7 * sum(r["loss"] for r in train[:3])
    final = rows[-1]
    assert final["val_rewards/accuracies"] >= 0.9
    assert {"val_log_odds_ratio", "val_log_odds_chosen", "val_nll_loss", "val_logits/chosen"} <= final.keys()
    meta = json.loads((tmp_path / "orpo" / "orpo_metadata.json").read_text())
    assert meta["method_config"] == {"beta": 0.5, "nll_on": "prompt_and_response", "reference": None}
    assert meta["final_val_metrics"]["val_rewards/accuracies"] == final["val_rewards/accuracies"]
    assert math.isfinite(meta["wall_seconds"])


def test_cli_csv_run_gives_a_checkpoint_litgpt_export_and_generate_take(tiny_checkpoint, tmp_path):
    """The way users arrive: the CLI with renamed CSV columns; then export_hf (full and PEFT) and generate_batch."""
    import csv

    from litgpt_ext.export.command import export_hf
    from litgpt_ext.generate.command import generate_batch

    with open(tmp_path / "graded.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "good", "bad"])
        for i in range(24):
            town = TOWNS[i % 8]
            writer.writerow([f"What does {town} sell?\n(be short)", f" {RIGHT[town]}", f" {DECOY[town]}"])
    result = run_cli(
        "finetune_dpo",
        tiny_checkpoint,
        "--data",
        "PreferenceData",
        "--data.path",
        tmp_path / "graded.csv",
        "--data.prompt_column",
        "question",
        "--data.chosen_column",
        "good",
        "--data.rejected_column",
        "bad",
        "--data.val_split_fraction",
        "0.2",
        "--out_dir",
        tmp_path / "out",
        "--precision",
        "32-true",
        "--train.max_steps",
        "3",
        "--train.epochs",
        "null",
        "--train.micro_batch_size",
        "4",
        "--train.global_batch_size",
        "8",
        "--eval.interval",
        "2",
        "--checkpoint.monitor",
        "val_rewards/accuracies",
        "--checkpoint.mode",
        "max",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = tmp_path / "out" / "final"
    assert (final / "lit_model.pth.lora").is_file() and (final / "lit_model.pth").is_file()
    assert "val_rewards/accuracies" in json.loads((tmp_path / "out" / "best" / "best.json").read_text())
    # the in-process merge writes exactly what litgpt's merge_lora writes from the files
    import shutil

    from litgpt.scripts.merge_lora import merge_lora

    shutil.copytree(final, tmp_path / "relmerged")
    (tmp_path / "relmerged" / "lit_model.pth").unlink()
    merge_lora(tmp_path / "relmerged", pretrained_checkpoint_dir=tiny_checkpoint)
    ours, litgpts = (torch.load(d / "lit_model.pth", weights_only=True) for d in (final, tmp_path / "relmerged"))
    assert ours.keys() == litgpts.keys()
    for key, value in litgpts.items():
        assert torch.equal(ours[key], value), key
    export_hf(final, out_dir=tmp_path / "hf")
    export_hf(tiny_checkpoint, out_dir=tmp_path / "hf-base")
    export_hf(final, out_dir=tmp_path / "peft", format="peft", base_model=str(tmp_path / "hf-base"))
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    (tmp_path / "q.jsonl").write_text(json.dumps({"prompt": "What does Ivel sell?"}) + "\n")
    generate_batch(
        final, input=tmp_path / "q.jsonl", output=tmp_path / "g.jsonl", max_new_tokens=4, precision="32-true"
    )
    assert json.loads((tmp_path / "g.jsonl").read_text())["finish_reasons"][0] in ("stop", "length")


@pytest.mark.parametrize(
    ("command", "config"),
    [("finetune_dpo", "dpo-lora.yaml"), ("finetune_dpo", "dpo-full.yaml"), ("finetune_orpo", "orpo-lora.yaml")],
)
def test_shipped_configs_run(tiny_checkpoint, tmp_path, command, config):
    """Each config under litgpt_ext/configs/ parses through the CLI (in-process) and trains two steps."""
    from conftest import REPO
    from litgpt_ext.cli import main

    _pairs_file(tmp_path / "pairs.jsonl", 12)
    main(
        [
            command,
            str(tiny_checkpoint),
            "--config",
            str(REPO / "litgpt_ext" / "configs" / config),
            "--data",
            str(tmp_path / "pairs.jsonl"),
            "--out_dir",
            str(tmp_path / "out"),
            "--precision",
            "32-true",
            "--prompt_style",
            "default",
            "--train.max_steps",
            "2",
            "--train.epochs",
            "null",
            "--train.global_batch_size",
            "4",
            "--train.micro_batch_size",
            "2",
            "--eval.max_iters",
            "1",
        ]
    )
    assert (tmp_path / "out" / "final" / "lit_model.pth").is_file()
    metadata = json.loads((tmp_path / "out" / f"{command.split('_')[1]}_metadata.json").read_text())
    assert metadata["method_config"]["beta"] == 0.1
