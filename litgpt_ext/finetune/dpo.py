"""``litgpt-ext finetune_dpo``: Direct Preference Optimization (LoRA or full) on the one training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.args import LogArgs
from litgpt.data import DataModule
from litgpt.types import LoggerChoice

from litgpt_ext.checks import above, at_least, check_checkpoint_dir, within
from litgpt_ext.errors import UserError
from litgpt_ext.finetune.common import (
    Quantize,
    Strategy,
    model_spec,
    preference_data,
    run,
    with_max_length,
)
from litgpt_ext.hparams import hyperparameters
from litgpt_ext.training.args import CheckpointArgs, EvalArgs, TrainArgs
from litgpt_ext.training.objectives.dpo import DPOObjective, LossType
from litgpt_ext.training.reference import Reference


def reference_kind(reference: str, mode: str, ref_checkpoint_dir: Path | None) -> str:
    """``auto``: LoRA off in LoRA runs, a held model when --ref_checkpoint_dir is given, else precomputed."""
    if reference == "auto":
        if ref_checkpoint_dir is not None:
            return "live"
        return "lora_off" if mode == "lora" else "precompute"
    if reference == "lora_off" and (mode != "lora" or ref_checkpoint_dir is not None):
        raise UserError("lora_off needs --mode lora and no --ref_checkpoint_dir", field="reference")
    return reference


def setup(
    checkpoint_dir: Path,
    data: DataModule | Path | None = None,
    out_dir: Path = Path("out/finetune/dpo"),
    mode: Literal["lora", "full"] = "lora",
    loss_type: LossType = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    rpo_alpha: float = 0.0,
    reference: Literal["auto", "lora_off", "precompute", "live"] = "auto",
    ref_checkpoint_dir: Path | None = None,
    prompt_style: str | None = None,
    max_prompt_length: int | None = None,
    max_length: int | None = None,
    precision: str | None = None,
    quantize: Quantize | None = None,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: Strategy = "auto",
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
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
        micro_batch_size=2,
        lr_warmup_steps=10,
        epochs=1,
        max_seq_length=None,
    ),
    eval: EvalArgs = EvalArgs(interval=100, max_new_tokens=100, max_iters=100),
    checkpoint: CheckpointArgs = CheckpointArgs(),
    optimizer: str | dict = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-6, "weight_decay": 0.0}},  # noqa: B006 (shown in --help; never mutated)
    logger_name: LoggerChoice = "csv",
    log: LogArgs = LogArgs(),
    seed: int = 1337,
    resume: bool | Literal["auto"] | Path = False,
) -> None:
    """Align a model with chosen/rejected pairs by Direct Preference Optimization (LoRA or full weights).

    One forward per micro-batch over both answers of every pair; the LM head runs on answer tokens only. Metrics use
    TRL's names (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/*, logits/*, nll_loss).

    Arguments:
        checkpoint_dir: The starting model's litgpt checkpoint directory (usually the SFT student's ``final/``).
        data: Pairs: a .json/.jsonl/.csv file or directory of ``{"prompt", "chosen", "rejected"}`` rows, or
            ``PreferenceData`` with its options (``--data.prompt_column question``, ``--data.val_split_fraction``).
        out_dir: Directory for checkpoints, metrics.jsonl, the plots and dpo_metadata.json.
        mode: ``lora`` (litgpt LoRA; the reference is the same model with LoRA off) or ``full``.
        loss_type: ``sigmoid`` (DPO), ``ipo`` (IPO, log-ratios averaged per token) or ``hinge`` (SLiC).
        beta: DPO's beta: how far the policy may move from the reference (for IPO, its tau).
        label_smoothing: Conservative DPO: the assumed probability that a pair's preference is flipped (sigmoid).
        rpo_alpha: Weight of the chosen answers' NLL added to the loss (RPO); 0 disables it.
        reference: Where the reference log-probs come from: ``auto`` (LoRA off for LoRA runs, ``live`` when
            --ref_checkpoint_dir is set, else ``precompute``), ``lora_off``, ``precompute`` (one pass over the data
            before training, stored in out_dir/reference_logps/ and reused by --resume) or ``live`` (a frozen model
            held in memory and run every step).
        ref_checkpoint_dir: A different reference model (default: the starting checkpoint).
        prompt_style: Prompt style for the pairs' prompts: a litgpt style name, ``chat_template`` or ``default`` for
            the raw text; ``auto``: the checkpoint's prompt_style.yaml, else its chat template, else litgpt's style for
            its name (printed with the reason).
        max_prompt_length: Keep at most this many prompt tokens (BOS and the prompt's end are kept).
        max_length: Cut each prompt + answer to this many tokens (answers are cut; pairs whose prompt alone is this
            long are dropped).
        precision: "bf16-true", "bf16-mixed", "32-true", ... (default: litgpt's choice on a GPU; on a CPU bf16-mixed
            only where the CPU does bf16 natively and the model is at least 512 wide, else 32-true).
        quantize: QLoRA: store the frozen base weights quantized with bitsandbytes (``bnb.nf4``, ``bnb.nf4-dq``,
            ``bnb.fp4``, ``bnb.fp4-dq``, ``bnb.int8-training``), as litgpt's finetune_lora; LoRA runs on one CUDA GPU.
        devices: How many devices/GPUs to use per node.
        num_nodes: How many nodes.
        strategy: ``auto`` (DDP when more than one device), ``ddp`` or ``fsdp``.
        lora_r: The LoRA rank.
        lora_alpha: The LoRA alpha.
        lora_dropout: The LoRA dropout (default 0: dropout would make the policy's log-probs noisy against the
            reference's, which is why TRL disables dropout for DPO).
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
        train: Training arguments (litgpt's ``TrainArgs``; micro_batch_size counts pairs).
        eval: Evaluation arguments (val metrics every ``interval`` steps; ``generate_samples`` greedy answers).
        checkpoint: Which extra checkpoints to keep; ``--checkpoint.monitor`` takes any val metric, e.g.
            ``val_rewards/accuracies`` with ``--checkpoint.mode max``.
        optimizer: An optimizer name (such as "AdamW") or config (``--optimizer.lr 5e-6``), as in litgpt. Default:
            AdamW at lr 1e-6 without weight decay (TRL's DPOConfig): a preference method moves a model that already
            answers well, and torch's AdamW default (1e-3) would wreck it in a few steps.
        logger_name: Where metrics go: csv, tensorboard, wandb, ... (litgpt's loggers).
        log: Logger settings, as litgpt's (``--log.project``, ``--log.run``, ``--log.group`` for wandb; the project
            names the MLflow experiment and the run its run).
        seed: Random seed (new parameters, data order).
        resume: ``auto`` (newest step-* in out_dir, if any), ``true`` (must exist), or a step-* directory.
    """
    hparams = hyperparameters(setup, locals())
    spec = model_spec(checkpoint_dir, mode, locals())
    above("beta", beta, 0)
    within("label_smoothing", label_smoothing, 0.0, 0.5)
    at_least("rpo_alpha", rpo_alpha, 0.0)
    at_least("max_prompt_length", max_prompt_length, 1)
    at_least("max_length", max_length, 2)
    check_checkpoint_dir(spec.checkpoint_dir)
    if ref_checkpoint_dir is not None:
        check_checkpoint_dir(Path(ref_checkpoint_dir))
    kind = reference_kind(reference, mode, ref_checkpoint_dir)
    ref = Reference(kind, spec.checkpoint_dir, Path(ref_checkpoint_dir) if ref_checkpoint_dir else None)

    def make_objective(tokenizer, train_args: TrainArgs) -> DPOObjective:
        return DPOObjective(ref, beta, loss_type, label_smoothing, rpo_alpha)

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
        train=with_max_length(train, max_length),
        eval=eval,
        checkpoint=checkpoint,
        optimizer=optimizer,
        logger_name=logger_name,
        log=log,
        quantize=quantize,
        seed=seed,
        resume=resume,
        **preference_data(spec.checkpoint_dir, prompt_style, max_prompt_length),
    )


setup.default_data = "PreferenceData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
