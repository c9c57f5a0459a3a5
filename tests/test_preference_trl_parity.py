"""finetune_dpo / finetune_orpo give TRL's numbers: same weights (exported with export_hf), same pairs, first step.

Our side runs the real command (one step at learning rate 0) and reads step 1 of metrics.jsonl; TRL's side is
``DPOTrainer`` / ``ORPOTrainer`` computing the loss and metrics of the same batch (the whole data is one batch, so
the order inside it does not matter: every number is a mean over the pairs).
"""

from __future__ import annotations

import json

import pytest
import torch

from litgpt_ext.export.command import export_hf
from litgpt_ext.finetune import dpo, orpo
from litgpt_ext.training.args import EvalArgs, TrainArgs

TOL = 1e-5
DPO_KEYS = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
]
ORPO_KEYS = DPO_KEYS + ["nll_loss", "log_odds_ratio", "log_odds_chosen"]


@pytest.fixture(scope="module")
def models(tiny_factory, tmp_path_factory):
    """A policy and a different reference (same tokenizer), each as a litgpt checkpoint and its HF export."""
    out = tmp_path_factory.mktemp("parity")
    policy, ref = tiny_factory(n_embd=64, seed=42), tiny_factory(n_embd=64, seed=7)
    export_hf(policy, out_dir=out / "hf-policy")
    export_hf(ref, out_dir=out / "hf-ref")
    return {"policy": policy, "ref": ref, "hf_policy": out / "hf-policy", "hf_ref": out / "hf-ref"}


def _pairs(tokenizer_dir, equal_lengths: bool) -> list[dict]:
    """Four pairs. ``equal_lengths``: every prompt and every answer has the same token count, so no row of the
    batch is padded (TRL's ORPO ``logits/*`` average over padding positions too)."""
    from litgpt.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_dir)
    towns = ["Ivel", "Orra", "Bask", "Tume", "Lira", "Marn", "Sobe", "Kest", "Vand", "Pell", "Ruse", "Amber"]
    goods = ["salt", "glass", "wool", "iron", "fish", "bread", "rope", "wine", "silk", "tin", "clay", "oil"]
    if not equal_lengths:
        return [
            {"prompt": f"What does {t} sell?", "chosen": f" {g} and more {g}", "rejected": f" {b}"}
            for t, g, b in zip(towns[:4], goods[:4], goods[4:8])
        ]

    def groups(texts):
        by_len: dict[int, list[str]] = {}
        for text in texts:
            by_len.setdefault(len(tok.encode(text, bos=False)), []).append(text)
        return max(by_len.values(), key=len)

    prompts = groups([f"What does {t} sell?" for t in towns])[:4]
    words = goods + ["tea", "corn", "hay", "lamps", "boats", "nets", "dye", "coal", "wax", "beer", "ink", "jam"]
    answers = groups([f" {g}" for g in words])[:8]
    assert len(prompts) == 4 and len(answers) == 8, (prompts, answers)
    return [{"prompt": p, "chosen": answers[i], "rejected": answers[i + 4]} for i, p in enumerate(prompts)]


def _write(tmp_path, pairs) -> object:
    data = tmp_path / "pairs"
    data.mkdir()
    for split in ("train", "val"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return data


def _ours(command, ckpt, data, out, **kw) -> dict:
    command.setup(
        ckpt,
        data=data,
        out_dir=out,
        mode="full",
        prompt_style="default",
        precision="32-true",
        train=TrainArgs(
            max_steps=1,
            epochs=None,
            global_batch_size=4,
            micro_batch_size=4,
            lr_warmup_steps=0,
            save_interval=None,
            log_interval=1,
        ),
        eval=EvalArgs(interval=1000, max_iters=1, final_validation=False),
        optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.0}},
        **kw,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r["step"] == 1 and "loss" in r)


def _trl_dataset(pairs):
    from datasets import Dataset

    return Dataset.from_list(pairs)


def _trl_dpo(models, pairs, tmp_path, **config) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(models["hf_policy"])
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        max_length=None,
        report_to=[],
        use_cpu=True,
        bf16=False,  # transformers defaults to bf16 autocast where supported (the CPU too): compare in fp32
        save_strategy="no",
        **config,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(models["hf_policy"], dtype=torch.float32),
        ref_model=AutoModelForCausalLM.from_pretrained(models["hf_ref"], dtype=torch.float32),
        args=args,
        train_dataset=_trl_dataset(pairs),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    return {"loss": loss.item(), **{k: v[-1] for k, v in trainer._metrics["train"].items()}}


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({"loss_type": "sigmoid", "beta": 0.1}, {"loss_type": ["sigmoid"], "beta": 0.1}),
        ({"loss_type": "ipo", "beta": 0.5}, {"loss_type": ["ipo"], "beta": 0.5}),
        ({"loss_type": "hinge", "beta": 0.3}, {"loss_type": ["hinge"], "beta": 0.3}),
        # RPO: TRL writes it as the sum of the sigmoid loss and its "sft" loss (NLL on the chosen answers).
        (
            {"loss_type": "sigmoid", "beta": 0.1, "rpo_alpha": 0.7},
            {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.7], "beta": 0.1},
        ),
    ],
    ids=["sigmoid", "ipo", "hinge", "rpo"],
)
def test_dpo_first_step_equals_trl(models, tmp_path, ours, theirs):
    pairs = _pairs(models["policy"], equal_lengths=False)
    mine = _ours(
        dpo,
        models["policy"],
        _write(tmp_path, pairs),
        tmp_path / "out",
        reference="live",
        ref_checkpoint_dir=models["ref"],
        **ours,
    )
    trl = _trl_dpo(models, pairs, tmp_path, **theirs)
    assert abs(mine["loss"] - trl["loss"]) < TOL, (mine["loss"], trl["loss"])
    for key in DPO_KEYS:
        assert abs(mine[key] - trl[key]) < TOL, (key, mine[key], trl[key])
    assert 0 < mine["rewards/accuracies"] < 1  # the reference differs: the numbers are not trivially zero


def test_orpo_first_step_equals_trl(models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    pairs = _pairs(models["policy"], equal_lengths=True)
    mine = _ours(orpo, models["policy"], _write(tmp_path, pairs), tmp_path / "out", beta=0.25)
    args = ORPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        beta=0.25,
        max_length=512,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        remove_unused_columns=False,
    )
    trainer = ORPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(models["hf_policy"], dtype=torch.float32),
        args=args,
        train_dataset=_trl_dataset(pairs),
        processing_class=AutoTokenizer.from_pretrained(models["hf_policy"]),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch, "train")
    assert abs(mine["loss"] - loss.item()) < TOL, (mine["loss"], loss.item())
    for key in ORPO_KEYS:
        assert abs(mine[key] - metrics[key]) < TOL, (key, mine[key], metrics[key])
