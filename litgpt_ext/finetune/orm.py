"""``litgpt-ext finetune_orm``: an outcome reward model (Yes-token, classifier or scalar head) on the one loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.data import DataModule

from litgpt_ext.data.encode import encode_text
from litgpt_ext.errors import UserError
from litgpt_ext.finetune.flags import RewardFlags, reward_command
from litgpt_ext.finetune.launch import run, start
from litgpt_ext.training.args import TrainArgs
from litgpt_ext.training.objectives.orm import Loss, ORMObjective

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


@reward_command("``max_seq_length`` cuts the start of long rows.")
def setup(
    checkpoint_dir: Path,
    data: DataModule | Path | None = None,
    out_dir: Path = Path("out/finetune/orm"),
    loss: Loss = "bce",
    orm_prompt: str | None = None,
    mode: Literal["lora", "full"] = "lora",
    flags: RewardFlags = RewardFlags(),
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
        loss: For the scalar head: ``bce`` (pointwise) or ``pairwise`` (Bradley-Terry on positive/negative rows of
            the same question).
        orm_prompt: Template of the scored text, with fields from the row (default: "Question: {question}\\nSQL:
            {sql}\\nIs the SQL correct?" for SQL rows, else "{prompt}\\n\\nAnswer: {response}\\n\\nIs the answer
            correct?").
        mode: ``lora`` (LoRA adapters; the new head trains fully) or ``full``.
    """
    job = start(setup, locals())
    if loss == "pairwise" and flags.head != "scalar":
        raise UserError("--loss pairwise needs --head scalar", field="loss")
    if flags.pos_weight != "auto" and float(flags.pos_weight) <= 0:
        raise UserError(f"must be > 0 or auto, got {flags.pos_weight}", field="pos_weight")
    from litgpt_ext.data.orm import OrmData

    def make_objective(tokenizer, train_args: TrainArgs) -> ORMObjective:
        yes_id, no_id = (
            answer_token_ids(tokenizer, flags.yes_token, flags.no_token) if flags.head == "yes_token" else (None, None)
        )
        return ORMObjective(flags.head, loss, flags.pos_weight, yes_id, no_id, orm_prompt)

    run(
        job,
        make_objective,
        data_class=OrmData,
        connect={"orm_prompt": orm_prompt, "pairwise": loss == "pairwise"},
    )


setup.default_data = "OrmData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
