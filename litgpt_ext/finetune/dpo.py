"""``litgpt-ext finetune_dpo``: Direct Preference Optimization (LoRA or full) on the one training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.data import DataModule

from litgpt_ext.checks import above, at_least, check_checkpoint_dir, within
from litgpt_ext.errors import UserError
from litgpt_ext.finetune.flags import PreferenceFlags, preference_command
from litgpt_ext.finetune.launch import preference_data, run, start, with_max_length
from litgpt_ext.training.args import TrainArgs
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


@preference_command(1e-6, "TRL's DPOConfig: a preference method moves a model that already answers well")
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
    flags: PreferenceFlags = PreferenceFlags(),
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
    """
    job = start(setup, locals())
    above("beta", beta, 0)
    within("label_smoothing", label_smoothing, 0.0, 0.5)
    at_least("rpo_alpha", rpo_alpha, 0.0)
    at_least("max_prompt_length", flags.max_prompt_length, 1)
    at_least("max_length", flags.max_length, 2)
    if ref_checkpoint_dir is not None:
        check_checkpoint_dir(Path(ref_checkpoint_dir))
    kind = reference_kind(reference, mode, ref_checkpoint_dir)
    ref = Reference(kind, job.spec.checkpoint_dir, Path(ref_checkpoint_dir) if ref_checkpoint_dir else None)

    def make_objective(tokenizer, train_args: TrainArgs) -> DPOObjective:
        return DPOObjective(ref, beta, loss_type, label_smoothing, rpo_alpha)

    run(
        job,
        make_objective,
        train=with_max_length(flags.train, flags.max_length),
        **preference_data(job.spec.checkpoint_dir, flags.prompt_style, flags.max_prompt_length),
    )


setup.default_data = "PreferenceData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
