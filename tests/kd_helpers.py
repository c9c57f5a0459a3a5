"""Shared pieces of the logit-distillation tests (the teacher/student pair and the data are fixtures in conftest): models
and batches built in-process, and finetune_kd called as a function."""

from __future__ import annotations

import json

import torch

from litgpt_ext.finetune import kd as finetune_kd
from litgpt_ext.training.args import EvalArgs, TrainArgs


def _student(ckpt, lora: bool):
    if lora:
        from litgpt.lora import GPT, Config, mark_only_lora_as_trainable

        config = Config.from_file(ckpt / "model_config.yaml", lora_r=4, lora_alpha=8, lora_query=True, lora_value=True)
        torch.manual_seed(3)  # the same LoRA weights in every call
        model = GPT(config)
        state = torch.load(ckpt / "lit_model.pth", weights_only=True)
        model.load_state_dict(state, strict=False)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
        mark_only_lora_as_trainable(model)
    else:
        from litgpt.config import Config
        from litgpt.model import GPT

        model = GPT(Config.from_file(ckpt / "model_config.yaml"))
        model.load_state_dict(torch.load(ckpt / "lit_model.pth", weights_only=True))
    return model.train()


class _Fabric:
    """What a teacher's setup reads of Fabric, for a 32-true run on the CPU."""

    device = torch.device("cpu")
    world_size, global_rank = 1, 0

    def __init__(self) -> None:
        from types import SimpleNamespace

        from lightning.fabric.plugins import Precision

        self.strategy = SimpleNamespace(precision=Precision())

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()

    def init_module(self, empty_init=False):
        import contextlib

        return contextlib.nullcontext()

    def print(self, *args):
        pass


def _batch(ckpt):
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.batches import pad_collate
    from litgpt_ext.data.encode import encode_prompt_response

    tok = Tokenizer(ckpt)
    pairs = [("Question: What does Ivel sell?\nAnswer:", " salt and glass"), ("Question: Who?\nAnswer:", " Ann")]
    samples = []
    for prompt, answer in pairs:
        enc = encode_prompt_response(tok.encode(prompt).tolist(), tok.encode(answer, bos=False).tolist(), tok.eos_id)
        samples.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return pad_collate(samples)


def _train(pair_dirs, data, out, steps=2, **kw):
    teacher_dir, student_dir = pair_dirs
    args = dict(
        data=data,
        out_dir=out,
        mode="full",
        precision="32-true",
        train=TrainArgs(max_steps=steps, epochs=None, global_batch_size=4, micro_batch_size=4, save_interval=None,
                        lr_warmup_steps=0, log_interval=1),
        eval=EvalArgs(interval=1000, max_iters=2, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2}},
    )  # fmt: skip
    if "teacher_logprobs" not in kw:
        args["teacher"] = teacher_dir
    finetune_kd.setup(student_dir, **{**args, **kw})
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
