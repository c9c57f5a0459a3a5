"""The TRL side of ``make bench-dpo``: DPOTrainer / ORPOTrainer + peft LoRA on an exported model, in its own process.

Prints one JSON line: the non-padding tokens the trainer trained on (counted in ``compute_loss``, both answers of every
pair, as ours counts them) and the seconds of its training loop (first step begin -> last step end).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tests.bench.common import hf_precision


class _Clock:
    """A TrainerCallback measuring the training loop like ours: from the first step's start to the last step's end."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if clock.start is None:
                    clock.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                clock.end = time.perf_counter()

        self.start: float | None = None
        self.end: float | None = None
        self.callback = Callback()


def _counting(compute_loss, counter: list[int]):
    def counted(model, inputs, *args, **kwargs):
        for key in ("attention_mask", "chosen_attention_mask", "rejected_attention_mask"):
            if key in inputs:
                counter[0] += int(torch.as_tensor(inputs[key]).sum())
        return compute_loss(model, inputs, *args, **kwargs)

    return counted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["dpo", "orpo"], required=True)
    parser.add_argument("--model", required=True, help="exported HF model folder")
    parser.add_argument("--data", required=True, help="pairs JSONL")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--micro_batch", type=int, required=True)
    parser.add_argument("--accum", type=int, required=True)
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--lora_alpha", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or bf16-true (ours' --precision)")
    args = parser.parse_args()
    precision = hf_precision(args.precision)

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(7)
    rows = [json.loads(line) for line in open(args.data)]
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=precision["dtype"])
    peft_config = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]
    )
    common = dict(
        output_dir=args.out,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.accum,
        max_steps=args.steps,
        learning_rate=args.lr,
        beta=args.beta,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        **precision["args"],  # the precision ours runs at
        dataloader_num_workers=0,
        seed=7,
    )
    clock, counter = _Clock(), [0]
    if args.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(max_length=None, **common),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[clock.callback],
        )
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        trainer = ORPOTrainer(
            model=model,
            args=ORPOConfig(max_length=4096, remove_unused_columns=False, **common),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[clock.callback],
        )
    trainer.compute_loss = _counting(trainer.compute_loss, counter)
    trainer.train()
    print(json.dumps({"tokens": counter[0], "seconds": clock.end - clock.start, "steps": trainer.state.global_step}))


if __name__ == "__main__":
    main()
