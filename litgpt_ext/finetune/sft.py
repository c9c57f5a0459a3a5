"""``litgpt-ext finetune_sft``: supervised finetuning (LoRA or full, with layer freezing) on the one training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.data import DataModule

from litgpt_ext.finetune.flags import CommonFlags, finetune_command
from litgpt_ext.finetune.launch import run, start
from litgpt_ext.training.args import TrainArgs
from litgpt_ext.training.objectives.sft import SFTObjective


@finetune_command()
def setup(
    checkpoint_dir: Path,
    data: DataModule | Path | None = None,
    out_dir: Path = Path("out/finetune/sft"),
    mode: Literal["lora", "full"] = "lora",
    flags: CommonFlags = CommonFlags(),
) -> None:
    """Supervised finetuning with LoRA or full weights (optionally freezing parameter groups) on one Fabric loop.

    Loss is next-token cross-entropy on answer tokens only; prompt and padding positions are ignored.

    Arguments:
        checkpoint_dir: The base model's litgpt checkpoint directory.
        data: A path (litgpt JSON/JSONL file, Q/A JSON file, or a directory with train.json+val.json or
            train.pt+val.pt) or a DataModule (``SFTData``, or litgpt's ``JSON``, ``Alpaca``, ...).
        out_dir: Directory for step-*/best/final checkpoints, logs, metrics.jsonl, loss.png.
        mode: ``lora`` (litgpt LoRA; final dir holds lit_model.pth.lora and the merged lit_model.pth) or ``full``.
    """
    job = start(setup, locals())

    def make_objective(tokenizer, train_args: TrainArgs) -> SFTObjective:
        return SFTObjective(pad_id=0, max_seq_length=train_args.max_seq_length)

    run(job, make_objective)


setup.default_data = "SFTData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
