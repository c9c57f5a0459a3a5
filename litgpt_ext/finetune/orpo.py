"""``litgpt-ext finetune_orpo``: Odds Ratio Preference Optimization (reference-free; LoRA or full) on the one loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.data import DataModule

from litgpt_ext.checks import above, at_least
from litgpt_ext.finetune.flags import PreferenceFlags, preference_command
from litgpt_ext.finetune.launch import preference_data, run, start, with_max_length
from litgpt_ext.training.args import TrainArgs
from litgpt_ext.training.objectives.orpo import NllOn, ORPOObjective


@preference_command(1e-5, "ORPO also does the SFT part, so it starts above DPO's 1e-6")
def setup(
    checkpoint_dir: Path,
    data: DataModule | Path | None = None,
    out_dir: Path = Path("out/finetune/orpo"),
    mode: Literal["lora", "full"] = "lora",
    beta: float = 0.1,
    nll_on: NllOn = "prompt_and_response",
    flags: PreferenceFlags = PreferenceFlags(),
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
    """
    job = start(setup, locals())
    above("beta", beta, 0)
    at_least("max_prompt_length", flags.max_prompt_length, 1)
    at_least("max_length", flags.max_length, 2)

    def make_objective(tokenizer, train_args: TrainArgs) -> ORPOObjective:
        return ORPOObjective(beta, nll_on)

    run(
        job,
        make_objective,
        train=with_max_length(flags.train, flags.max_length),
        **preference_data(job.spec.checkpoint_dir, flags.prompt_style, flags.max_prompt_length),
    )


setup.default_data = "PreferenceData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
