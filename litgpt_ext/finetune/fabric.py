"""The Fabric of a finetune run: precision plugin (QLoRA), logger, optimizer — set up as litgpt does, checked before any
process starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import torch
from litgpt.args import LogArgs

from litgpt_ext.errors import UserError
from litgpt_ext.finetune.flags import Quantize, Strategy


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

    from litgpt_ext.precision import compute_dtype

    return BitsandbytesPrecision(quantize[4:], compute_dtype(precision), ignore_modules={"lm_head"})


UNCHECKED_FSDP = "LITGPT_EXT_UNCHECKED_FSDP"
"""Set to 1 to run ``--strategy fsdp`` before the GPU check (tests/gpu/check.py) has passed on it."""


def check_strategy(strategy: Strategy, on_policy: bool = False) -> None:
    """FSDP runs only where it can and where it has been checked. Lightning's FSDP (and torch's FSDP1 under it) is
    GPU-only, so none of its paths — sharded checkpoints and resume, frozen teachers beside a sharded student, a
    reward head gathered to be saved — can run in this project's CPU tests; until the prepared GPU script has run
    them, ``fsdp`` is refused in one line (``LITGPT_EXT_UNCHECKED_FSDP=1`` runs it anyway). On-policy sampling from a
    sharded student is refused outright: the engine runs the whole model on one device."""
    import os

    if strategy != "fsdp":
        return
    if not torch.cuda.is_available():
        raise UserError("fsdp needs CUDA GPUs (Lightning Fabric's FSDP is GPU-only); use ddp on CPU", field="strategy")
    if on_policy:
        raise UserError("samples with the whole student on one device, which a sharded (fsdp) student is not: use "
                        "--strategy ddp for on-policy or sequence-level KD", field="strategy")  # fmt: skip
    if os.environ.get(UNCHECKED_FSDP) != "1":
        raise UserError(
            f"fsdp has not yet passed this toolchain's GPU check (make test-gpu: tests/gpu/check.py): use --strategy "
            f"ddp, or set {UNCHECKED_FSDP}=1 to run it unchecked",
            field="strategy",
        )


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
    check_strategy(strategy)
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
