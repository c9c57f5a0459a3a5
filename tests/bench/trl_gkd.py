"""The TRL side of ``make bench-kd``: GKDTrainer — ``lmbda=0`` (off-policy, on the data's answers) or ``lmbda=1``
(on-policy: transformers ``generate`` on the student inside every training step) — on exported student and teacher
models, in its own process, with peft LoRA or full weights.

The samples are tokenized as ours are (litgpt JSON through the raw prompt style: prompt ids, answer ids + EOS, labels
-100 on the prompt), handed over already tokenized with a padding collator, so both trainers see the same tokens.
Prints one JSON line: the non-padding tokens trained on (counted in ``compute_loss``) and the seconds of the
training loop (first step begin -> last step end), and on-policy the length of every generated completion.
"""

from __future__ import annotations

import argparse
import json

import torch

from tests.bench.common import hf_precision
from tests.bench.trl_preference import _Clock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--student", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--samples", required=True, help="a .pt list of {input_ids, labels}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--micro_batch", type=int, required=True)
    parser.add_argument("--accum", type=int, required=True)
    parser.add_argument("--lora_r", type=int, default=0, help="0: full finetuning")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--lmbda", type=float, default=0.0)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.9, help="GKD's: sampling and the loss alike")
    parser.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or bf16-true (ours' --precision)")
    args = parser.parse_args()
    precision = hf_precision(args.precision)

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    torch.manual_seed(7)
    samples = torch.load(args.samples, weights_only=True)
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    counter = [0]

    def collate(rows):
        ids = [torch.tensor(r["input_ids"]) for r in rows]
        labels = [torch.tensor(r["labels"]) for r in rows]
        input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(i) for i in ids], batch_first=True)
        prompts = [i[: int((lab != -100).nonzero()[0])] for i, lab in zip(ids, labels)]
        width = max(len(p) for p in prompts)
        prompt_ids = torch.stack([torch.cat([p.new_full((width - len(p),), pad), p]) for p in prompts])  # left pad
        prompt_mask = torch.stack(
            [torch.cat([torch.zeros(width - len(p)), torch.ones(len(p))]).long() for p in prompts]
        )
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100),
            "prompts": prompt_ids,
            "prompt_attention_mask": prompt_mask,
        }

    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=precision["dtype"])
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=precision["dtype"])
    peft_config = (
        LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        if args.lora_r
        else None
    )
    config = GKDConfig(
        output_dir=args.out,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.accum,
        max_steps=args.steps,
        learning_rate=args.lr,
        lmbda=args.lmbda,
        beta=args.beta,
        seq_kd=False,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        **precision["args"],  # the precision ours runs at
        dataloader_num_workers=0,
        seed=7,
    )
    clock = _Clock()
    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        data_collator=collate,
        train_dataset=Dataset.from_list(samples),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[clock.callback],
    )
    compute_loss = trainer.compute_loss

    def counted(model, inputs, *a, **kw):
        counter[0] += int(inputs["attention_mask"].sum())
        return compute_loss(model, inputs, *a, **kw)

    trainer.compute_loss = counted
    generate, lengths = trainer.generate_on_policy_outputs, []

    def measured(model, inputs, generation_config):
        out = generate(model, inputs, generation_config)
        lengths.extend((out[2] != -100).sum(1).tolist())  # completion tokens (EOS included when sampled)
        return out

    trainer.generate_on_policy_outputs = measured
    trainer.train()
    print(json.dumps({"tokens": counter[0], "seconds": clock.end - clock.start, "steps": trainer.state.global_step,
                      "generated_lengths": lengths}))  # fmt: skip


if __name__ == "__main__":
    main()
