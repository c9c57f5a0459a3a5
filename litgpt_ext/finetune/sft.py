"""``litgpt-ext finetune_sft``: supervised finetuning (LoRA or full, with layer freezing) on the one training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.args import LogArgs
from litgpt.data import DataModule
from litgpt.types import LoggerChoice

from litgpt_ext.finetune.common import Quantize, Strategy, model_spec, run
from litgpt_ext.hparams import hyperparameters
from litgpt_ext.training.args import CheckpointArgs, EvalArgs, TrainArgs
from litgpt_ext.training.objectives.sft import SFTObjective


def setup(
    checkpoint_dir: Path,
    data: DataModule | Path | None = None,
    out_dir: Path = Path("out/finetune/sft"),
    mode: Literal["lora", "full"] = "lora",
    precision: str | None = None,
    quantize: Quantize | None = None,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: Strategy = "auto",
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    lora_query: bool = True,
    lora_key: bool = False,
    lora_value: bool = True,
    lora_projection: bool = False,
    lora_mlp: bool = False,
    lora_head: bool = False,
    freeze_emb: bool = False,
    freeze_ln: bool = False,
    freeze_attn: bool = False,
    freeze_ff: bool = False,
    freeze_other: bool = False,
    layers_not_to_freeze: list[int] | None = None,
    train: TrainArgs = TrainArgs(
        save_interval=1000,
        log_interval=1,
        global_batch_size=16,
        micro_batch_size=1,
        lr_warmup_steps=100,
        epochs=5,
        max_seq_length=None,
    ),
    eval: EvalArgs = EvalArgs(interval=100, max_new_tokens=100, max_iters=100),
    checkpoint: CheckpointArgs = CheckpointArgs(),
    optimizer: str | dict = "AdamW",
    logger_name: LoggerChoice = "csv",
    log: LogArgs = LogArgs(),
    seed: int = 1337,
    resume: bool | Literal["auto"] | Path = False,
) -> None:
    """Supervised finetuning with LoRA or full weights (optionally freezing parameter groups) on one Fabric loop.

    Loss is next-token cross-entropy on answer tokens only; prompt and padding positions are ignored.

    Arguments:
        checkpoint_dir: The base model's litgpt checkpoint directory.
        data: A path (litgpt JSON/JSONL file, Q/A JSON file, or a directory with train.json+val.json or
            train.pt+val.pt) or a DataModule (``SFTData``, or litgpt's ``JSON``, ``Alpaca``, ...).
        out_dir: Directory for step-*/best/final checkpoints, logs, metrics.jsonl, loss.png.
        mode: ``lora`` (litgpt LoRA; final dir holds lit_model.pth.lora and the merged lit_model.pth) or ``full``.
        precision: "bf16-true", "bf16-mixed", "32-true", ... (default: litgpt's choice on a GPU; on a CPU bf16-mixed
            only where the CPU does bf16 natively and the model is at least 512 wide, else 32-true).
        quantize: QLoRA: store the frozen base weights quantized with bitsandbytes (``bnb.nf4``, ``bnb.nf4-dq``,
            ``bnb.fp4``, ``bnb.fp4-dq``, ``bnb.int8-training``), as litgpt's finetune_lora; LoRA runs on one CUDA GPU.
        devices: How many devices/GPUs to use per node.
        num_nodes: How many nodes.
        strategy: ``auto`` (DDP when more than one device), ``ddp`` or ``fsdp``.
        lora_r: The LoRA rank.
        lora_alpha: The LoRA alpha.
        lora_dropout: The LoRA dropout value.
        lora_query: Apply LoRA to the query weights in attention.
        lora_key: Apply LoRA to the key weights in attention.
        lora_value: Apply LoRA to the value weights in attention.
        lora_projection: Apply LoRA to the attention output projection.
        lora_mlp: Apply LoRA to the MLP weights.
        lora_head: Apply LoRA to the output head.
        freeze_emb: (full mode) Freeze token embeddings.
        freeze_ln: (full mode) Freeze every normalization layer.
        freeze_attn: (full mode) Freeze attention projections.
        freeze_ff: (full mode) Freeze MLP weights.
        freeze_other: (full mode) Freeze everything else (LM head, ...).
        layers_not_to_freeze: (full mode) Block indices that stay fully trainable despite the freeze flags.
        train: Training arguments (litgpt's ``TrainArgs``: batch sizes, epochs/max_steps, warmup, min_lr, max_norm).
        eval: Evaluation arguments (litgpt's ``EvalArgs`` plus generate_samples / text_metrics).
        checkpoint: Which extra checkpoints to keep (best by a monitored metric, keep_last).
        optimizer: An optimizer name (such as "AdamW") or config (``--optimizer.lr``, ``--optimizer.weight_decay``,
            ``--optimizer.betas`` via ``{"class_path": ..., "init_args": ...}``), as in litgpt.
        logger_name: Where metrics go: csv, tensorboard, wandb, ... (litgpt's loggers).
        log: Logger settings, as litgpt's (``--log.project``, ``--log.run``, ``--log.group`` for wandb; the project
            names the MLflow experiment and the run its run).
        seed: Random seed (model init of new parameters, data order, dropout).
        resume: ``auto`` (newest step-* in out_dir, if any), ``true`` (must exist), or a step-* directory.
    """
    hparams = hyperparameters(setup, locals())
    spec = model_spec(checkpoint_dir, mode, locals())

    def make_objective(tokenizer, train_args: TrainArgs) -> SFTObjective:
        return SFTObjective(pad_id=0, max_seq_length=train_args.max_seq_length)

    run(
        make_objective,
        data,
        spec,
        out_dir,
        hparams,
        precision=precision,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        train=train,
        eval=eval,
        checkpoint=checkpoint,
        optimizer=optimizer,
        logger_name=logger_name,
        log=log,
        quantize=quantize,
        seed=seed,
        resume=resume,
    )


setup.default_data = "SFTData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
