"""The flags every finetune command shares, written once.

A command is a plain function whose signature is its CLI, as in litgpt. Its own flags (the method's settings, the
``train``/``eval`` defaults it prefers) stay in its signature; the shared ones — precision and devices, LoRA, freezing,
optimizer, logger, seed, resume — live in :class:`CommonFlags`. :func:`finetune_command` gives the command's public
signature and docstring those fields as ordinary parameters (``--lora_r``, ``--freeze_ln``, ``--optimizer.lr`` as
users type them in litgpt), and calls the function with them gathered into one ``flags`` argument.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from litgpt.args import LogArgs
from litgpt.types import LoggerChoice

from litgpt_ext.flag_groups import spread_group
from litgpt_ext.hparams import hyperparameters
from litgpt_ext.training.args import CheckpointArgs, EvalArgs, TrainArgs
from litgpt_ext.training.objectives.orm import Head

Quantize = Literal["bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8-training"]
Strategy = Literal["auto", "ddp", "fsdp"]
FINETUNE_TRAIN = TrainArgs(
    save_interval=1000,
    log_interval=1,
    global_batch_size=16,
    micro_batch_size=1,
    lr_warmup_steps=100,
    epochs=5,
    max_seq_length=None,
)
"""litgpt's finetune defaults; a command changes what suits its method (``finetune_command(train={...})``)."""
FINETUNE_EVAL = EvalArgs(interval=100, max_new_tokens=100, max_iters=100)


@dataclasses.dataclass
class CommonFlags:
    """The flags of every finetune command (their help is :data:`HELP`)."""

    train: TrainArgs = dataclasses.field(default_factory=lambda: FINETUNE_TRAIN)
    eval: EvalArgs = dataclasses.field(default_factory=lambda: FINETUNE_EVAL)
    precision: str | None = None
    quantize: Quantize | None = None
    devices: int | str = 1
    num_nodes: int = 1
    strategy: Strategy = "auto"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_query: bool = True
    lora_key: bool = False
    lora_value: bool = True
    lora_projection: bool = False
    lora_mlp: bool = False
    lora_head: bool = False
    freeze_emb: bool = False
    freeze_ln: bool = False
    freeze_attn: bool = False
    freeze_ff: bool = False
    freeze_other: bool = False
    layers_not_to_freeze: list[int] | None = None
    checkpoint: CheckpointArgs = dataclasses.field(default_factory=CheckpointArgs)
    optimizer: str | dict = "AdamW"
    logger_name: LoggerChoice = "csv"
    log: LogArgs = dataclasses.field(default_factory=LogArgs)
    seed: int = 1337
    resume: bool | Literal["auto"] | Path = False
    fast_forwards: bool = True

    def lora(self) -> dict:
        """``lora_r``, ``lora_alpha``, ... as litgpt's LoRA ``Config`` takes them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith("lora_")}

    def frozen_groups(self) -> set[str]:
        """The groups ``--freeze_*`` names (``emb``, ``ln``, ``attn``, ``ff``, ``other``)."""
        return {
            f.name[len("freeze_") :]
            for f in dataclasses.fields(self)
            if f.name.startswith("freeze_") and getattr(self, f.name)
        }


@dataclasses.dataclass
class PreferenceFlags(CommonFlags):
    """The preference methods' flags: how prompts are rendered and cut."""

    prompt_style: str | None = None
    max_prompt_length: int | None = None
    max_length: int | None = None


@dataclasses.dataclass
class RewardFlags(CommonFlags):
    """The reward heads' flags (ORM and PRM)."""

    head: Head = "classifier"
    pos_weight: float | Literal["auto"] = 1.0
    yes_token: str = " Yes"
    no_token: str = " No"


HELP = {
    "prompt_style": "Prompt style for the pairs' prompts: a litgpt style name, ``chat_template`` or ``default`` for "
    "the raw text; ``auto``: the checkpoint's prompt_style.yaml, else its chat template, else litgpt's style for its "
    "name (printed with the reason).",
    "max_prompt_length": "Keep at most this many prompt tokens (BOS and the prompt's end are kept).",
    "max_length": "Cut each prompt + answer to this many tokens (answers are cut; pairs whose prompt alone is this "
    "long are dropped).",
    "head": '``yes_token`` (the LM\'s own " Yes"/" No" logits at the scored position: the answer\'s end, each '
    "step's end), ``classifier`` (a new 2-class linear head on that position's hidden state) or ``scalar`` (a new "
    "1-output head).",
    "pos_weight": "Weight of positive rows (PRM: steps) in the loss, or ``auto`` (negatives / positives of the "
    "training data).",
    "yes_token": "The positive answer for the yes_token head; must be one token of the student's tokenizer.",
    "no_token": "The negative answer for the yes_token head; must be one token too.",
    "train": "Training arguments (litgpt's ``TrainArgs``: batch sizes, epochs/max_steps, warmup, min_lr, max_norm).",
    "eval": "Evaluation arguments (litgpt's ``EvalArgs`` plus generate_samples / text_metrics).",
    "precision": '"bf16-true", "bf16-mixed", "32-true", ... (default: litgpt\'s choice on a GPU; on a CPU bf16-mixed '
    "only where the CPU does bf16 natively and the model is at least 512 wide, else 32-true).",
    "quantize": "QLoRA: store the frozen base weights quantized with bitsandbytes (``bnb.nf4``, ``bnb.nf4-dq``, "
    "``bnb.fp4``, ``bnb.fp4-dq``, ``bnb.int8-training``), as litgpt's finetune_lora; LoRA runs on one CUDA GPU.",
    "devices": "How many devices/GPUs to use per node.",
    "num_nodes": "How many nodes.",
    "strategy": "``auto`` (DDP when more than one device), ``ddp`` or ``fsdp``.",
    "lora_r": "The LoRA rank.",
    "lora_alpha": "The LoRA alpha.",
    "lora_dropout": "The LoRA dropout value.",
    "lora_query": "Apply LoRA to the query weights in attention.",
    "lora_key": "Apply LoRA to the key weights in attention.",
    "lora_value": "Apply LoRA to the value weights in attention.",
    "lora_projection": "Apply LoRA to the attention output projection.",
    "lora_mlp": "Apply LoRA to the MLP weights.",
    "lora_head": "Apply LoRA to the output head.",
    "freeze_emb": "(full mode) Freeze token embeddings.",
    "freeze_ln": "(full mode) Freeze every normalization layer.",
    "freeze_attn": "(full mode) Freeze attention projections.",
    "freeze_ff": "(full mode) Freeze MLP weights.",
    "freeze_other": "(full mode) Freeze everything else (LM head, ...).",
    "layers_not_to_freeze": "(full mode) Block indices that stay fully trainable despite the freeze flags.",
    "checkpoint": "Which extra checkpoints to keep (best by a monitored metric, keep_last).",
    "optimizer": 'An optimizer name (such as "AdamW") or config (``--optimizer.lr``, ``--optimizer.weight_decay``, '
    '``--optimizer.betas`` via ``{"class_path": ..., "init_args": ...}``), as in litgpt.',
    "logger_name": "Where metrics go: csv, tensorboard, wandb, ... (litgpt's loggers).",
    "log": "Logger settings, as litgpt's (``--log.project``, ``--log.run``, ``--log.group`` for wandb; the project "
    "names the MLflow experiment and the run its run).",
    "seed": "Random seed (model init of new parameters, data order, dropout).",
    "resume": "``auto`` (newest step-* in out_dir, if any), ``true`` (must exist), or a step-* directory.",
    "fast_forwards": "``false`` runs litgpt's own module forwards, LM head and last block instead of this "
    "toolchain's equal-but-faster ones (litgpt_ext/model/): for debugging, and to compare the two.",
}


def _docstring(doc: str, names: list[str], notes: dict[str, str]) -> str:
    """``doc`` with an ``Arguments:`` entry for each of ``names`` appended (wrapped at 120 columns), each followed by
    the command's own note on it, if any."""
    import textwrap

    lines = [doc.rstrip()]
    for name in names:
        text = f"{name}: {HELP[name]}" + (f" {notes[name]}" if name in notes else "")
        wrapped = textwrap.wrap(text, width=112, subsequent_indent="    ")
        lines.extend("        " + line for line in wrapped)
    return "\n".join(lines) + "\n    "


def finetune_command(
    notes: dict[str, str] | None = None,
    train: dict | None = None,
    eval: dict | None = None,
    group: type[CommonFlags] = CommonFlags,
    **defaults,
) -> Callable[[Callable], Callable]:
    """Decorate ``setup(own flags..., flags: CommonFlags)``: its public signature is its own flags followed by the
    :class:`CommonFlags` fields (with ``defaults`` overriding theirs, such as DPO's lower learning rate; ``train`` and
    ``eval`` changing fields of the finetune defaults; ``notes`` added to their help), and a call gathers those into
    ``flags``."""
    defaults["train"] = dataclasses.replace(FINETUNE_TRAIN, **(train or {}))
    defaults["eval"] = dataclasses.replace(FINETUNE_EVAL, **(eval or {}))
    unknown = set(defaults) - {f.name for f in dataclasses.fields(group)}
    assert not unknown, f"not flags of {group.__name__}: {unknown}"
    everyones = {f.name for f in dataclasses.fields(CommonFlags)}
    # the group's own flags (a method family's) first, then every command's
    fields = sorted(dataclasses.fields(group), key=lambda f: f.name in everyones)

    def decorate(function: Callable) -> Callable:
        command = spread_group(function, "flags", group, fields, defaults)
        command.__doc__ = _docstring(function.__doc__ or "", [f.name for f in fields], notes or {})
        return command

    return decorate


def preference_command(lr: float, why: str) -> Callable[[Callable], Callable]:
    """:func:`finetune_command` with the preference methods' defaults: AdamW at ``lr`` without weight decay (``why``
    that rate), no LoRA dropout, one epoch of pairs."""
    return finetune_command(
        group=PreferenceFlags,
        notes={
            "train": "``micro_batch_size`` counts pairs.",
            "eval": "Validation metrics every ``interval`` steps; ``generate_samples`` writes greedy answers.",
            "lora_dropout": "Default here 0: dropout would make the policy's log-probs noisy against the reference's "
            "(TRL disables it for preference methods).",
            "checkpoint": "``--checkpoint.monitor`` takes any val metric, e.g. ``val_rewards/accuracies`` with "
            "``--checkpoint.mode max``.",
            "optimizer": f"Default here: AdamW at lr {lr:g} without weight decay ({why}); torch's AdamW default "
            "(1e-3) would wreck a model that already answers well in a few steps.",
        },
        lora_dropout=0.0,
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": lr, "weight_decay": 0.0}},
        train={"micro_batch_size": 2, "lr_warmup_steps": 10, "epochs": 1},
    )


def reward_command(train_note: str) -> Callable[[Callable], Callable]:
    """:func:`finetune_command` with the reward heads' defaults: rows in batches of 4, one epoch, no generation at
    evaluation (a reward model scores; it does not answer)."""
    return finetune_command(
        group=RewardFlags,
        notes={"train": train_note},
        train={"micro_batch_size": 4, "lr_warmup_steps": 10, "epochs": 1},
        eval={"max_new_tokens": 0},
    )


def command_hyperparameters(command: Callable, arguments: dict) -> dict:
    """:func:`~litgpt_ext.hparams.hyperparameters` of a decorated command, from its function's ``locals()`` (the
    common flags spread out again, as the CLI shows them)."""
    flags = arguments["flags"]
    spread = {k: v for k, v in arguments.items() if k != "flags"}
    spread.update({f.name: getattr(flags, f.name) for f in dataclasses.fields(flags)})
    return hyperparameters(command, spread)
