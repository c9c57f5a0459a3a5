"""What every finetune command shares before the loop: Fabric, the model (LoRA or full, with freezing), data,
optimizer and checkpoint writer. A command is then: its objective + its arguments + :func:`run`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from litgpt.args import LogArgs
from litgpt.data import DataModule
from litgpt.tokenizer import Tokenizer
from litgpt.utils import instantiate_torch_optimizer, load_checkpoint

from litgpt_ext.checks import check_checkpoint_dir, fit_to_context
from litgpt_ext.data.orm import OrmData  # noqa: F401 (imported so that --data OrmData resolves by name)
from litgpt_ext.data.preference import PreferenceData  # noqa: F401 (likewise)
from litgpt_ext.data.prm import PrmData  # noqa: F401 (likewise)
from litgpt_ext.data.sft import SFTData
from litgpt_ext.errors import UserError
from litgpt_ext.precision import default_precision
from litgpt_ext.training.args import CheckpointArgs, EvalArgs, TrainArgs
from litgpt_ext.training.checkpoint import CheckpointWriter, find_resume_dir
from litgpt_ext.training.freeze import apply_freezing, parameter_table
from litgpt_ext.training.loop import fit
from litgpt_ext.training.memory import keep_freed_memory
from litgpt_ext.training.objectives.base import Objective

Mode = Literal["lora", "full"]
Strategy = Literal["auto", "ddp", "fsdp"]


@dataclasses.dataclass
class ModelSpec:
    """How to build the trainable model from the base checkpoint."""

    checkpoint_dir: Path
    mode: Mode = "lora"
    lora: dict = dataclasses.field(default_factory=dict)
    """lora_r, lora_alpha, lora_dropout, lora_query, ... (litgpt's names)."""
    frozen_groups: set[str] = dataclasses.field(default_factory=set)
    layers_not_to_freeze: list[int] | None = None


def model_spec(checkpoint_dir: Path, mode: Mode, flags: dict) -> ModelSpec:
    """The :class:`ModelSpec` of a finetune command from its flags (``lora_*``, ``freeze_*``, ``layers_not_to_freeze``
    — the same names as litgpt's finetune scripts, shared by every method)."""
    frozen = {name[len("freeze_") :] for name, on in flags.items() if name.startswith("freeze_") and on}
    keep = flags.get("layers_not_to_freeze")
    if mode == "lora" and (frozen or keep):
        raise UserError(
            "freeze_* and layers_not_to_freeze apply to --mode full (LoRA freezes the base already)", field="mode"
        )
    lora = {k: v for k, v in flags.items() if k.startswith("lora_")}
    return ModelSpec(Path(checkpoint_dir), mode, lora, frozen, keep)


def resolve_data(data: DataModule | Path | str | None, default: type[DataModule] = SFTData) -> DataModule:
    """``--data PATH`` is shorthand for the method's own DataModule (``default``) on that path."""
    if data is None:
        name = default.__name__
        raise UserError(f"pass --data PATH (or --data {name} --data.path PATH, or a litgpt DataModule)", field="data")
    if isinstance(data, (str, Path)):
        return default(path=Path(data))
    return data


def datasets_of(data: DataModule) -> tuple[Sequence, Sequence]:
    """The (train, validation) datasets of a DataModule. Ours expose both; litgpt's ``JSON`` (and others) declare a
    ``val_dataset`` field but fill ``test_dataset`` (their validation split), so that is taken when it is the one
    set; DataModules exposing neither give them through their dataloaders."""
    train = getattr(data, "train_dataset", None)
    val = getattr(data, "val_dataset", None)
    if val is None:
        val = getattr(data, "test_dataset", None)
    if train is None or val is None:
        train = train if train is not None else data.train_dataloader().dataset
        val = val if val is not None else data.val_dataloader().dataset
    if not len(train):
        raise UserError("the data has no training samples", field="data")
    if not len(val):
        raise UserError("the data has no validation samples (set a val split)", field="data")
    return train, val


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


def optimizer_config(optimizer: str | dict) -> str | dict:
    """litgpt's optimizer forms, plus a shorthand: ``--optimizer.lr 3e-4`` alone means AdamW with those args, and on
    top of a command's default optimizer (DPO's AdamW at 1e-6) it overrides that argument."""
    if not isinstance(optimizer, dict):
        return optimizer
    if "class_path" not in optimizer:
        return {"class_path": "torch.optim.AdamW", "init_args": {k: _number(v) for k, v in optimizer.items()}}
    extra = {k: _number(v) for k, v in optimizer.items() if k not in ("class_path", "init_args")}
    return {"class_path": optimizer["class_path"], "init_args": {**(optimizer.get("init_args") or {}), **extra}}


FUSABLE = ("torch.optim.AdamW", "torch.optim.Adam", "AdamW", "Adam")


def fused_when_possible(config: str | dict, fabric: L.Fabric) -> str | dict:
    """torch's Adam / AdamW with ``fused=True`` unless the user chose ``fused`` or ``foreach``, as transformers'
    Trainer does by default since torch 2.8: one kernel per step instead of several temporaries per parameter (a
    35M-parameter full finetune on a CPU: peak RSS -93 MB and ~10 % faster, measured). Not under FSDP, whose sharded
    parameters the fused kernel does not take."""
    from lightning.fabric.strategies import FSDPStrategy

    if isinstance(fabric.strategy, FSDPStrategy) or fabric.device.type not in ("cpu", "cuda"):
        return config
    if isinstance(config, str):
        return {"class_path": f"torch.optim.{config}", "init_args": {"fused": True}} if config in FUSABLE else config
    if config.get("class_path") not in FUSABLE:
        return config
    args = dict(config.get("init_args") or {})
    if "fused" in args or "foreach" in args:
        return config
    return {**config, "init_args": {**args, "fused": True}}


def _number(value):
    """CLI dict values arrive as strings ("3e-4", "[0.9, 0.95]"); turn them into numbers / lists."""
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    import yaml

    parsed = yaml.safe_load(value)
    return [_number(v) for v in parsed] if isinstance(parsed, list) else parsed


LOGGER_EXTRAS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "litlogger": (("litlogger",), "litlogger"),
}
"""--logger_name -> (modules any of which makes it work, the extra of this package that installs one)."""


def check_logger(logger_name: str) -> None:
    """An optional logger whose package is missing stops the command at start with the extra to install, before
    any data is read (not an 11-frame traceback after the model is built)."""
    import importlib.util

    if logger_name not in LOGGER_EXTRAS:
        return
    modules, extra = LOGGER_EXTRAS[logger_name]
    if not any(importlib.util.find_spec(m) for m in modules):
        raise UserError(
            f"{logger_name} needs {' or '.join(modules)}: pip install 'litgpt-distill[{extra}]' "
            f"(or use --logger_name csv)",
            field="logger_name",
        )


Quantize = Literal["bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8-training"]
"""litgpt's ``--quantize`` choices (bitsandbytes): the frozen base weights of a LoRA run are stored quantized."""


def logger_settings(logger_name: str, out_dir: Path, log: LogArgs | None) -> tuple[dict, dict]:
    """(``log_args``, logger keyword arguments) for litgpt's ``choose_logger``: litgpt's ``--log.*`` fields that are
    set (litgpt's wandb branch pops them from a dict, and crashes without one), and local defaults that keep a run's
    logs in ``out_dir/logs`` — wandb's run directory (``WANDB_MODE=offline`` works) and, unless
    ``MLFLOW_TRACKING_URI`` names a server, an MLflow file store (``MLFLOW_ALLOW_FILE_STORE`` is set for it: MLflow 3
    refuses file stores without it)."""
    import os

    log_args = {k: v for k, v in dataclasses.asdict(log or LogArgs()).items() if v is not None}
    kwargs: dict = {}
    if logger_name == "wandb":
        kwargs["save_dir"] = str(out_dir / "logs")
        log_args = {k: v for k, v in log_args.items() if k in ("project", "run", "group")}
    elif logger_name == "mlflow":
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            kwargs["tracking_uri"] = f"file:{(out_dir / 'logs' / 'mlruns').resolve()}"
        if log_args.get("run"):
            kwargs["run_name"] = log_args["run"]
    return log_args, kwargs


def quantization_plugin(quantize: Quantize | None, precision: str, mode: str, devices, num_nodes: int):
    """litgpt's QLoRA setup (its ``finetune_lora``): a bitsandbytes precision plugin in place of Fabric's precision.
    Refused in one line where it cannot run: full finetuning, mixed precision, several devices, no CUDA GPU, no
    bitsandbytes."""
    if quantize is None:
        return None
    if mode != "lora":
        raise UserError("quantizes the frozen base of a LoRA run: use it with --mode lora", field="quantize")
    if "mixed" in precision:
        raise UserError(f"cannot be combined with mixed precision {precision}; use bf16-true", field="quantize")
    if devices not in (1, "1") or num_nodes != 1:
        raise UserError("quantized training runs on one device (as litgpt's finetune_lora)", field="quantize")
    if not torch.cuda.is_available():
        raise UserError(
            f"{quantize} needs a CUDA GPU (bitsandbytes does not run on this machine's CPU)", field="quantize"
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"{quantize} needs bitsandbytes: pip install bitsandbytes", field="quantize")
    from lightning.fabric.plugins import BitsandbytesPrecision

    dtype = {"16-true": torch.float16, "bf16-true": torch.bfloat16, "32-true": torch.float32}[precision]
    return BitsandbytesPrecision(quantize[4:], dtype)


def make_fabric(
    devices: int | str,
    num_nodes: int,
    strategy: Strategy,
    precision: str,
    logger_name: str,
    out_dir: Path,
    name: str,
    log_interval: int,
    resuming: bool,
    log: LogArgs | None = None,
    plugin=None,
) -> L.Fabric:
    from litgpt.lora import Block as LoRABlock
    from litgpt.model import Block
    from litgpt.utils import choose_logger, parse_devices

    devices = parse_devices(devices)
    if strategy == "fsdp" and not torch.cuda.is_available():
        raise UserError("fsdp needs CUDA GPUs (Lightning Fabric's FSDP is GPU-only); use ddp on CPU", field="strategy")
    if strategy == "fsdp":
        from lightning.fabric.strategies import FSDPStrategy

        strategy_obj = FSDPStrategy(
            auto_wrap_policy={Block, LoRABlock},
            state_dict_type="full",
            sharding_strategy="FULL_SHARD",
            use_orig_params=True,  # LoRA mixes frozen and trainable parameters within a block
        )
    elif strategy == "ddp" or (strategy == "auto" and devices * num_nodes > 1):
        strategy_obj = "ddp"
    else:
        strategy_obj = "auto"
    if log is not None and log.project and logger_name == "mlflow":
        name = log.project  # the MLflow experiment
    log_args, kwargs = logger_settings(logger_name, out_dir, log)
    logger = choose_logger(
        logger_name, out_dir, name=name, log_interval=log_interval, log_args=log_args, resume=resuming or None, **kwargs
    )
    return L.Fabric(
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy_obj,
        precision=None if plugin is not None else precision,
        plugins=plugin,
        loggers=logger,
    )


def build_model(fabric: L.Fabric, spec: ModelSpec, objective: Objective) -> torch.nn.Module:
    from lightning.fabric.strategies import FSDPStrategy

    # Skip random init only where FSDP materialises parameters itself (reset_parameters); elsewhere new weights
    # that the base checkpoint does not hold (LoRA A/B, heads) would stay uninitialised memory.
    empty_init = isinstance(fabric.strategy, FSDPStrategy)
    if spec.mode == "lora":
        from litgpt.lora import GPT, Config, mark_only_lora_as_trainable

        config = Config.from_file(spec.checkpoint_dir / "model_config.yaml", **spec.lora)
        with fabric.init_module(empty_init=empty_init):
            model = GPT(config)
        mark_only_lora_as_trainable(model)
    else:
        from litgpt.config import Config
        from litgpt.model import GPT

        from litgpt_ext.model.tied import checkpoint_is_tied, tie_embeddings

        config = Config.from_file(spec.checkpoint_dir / "model_config.yaml")
        with fabric.init_module(empty_init=empty_init):
            model = GPT(config)
        if checkpoint_is_tied(spec.checkpoint_dir):  # stays tied (one parameter), as the model was made
            tie_embeddings(model)
            fabric.print("tied embeddings: lm_head shares transformer.wte's weight")
        apply_freezing(model, spec.frozen_groups, spec.layers_not_to_freeze)
    objective.prepare_model(model)
    from litgpt_ext.training.fast_attention import grouped_training_attention
    from litgpt_ext.training.fast_lora import lean_lora_qkv
    from litgpt_ext.training.fast_mlp import lean_swiglu
    from litgpt_ext.training.fast_norm import fused_rms_norm

    # litgpt's math, fewer passes over memory (each tested equal in loss and gradients):
    fused_rms_norm(model)  # F.rms_norm instead of five elementwise passes
    lean_lora_qkv(model)  # one addmm instead of the fused-qkv LoRA's zero-padding plumbing
    grouped_training_attention(model)  # SDPA on grouped keys/values instead of copies per query head
    lean_swiglu(model)  # SwiGLU keeping one activation fewer for backward
    fabric.print(parameter_table(model))
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("every parameter is frozen; nothing to train", field="freeze_*")
    return model


def run(
    make_objective: Callable[[Tokenizer, TrainArgs], Objective],
    data: DataModule | Path | str | None,
    spec: ModelSpec,
    out_dir: Path,
    hparams: dict,
    precision: str | None = None,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: Strategy = "auto",
    train: TrainArgs | None = None,
    eval: EvalArgs | None = None,
    checkpoint: CheckpointArgs | None = None,
    optimizer: str | dict = "AdamW",
    logger_name: str = "csv",
    seed: int = 1337,
    resume: bool | Literal["auto"] | Path = False,
    data_class: type[DataModule] = SFTData,
    connect: dict | None = None,
    log: LogArgs | None = None,
    quantize: Quantize | None = None,
) -> None:
    """Validate inputs and data (before any process starts), set up Fabric, and launch :func:`fit`.

    ``data_class`` is the DataModule a bare ``--data PATH`` means; ``connect`` adds method-specific arguments to its
    ``connect`` call (the prompt style and prompt length limit of preference data)."""
    train, eval, checkpoint = train or TrainArgs(), eval or EvalArgs(), checkpoint or CheckpointArgs()
    check_numbers(train, eval, spec)
    check_logger(logger_name)
    check_checkpoint_dir(spec.checkpoint_dir)
    plugin = quantization_plugin(
        quantize, precision or default_precision(spec.checkpoint_dir, training=True), spec.mode, devices, num_nodes
    )
    train = dataclasses.replace(
        train, max_seq_length=fit_to_context("train.max_seq_length", train.max_seq_length, spec.checkpoint_dir)
    )
    data = resolve_data(data, data_class)
    out_dir = Path(out_dir)
    resume_dir = find_resume_dir(resume, out_dir)
    # Data is loaded and validated here, in every process (a DDP launcher re-runs the command per rank), so bad
    # input fails fast with a one-line error before Fabric or the model is touched.
    tokenizer = Tokenizer(spec.checkpoint_dir)
    if hasattr(data, "student_dir"):  # chat data renders with the student's own chat template
        data.student_dir = spec.checkpoint_dir
    data.connect(
        tokenizer=tokenizer, batch_size=train.micro_batch_size, max_seq_length=train.max_seq_length, **(connect or {})
    )
    data.prepare_data()
    data.setup()
    train_data, val_data = datasets_of(data)
    test_input = None
    if eval.test:
        from litgpt_ext.finetune.test_split import test_source  # loads the generator only when asked

        test_input = test_source(data)
    if getattr(data, "stats", None):
        print("Data: " + ", ".join(f"{k}={v}" for k, v in data.stats.items()))
    precision = precision or default_precision(spec.checkpoint_dir, training=True)
    hparams = {**hparams, "precision": precision}
    fabric = make_fabric(
        devices,
        num_nodes,
        strategy,
        precision,
        logger_name,
        out_dir,
        name=f"finetune-{out_dir.name}",
        log_interval=train.log_interval,
        resuming=resume_dir is not None,
        log=log,
        plugin=plugin,
    )
    objective = make_objective(tokenizer, train)
    objective.connect_data(data)
    train_data, val_data = objective.wrap_datasets(train_data, val_data)
    writer = CheckpointWriter(
        source_dir=spec.checkpoint_dir,
        hparams=hparams,
        prompt_style=getattr(data, "prompt_style", None),
        lora=spec.mode == "lora",
        precision=precision,
        merge_from_disk=plugin is not None,
        exclude_prefixes=objective.own_prefixes,
        extras=objective.save_extras,
    )
    plan = LaunchPlan(
        objective,
        train_data,
        val_data,
        tokenizer,
        spec,
        writer,
        out_dir,
        train,
        eval,
        checkpoint,
        optimizer,
        seed,
        resume_dir,
        test_input,
    )
    fabric.launch(_main, plan)


@dataclasses.dataclass
class LaunchPlan:
    """Everything each process needs, prepared (and validated) before any process starts."""

    objective: Objective
    train_data: Sequence
    val_data: Sequence
    tokenizer: Tokenizer
    spec: ModelSpec
    writer: CheckpointWriter
    out_dir: Path
    train: TrainArgs
    eval: EvalArgs
    checkpoint: CheckpointArgs
    optimizer: str | dict
    seed: int
    resume_dir: Path | None
    test_input: tuple[Path, str] | None = None
    """The test split ``--eval.test`` answers after training."""


def _main(fabric: L.Fabric, plan: LaunchPlan) -> None:
    fabric.seed_everything(plan.seed)
    if fabric.device.type == "cpu":
        keep_freed_memory()
    if fabric.global_rank == 0:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
    model = fabric.setup_module(build_model(fabric, plan.spec, plan.objective))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = fused_when_possible(optimizer_config(plan.optimizer), fabric)
    opt = fabric.setup_optimizers(instantiate_torch_optimizer(optimizer, trainable))
    # full mode loads strictly, except for modules the objective adds (a reward head starts fresh)
    strict = plan.spec.mode == "full" and not plan.objective.own_prefixes
    load_checkpoint(fabric, model, plan.spec.checkpoint_dir / "lit_model.pth", strict=strict)
    plan.objective.setup(fabric, model, plan.train_data, plan.val_data, plan.out_dir)
    fit(
        fabric,
        model,
        plan.objective,
        opt,
        plan.train_data,
        plan.val_data,
        plan.writer,
        plan.out_dir,
        plan.train,
        plan.eval,
        plan.checkpoint,
        plan.seed,
        resume_dir=plan.resume_dir,
        tokenizer=plan.tokenizer,
    )
    if plan.test_input is not None:
        from litgpt_ext.finetune.test_split import evaluate_test_split

        del model, opt  # the test split is answered by the final checkpoint, loaded fresh
        evaluate_test_split(
            fabric, plan.test_input, plan.out_dir, plan.writer.precision, plan.eval.max_new_tokens or 50
        )
