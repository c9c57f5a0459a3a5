"""``litgpt-ext finetune_prm``: a process reward model (a score per step) on the one loop, with the ORM's heads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.data import DataModule

from litgpt_ext.errors import UserError
from litgpt_ext.finetune.flags import RewardFlags, reward_command
from litgpt_ext.finetune.launch import run, start
from litgpt_ext.finetune.orm import answer_token_ids
from litgpt_ext.training.args import TrainArgs
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


@reward_command("``max_seq_length`` cuts the prompt's start, then the last steps.")
def setup(
    checkpoint_dir: Path,
    data: DataModule | Path | None = None,
    out_dir: Path = Path("out/finetune/prm"),
    step_separator: str = "\n",
    mode: Literal["lora", "full"] = "lora",
    flags: RewardFlags = RewardFlags(),
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
        step_separator: Text between two steps, tokenized on its own (not after the last step); the scores are read
            at the last token of each step. ``\\n``, ``\\t`` typed on the command line mean newline and tab.
        mode: ``lora`` (LoRA adapters; the new head trains fully) or ``full``.
    """
    job = start(setup, locals())
    if flags.pos_weight != "auto" and float(flags.pos_weight) <= 0:
        raise UserError(f"must be > 0 or auto, got {flags.pos_weight}", field="pos_weight")
    step_separator = unescape(step_separator)
    if not step_separator:
        raise UserError("must not be empty (steps would run together)", field="step_separator")
    from litgpt_ext.data.prm import PrmData

    def make_objective(tokenizer, train_args: TrainArgs) -> PRMObjective:
        yes_id, no_id = (
            answer_token_ids(tokenizer, flags.yes_token, flags.no_token) if flags.head == "yes_token" else (None, None)
        )
        return PRMObjective(flags.head, flags.pos_weight, yes_id, no_id, step_separator)

    run(
        job,
        make_objective,
        data_class=PrmData,
        connect={"step_separator": step_separator},
    )


setup.default_data = "PrmData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
