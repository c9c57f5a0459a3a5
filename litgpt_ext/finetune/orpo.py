"""``litgpt-ext finetune_orpo``: Odds Ratio Preference Optimization (reference-free; LoRA or full) on the one loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.args import LogArgs
from litgpt.data import DataModule
from litgpt.types import LoggerChoice

from litgpt_ext.checks import above, at_least, check_checkpoint_dir
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
from litgpt_ext.training.objectives.orpo import NllOn, ORPOObjective


def setup(
    checkpoint_dir: Path,
    data: DataModule | Path | None = None,
    out_dir: Path = Path("out/finetune/orpo"),
    mode: Literal["lora", "full"] = "lora",
    beta: float = 0.1,
    nll_on: NllOn = "prompt_and_response",
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
    optimizer: str | dict = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-5, "weight_decay": 0.0}},  # noqa: B006 (shown in --help; never mutated)
    logger_name: LoggerChoice = "csv",
    log: LogArgs = LogArgs(),
    seed: int = 1337,
    resume: bool | Literal["auto"] | Path = False,
) -> None:
    """Align a model with chosen/rejected pairs by ORPO: SFT on the chosen answer plus an odds-ratio penalty on the
    rejected one, with no reference model (LoRA or full weights).

    One forward per micro-batch over both answers of every pair; the LM head runs only where a loss needs it. Metrics
    use TRL's names (rewards/*, logps/*, logits/*, nll_loss, log_odds_ratio, log_odds_chosen).

    Arguments:
        checkpoint_dir: The starting model's litgpt checkpoint directory (usually the SFT student's ``final/``).
        data: Pairs: a .json/.jsonl/.csv file or directory of ``{"prompt", "chosen", "rejected"}`` rows, or
            ``PreferenceData`` with its options (``--data.prompt_column question``, ``--data.val_split_fraction``).
        out_dir: Directory for checkpoints, metrics.jsonl, the plots and orpo_metadata.json.
        mode: ``lora`` (litgpt LoRA) or ``full``.
        beta: Weight of the odds-ratio term (ORPO's lambda).
        nll_on: Tokens of the chosen sequence the NLL term covers: ``prompt_and_response`` (TRL's ORPOTrainer, the
            default, so numbers compare with TRL runs) or ``response`` (the paper's formula).
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
        lora_dropout: The LoRA dropout (default 0, as TRL disables dropout for preference training).
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
            AdamW at lr 1e-5 without weight decay (ORPO also does the SFT part, so it starts above DPO's 1e-6;
            torch's AdamW default, 1e-3, would wreck the model).
        logger_name: Where metrics go: csv, tensorboard, wandb, ... (litgpt's loggers).
        log: Logger settings, as litgpt's (``--log.project``, ``--log.run``, ``--log.group`` for wandb; the project
            names the MLflow experiment and the run its run).
        seed: Random seed (new parameters, data order).
        resume: ``auto`` (newest step-* in out_dir, if any), ``true`` (must exist), or a step-* directory.
    """
    hparams = hyperparameters(setup, locals())
    spec = model_spec(checkpoint_dir, mode, locals())
    above("beta", beta, 0)
    at_least("max_prompt_length", max_prompt_length, 1)
    at_least("max_length", max_length, 2)
    check_checkpoint_dir(spec.checkpoint_dir)

    def make_objective(tokenizer, train_args: TrainArgs) -> ORPOObjective:
        return ORPOObjective(beta, nll_on)

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
