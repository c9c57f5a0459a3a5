"""``litgpt-ext finetune_prm``: a process reward model (a score per step) on the one loop, with the ORM's heads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.args import LogArgs
from litgpt.data import DataModule
from litgpt.types import LoggerChoice

from litgpt_ext.checks import check_checkpoint_dir
from litgpt_ext.errors import UserError
from litgpt_ext.finetune.common import Quantize, Strategy, model_spec, run
from litgpt_ext.finetune.orm import answer_token_ids
from litgpt_ext.hparams import hyperparameters
from litgpt_ext.training.args import CheckpointArgs, EvalArgs, TrainArgs
from litgpt_ext.training.objectives.orm import Head
from litgpt_ext.training.objectives.prm import PRMObjective


def unescape(text: str) -> str:
    r"""``\n``, ``\t``, ``\r`` and ``\\`` typed on a command line become the characters they name (a shell passes
    ``--step_separator '\n'`` as a backslash and an n, which would otherwise join steps with that text)."""
    out, i = [], 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in ("\\n", "\\t", "\\r", "\\\\"):
            out.append({"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def setup(
    checkpoint_dir: Path,
    data: DataModule | Path | None = None,
    out_dir: Path = Path("out/finetune/prm"),
    head: Head = "classifier",
    pos_weight: float | Literal["auto"] = 1.0,
    step_separator: str = "\n",
    yes_token: str = " Yes",
    no_token: str = " No",
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
        micro_batch_size=4,
        lr_warmup_steps=10,
        epochs=1,
        max_seq_length=None,
    ),
    eval: EvalArgs = EvalArgs(interval=100, max_new_tokens=0, max_iters=100),
    checkpoint: CheckpointArgs = CheckpointArgs(),
    optimizer: str | dict = "AdamW",
    logger_name: LoggerChoice = "csv",
    log: LogArgs = LogArgs(),
    seed: int = 1337,
    resume: bool | Literal["auto"] | Path = False,
) -> None:
    """Train a process reward model: a score in [0, 1] for every step of a candidate (is it still right here?).

    Rows: TRL's stepwise supervision format, ``{"prompt", "completions": [step, ...], "labels": [bool, ...],
    "question_id"?}`` as JSON/JSONL (``distill_sql_label --target prm`` writes them; ``--data PrmData
    --data.soft_labels true`` for Monte-Carlo fractions). The heads are finetune_orm's, applied at the last token of
    every step. Validation reports val_step_accuracy, val_step_auroc, val_first_error_accuracy (the predicted first
    wrong step is the labelled one; all-correct counts as "none") and val_outcome_auroc (of each candidate's min
    step score), with ROC and score-histogram PNGs of the step scores under out_dir/eval/; the best checkpoint is
    kept by val_step_auroc.

    Arguments:
        checkpoint_dir: The starting model's litgpt checkpoint directory (usually the SFT student's ``final/``).
        data: Stepwise rows: a .json/.jsonl file or directory, or ``PrmData`` with its options.
        out_dir: Directory for checkpoints (with ``orm_head.pth`` + ``orm_config.json``), metrics and plots.
        head: ``yes_token`` (the LM's own " Yes"/" No" logits at each step end), ``classifier`` (a new 2-class
            linear head) or ``scalar`` (a new 1-output head, BCE).
        pos_weight: Weight of positive steps in the loss, or ``auto`` (negative steps / positive steps).
        step_separator: Text between two steps, tokenized on its own (not after the last step); the scores are read
            at the last token of each step. ``\\n``, ``\\t`` typed on the command line mean newline and tab.
        yes_token: The positive answer for the yes_token head; must be one token of the student's tokenizer.
        no_token: The negative answer for the yes_token head; must be one token too.
        mode: ``lora`` (LoRA adapters; the new head trains fully) or ``full``.
        precision: "bf16-true", "bf16-mixed", "32-true", ... (default: litgpt's choice on a GPU; on a CPU bf16-mixed
            only where the CPU does bf16 natively and the model is at least 512 wide, else 32-true).
        quantize: QLoRA: store the frozen base weights quantized with bitsandbytes (``bnb.nf4``, ``bnb.nf4-dq``,
            ``bnb.fp4``, ``bnb.fp4-dq``, ``bnb.int8-training``), as litgpt's finetune_lora; LoRA runs on one CUDA GPU.
        devices: How many devices/GPUs to use per node.
        num_nodes: How many nodes.
        strategy: ``auto`` (DDP when more than one device), ``ddp`` or ``fsdp``.
        lora_r: The LoRA rank.
        lora_alpha: The LoRA alpha.
        lora_dropout: The LoRA dropout.
        lora_query: Apply LoRA to the query weights in attention.
        lora_key: Apply LoRA to the key weights in attention.
        lora_value: Apply LoRA to the value weights in attention.
        lora_projection: Apply LoRA to the attention output projection.
        lora_mlp: Apply LoRA to the MLP weights.
        lora_head: Apply LoRA to the LM head (only the yes_token head uses it).
        freeze_emb: (full mode) Freeze token embeddings.
        freeze_ln: (full mode) Freeze every normalization layer.
        freeze_attn: (full mode) Freeze attention projections.
        freeze_ff: (full mode) Freeze MLP weights.
        freeze_other: (full mode) Freeze everything else (the LM head; never the new reward head).
        layers_not_to_freeze: (full mode) Block indices that stay fully trainable despite the freeze flags.
        train: Training arguments (litgpt's ``TrainArgs``; ``max_seq_length`` cuts the prompt's start, then the last steps).
        eval: Evaluation arguments (``interval``, ``max_iters``, ``initial_validation``).
        checkpoint: Which extra checkpoints to keep; ``--checkpoint.monitor`` defaults to val_step_auroc (mode max).
        optimizer: An optimizer name (such as "AdamW") or config (``--optimizer.lr 1e-4``), as in litgpt.
        logger_name: Where metrics go: csv, tensorboard, wandb, ... (litgpt's loggers).
        log: Logger settings, as litgpt's (``--log.project``, ``--log.run``, ``--log.group`` for wandb; the project
            names the MLflow experiment and the run its run).
        seed: Random seed (new parameters, data order).
        resume: ``auto`` (newest step-* in out_dir, if any), ``true`` (must exist), or a step-* directory.
    """
    hparams = hyperparameters(setup, locals())
    spec = model_spec(checkpoint_dir, mode, locals())
    check_checkpoint_dir(spec.checkpoint_dir)
    if pos_weight != "auto" and float(pos_weight) <= 0:
        raise UserError(f"must be > 0 or auto, got {pos_weight}", field="pos_weight")
    step_separator = unescape(step_separator)
    if not step_separator:
        raise UserError("must not be empty (steps would run together)", field="step_separator")
    from litgpt_ext.data.prm import PrmData

    def make_objective(tokenizer, train_args: TrainArgs) -> PRMObjective:
        yes_id, no_id = answer_token_ids(tokenizer, yes_token, no_token) if head == "yes_token" else (None, None)
        return PRMObjective(head, pos_weight, yes_id, no_id, step_separator)

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
        data_class=PrmData,
        connect={"step_separator": step_separator},
    )


setup.default_data = "PrmData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
