"""What every finetune command does around its objective: check the flags and the data before any process starts,
then in each process build the model, install the faster forwards for the run, load the weights and call
:func:`~litgpt_ext.training.loop.fit`. A command is its objective + its own flags + :func:`run`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from litgpt.data import DataModule
from litgpt.tokenizer import Tokenizer
from litgpt.utils import instantiate_torch_optimizer, load_checkpoint

from litgpt_ext.checks import check_checkpoint_dir, fit_to_context
from litgpt_ext.data.modules import datasets_of, ready_data, resolve_data
from litgpt_ext.data.orm import OrmData  # noqa: F401 (imported so that --data OrmData resolves by name)
from litgpt_ext.data.preference import PreferenceData  # noqa: F401 (likewise)
from litgpt_ext.data.prm import PrmData  # noqa: F401 (likewise)
from litgpt_ext.data.sft import SFTData
from litgpt_ext.errors import UserError
from litgpt_ext.finetune.build import ModelSpec, build_model, model_spec
from litgpt_ext.finetune.fabric import (
    check_logger,
    fused_when_possible,
    make_fabric,
    optimizer_config,
    quantization_plugin,
)
from litgpt_ext.finetune.flags import CommonFlags, command_hyperparameters
from litgpt_ext.model.patches import patched
from litgpt_ext.model.support import require_support
from litgpt_ext.precision import default_precision
from litgpt_ext.training.args import EvalArgs, TrainArgs
from litgpt_ext.training.checkpoint import CheckpointWriter, find_resume_dir
from litgpt_ext.training.loop import fit
from litgpt_ext.training.memory import keep_freed_memory
from litgpt_ext.training.objectives.base import Objective, OwnModules, StepHooks
from litgpt_ext.training.plan import FitPlan


def preference_data(checkpoint_dir: Path, prompt_style: str | None, max_prompt_length: int | None) -> dict:
    """:func:`run` options of the preference methods: ``--data PATH`` means :class:`PreferenceData`, whose prompts
    go through the student's prompt style (``--prompt_style``, else the checkpoint's, as litgpt generate uses)."""
    from litgpt_ext.prompts import resolve_prompt_style

    style = resolve_prompt_style(prompt_style, checkpoint_dir)
    return {"data_class": PreferenceData, "connect": {"prompt_style": style, "max_prompt_length": max_prompt_length}}


def with_max_length(train: TrainArgs, max_length: int | None) -> TrainArgs:
    """``--max_length`` (TRL's name in the preference commands) is the loop's sequence limit."""
    return train if max_length is None else dataclasses.replace(train, max_seq_length=max_length)


def check_numbers(train: TrainArgs, eval: EvalArgs, spec: ModelSpec) -> None:
    """Every finetune command's numeric flags, checked before any data is read."""
    from litgpt_ext.checks import above, at_least, within

    at_least("train.micro_batch_size", train.micro_batch_size, 1)
    at_least("train.global_batch_size", train.global_batch_size, train.micro_batch_size)
    at_least("train.max_steps", train.max_steps, 1)
    at_least("train.epochs", train.epochs, 1)
    at_least("train.lr_warmup_steps", train.lr_warmup_steps, 0)
    within("train.lr_warmup_fraction", train.lr_warmup_fraction, 0.0, 1.0)
    at_least("train.max_seq_length", train.max_seq_length, 1)
    at_least("train.save_interval", train.save_interval, 1)
    at_least("train.log_interval", train.log_interval, 1)
    above("train.max_norm", train.max_norm, 0)
    at_least("train.min_lr", train.min_lr, 0.0)
    at_least("eval.interval", eval.interval, 1)
    at_least("eval.max_iters", eval.max_iters, 1)
    if spec.mode == "lora":
        at_least("lora_r", spec.lora.get("lora_r"), 1)
        above("lora_alpha", spec.lora.get("lora_alpha"), 0)
        within("lora_dropout", spec.lora.get("lora_dropout"), 0.0, 1.0)


def check_precision(precision: str, mode: str) -> None:
    """A precision Lightning knows, and no full finetuning of half-precision weights: with ``bf16-true`` the optimizer
    updates the bf16 weights themselves, and a step below a weight's bf16 spacing (2^-8 of it: AdamW at lr 2e-5
    moves any weight above ~0.005 by less) is rounded away — the run trains far less than it reports. ``-mixed``
    keeps fp32 weights and computes in the half type; LoRA trains its own small factors."""
    from litgpt_ext.precision import COMPUTE_DTYPES

    if precision not in COMPUTE_DTYPES:
        raise UserError(f"use one of {', '.join(COMPUTE_DTYPES)} (got {precision!r})", field="precision")
    if mode == "full" and precision in ("bf16-true", "16-true"):
        half = precision.split("-")[0]
        raise UserError(
            f"{precision} with --mode full updates {half} weights in place, and every optimizer step smaller than a "
            f"weight's {half} spacing is lost (AdamW at lr 2e-5 on weights above ~0.005): use --precision "
            f"{half}-mixed (fp32 master weights, {half} compute) or --mode lora",
            field="precision",
        )


@dataclasses.dataclass
class Run:
    """A finetune run as the command's flags describe it, before the method's own checks."""

    data: DataModule | Path | str | None
    spec: ModelSpec
    out_dir: Path
    hparams: dict
    flags: CommonFlags


def start(command: Callable, arguments: dict) -> Run:
    """The :class:`Run` of a command, from its ``locals()`` at its first line (its hyperparameters as the CLI shows
    them, its model spec); the starting checkpoint is checked here, before anything else is read."""
    hparams = command_hyperparameters(command, arguments)
    flags = arguments["flags"]
    spec = model_spec(arguments["checkpoint_dir"], arguments["mode"], flags)
    check_checkpoint_dir(spec.checkpoint_dir)
    return Run(arguments["data"], spec, Path(arguments["out_dir"]), hparams, flags)


def run(
    job: Run,
    make_objective: Callable[[Tokenizer, TrainArgs], Objective],
    train: TrainArgs | None = None,
    data_class: type[DataModule] = SFTData,
    connect: dict | None = None,
) -> None:
    """Validate inputs and data (before any process starts), set up Fabric, and launch :func:`fit`.

    ``data_class`` is the DataModule a bare ``--data PATH`` means; ``connect`` adds method-specific arguments to its
    ``connect`` call (the prompt style and prompt length limit of preference data)."""
    spec, flags, hparams = job.spec, job.flags, job.hparams
    train, eval = train or flags.train, flags.eval
    check_numbers(train, eval, spec)
    check_logger(flags.logger_name)
    require_support(spec.checkpoint_dir, f"finetune_{spec.mode}")
    precision = flags.precision or default_precision(spec.checkpoint_dir, training=True)
    check_precision(precision, spec.mode)
    plugin = quantization_plugin(flags.quantize, precision, spec.mode, flags.devices, flags.num_nodes)
    train = dataclasses.replace(
        train, max_seq_length=fit_to_context("train.max_seq_length", train.max_seq_length, spec.checkpoint_dir)
    )
    data = resolve_data(job.data, data_class)
    out_dir = job.out_dir
    resume_dir = find_resume_dir(flags.resume, out_dir)
    # Data is loaded and validated here, in every process (a DDP launcher re-runs the command per rank), so bad
    # input fails fast with a one-line error before Fabric or the model is touched.
    tokenizer = Tokenizer(spec.checkpoint_dir)
    ready_data(data, tokenizer, spec.checkpoint_dir, train.micro_batch_size, train.max_seq_length, **(connect or {}))
    train_data, val_data = datasets_of(data)
    test_input = None
    if eval.test:
        from litgpt_ext.finetune.test_split import test_source  # loads the generator only when asked

        test_input = test_source(data)
    if getattr(data, "stats", None):
        print("Data: " + ", ".join(f"{k}={v}" for k, v in data.stats.items()))
    hparams = {**hparams, "precision": precision}
    fabric = make_fabric(
        flags.devices,
        flags.num_nodes,
        flags.strategy,
        precision,
        flags.logger_name,
        out_dir,
        name=f"finetune-{out_dir.name}",
        log_interval=train.log_interval,
        resuming=resume_dir is not None,
        log=flags.log,
        plugin=plugin,
    )
    objective = make_objective(tokenizer, train)
    objective.connect_data(data)
    if isinstance(objective, StepHooks):
        train_data, val_data = objective.wrap_datasets(train_data, val_data)
    own = isinstance(objective, OwnModules)
    writer = CheckpointWriter(
        source_dir=spec.checkpoint_dir,
        hparams=hparams,
        prompt_style=getattr(data, "prompt_style", None),
        lora=spec.mode == "lora",
        precision=precision,
        merge_from_disk=plugin is not None,
        exclude_prefixes=objective.own_prefixes if own else (),
        extras=objective.save_extras if own else None,
    )
    plan = LaunchPlan(
        objective=objective,
        train_data=train_data,
        val_data=val_data,
        tokenizer=tokenizer,
        writer=writer,
        out_dir=out_dir,
        train=train,
        eval=eval,
        checkpoint=flags.checkpoint,
        seed=flags.seed,
        resume_dir=resume_dir,
        spec=spec,
        optimizer=flags.optimizer,
        test_input=test_input,
    )
    fabric.launch(_main, plan)


@dataclasses.dataclass(kw_only=True)
class LaunchPlan(FitPlan):
    """Everything each process needs, prepared (and validated) before any process starts: the loop's
    :class:`~litgpt_ext.training.plan.FitPlan` and how to build the model and its optimizer."""

    spec: ModelSpec
    optimizer: str | dict
    test_input: tuple[Path, str] | None = None
    """The test split ``--eval.test`` answers after training."""


def _main(fabric: L.Fabric, plan: LaunchPlan) -> None:
    fabric.seed_everything(plan.seed)
    if fabric.device.type == "cpu":
        keep_freed_memory()
    if fabric.global_rank == 0:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(fabric, plan.spec, plan.objective)
    with patched(model, "training", plan.spec.fast) as patches:  # the model is litgpt's again when the run ends
        plan.replaced_forwards = patches.forwards()
        _train(fabric, plan, model)


def _train(fabric: L.Fabric, plan: LaunchPlan, model: torch.nn.Module) -> None:
    model = fabric.setup_module(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = fused_when_possible(optimizer_config(plan.optimizer), fabric)
    opt = fabric.setup_optimizers(instantiate_torch_optimizer(optimizer, trainable))
    # full mode loads strictly, except for modules the objective adds (a reward head starts fresh)
    strict = plan.spec.mode == "full" and not isinstance(plan.objective, OwnModules)
    load_checkpoint(fabric, model, plan.spec.checkpoint_dir / "lit_model.pth", strict=strict)
    plan.objective.setup(fabric, model, plan.train_data, plan.val_data, plan.out_dir)
    fit(fabric, model, opt, plan)
    if plan.test_input is not None:
        from litgpt_ext.finetune.test_split import evaluate_test_split

        del model, opt  # the test split is answered by the final checkpoint, loaded fresh
        evaluate_test_split(
            fabric, plan.test_input, plan.out_dir, plan.writer.precision, plan.eval.max_new_tokens or 50
        )
