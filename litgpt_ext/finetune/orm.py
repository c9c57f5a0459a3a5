"""``litgpt-ext finetune_orm``: an outcome reward model (Yes-token, classifier or scalar head) on the one loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.args import LogArgs
from litgpt.data import DataModule
from litgpt.types import LoggerChoice

from litgpt_ext.checks import check_checkpoint_dir
from litgpt_ext.data.encode import encode_text
from litgpt_ext.errors import UserError
from litgpt_ext.finetune.common import Quantize, Strategy, model_spec, run
from litgpt_ext.hparams import hyperparameters
from litgpt_ext.training.args import CheckpointArgs, EvalArgs, TrainArgs
from litgpt_ext.training.objectives.orm import Head, Loss, ORMObjective

ANSWER_VARIANTS = (" Yes", "Yes", " yes", "yes", " YES", " No", "No", " no", "no", " NO")


def single_token(tokenizer, text: str) -> int | None:
    ids = encode_text(tokenizer, text, bos=False)
    return ids[0] if len(ids) == 1 else None


def answer_token_ids(tokenizer, yes: str, no: str) -> tuple[int, int]:
    """The ids of the yes/no answer texts, each of which must be one token of the student's tokenizer."""
    found = {}
    for flag, text in (("yes_token", yes), ("no_token", no)):
        token = single_token(tokenizer, text)
        if token is None:
            singles = [repr(v) for v in ANSWER_VARIANTS if single_token(tokenizer, v) is not None]
            hint = f"single-token alternatives: {', '.join(singles)}" if singles else "no yes/no variant is one token"
            n = len(encode_text(tokenizer, text, bos=False))
            raise UserError(f"{text!r} is {n} tokens of this tokenizer, not one ({hint})", field=flag)
        found[flag] = token
    if found["yes_token"] == found["no_token"]:
        raise UserError("the yes and no answers are the same token", field="yes_token")
    return found["yes_token"], found["no_token"]


def setup(
    checkpoint_dir: Path,
    data: DataModule | Path | None = None,
    out_dir: Path = Path("out/finetune/orm"),
    head: Head = "classifier",
    loss: Loss = "bce",
    pos_weight: float | Literal["auto"] = 1.0,
    orm_prompt: str | None = None,
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
    """Train an outcome reward model: a score in [0, 1] that a candidate (e.g. a SQL query) is correct.

    Rows: the labelled output of distill_sql_label (``question``, ``sql``, ``label``, ``question_id``) or any
    ``{"prompt", "response", "label"}`` rows, as JSON/JSONL/CSV (``--data OrmData --data.val_path ...`` for options).
    Validation reports val_accuracy, val_auroc, precision/recall/F1 at 0.5 and the mean score of positives and
    negatives over the whole validation set, with ROC and score-histogram PNGs under out_dir/eval/; the best
    checkpoint is kept by val_auroc.

    Arguments:
        checkpoint_dir: The starting model's litgpt checkpoint directory (usually the SFT student's ``final/``).
        data: Labelled rows: a .json/.jsonl/.csv file or directory, or ``OrmData`` with its options.
        out_dir: Directory for checkpoints (with ``orm_head.pth`` + ``orm_config.json``), metrics and plots.
        head: ``yes_token`` (the LM's own " Yes"/" No" logits at the answer position), ``classifier`` (a new
            2-class linear head on the last token's hidden state) or ``scalar`` (a new 1-output head).
        loss: For the scalar head: ``bce`` (pointwise) or ``pairwise`` (Bradley-Terry on positive/negative rows of
            the same question).
        pos_weight: Weight of positive rows in the loss, or ``auto`` (negatives / positives of the training rows).
        orm_prompt: Template of the scored text, with fields from the row (default: "Question: {question}\\nSQL:
            {sql}\\nIs the SQL correct?" for SQL rows, else "{prompt}\\n\\nAnswer: {response}\\n\\nIs the answer
            correct?").
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
        train: Training arguments (litgpt's ``TrainArgs``; ``max_seq_length`` cuts the start of long rows).
        eval: Evaluation arguments (``interval``, ``max_iters``, ``initial_validation``).
        checkpoint: Which extra checkpoints to keep; ``--checkpoint.monitor`` defaults to val_auroc (mode max).
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
    if loss == "pairwise" and head != "scalar":
        raise UserError("--loss pairwise needs --head scalar", field="loss")
    if pos_weight != "auto" and float(pos_weight) <= 0:
        raise UserError(f"must be > 0 or auto, got {pos_weight}", field="pos_weight")
    from litgpt_ext.data.orm import OrmData

    def make_objective(tokenizer, train_args: TrainArgs) -> ORMObjective:
        yes_id, no_id = answer_token_ids(tokenizer, yes_token, no_token) if head == "yes_token" else (None, None)
        return ORMObjective(head, loss, pos_weight, yes_id, no_id, orm_prompt)

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
        data_class=OrmData,
        connect={"orm_prompt": orm_prompt, "pairwise": loss == "pairwise"},
    )


setup.default_data = "OrmData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
