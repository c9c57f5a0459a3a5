"""``make demo``: the pipeline end to end, offline, on the embedded default data and tiny student.

Each stage is the real ``litgpt-ext`` command a user would type (run as a subprocess), so the demo doubles as a
copy-paste guide. Outputs go to ``artifacts/runs/demo/`` (git-ignored); a summary is printed at the end.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "artifacts" / "demo"
RUN = REPO / "artifacts" / "runs" / "demo"


def litgpt_ext(*args: object) -> None:
    """Run one CLI stage, echoing the command like a user would type it."""
    cmd = ["litgpt-ext", *map(str, args)]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "litgpt_ext", *cmd[1:]], check=True, cwd=REPO)
    print(f"  ({time.perf_counter() - t0:.1f}s)", flush=True)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def main() -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    summary: list[tuple[str, Path]] = []

    student = RUN / "student"
    litgpt_ext(
        "make_tiny_checkpoint",
        "--out_dir",
        rel(student),
        "--corpus",
        rel(DEMO_DATA / "corpus.txt"),
        "--n_layer",
        2,
        "--n_embd",
        128,
        "--n_head",
        4,
    )
    summary.append(("tiny student checkpoint", student))

    for stage in STAGES:
        summary.extend(stage(student))

    print("\n== demo finished ==")
    for what, path in summary:
        print(f"  {what:<32} {rel(path)}")


def _sft_stage(student: Path) -> list[tuple[str, Path]]:
    """Finetune the student with litgpt's own LoRA finetuning on the Q/A data (replaced by finetune_sft later)."""
    import json

    data = json.loads((DEMO_DATA / "qa.json").read_text())
    rows = [{"instruction": r["Question"], "input": "", "output": r["Answer"]} for r in data["train"] + data["val"]]
    data_file = RUN / "qa_litgpt.json"
    data_file.write_text(json.dumps(rows))
    out = RUN / "lora"
    litgpt_ext(
        "finetune_lora",
        rel(student),
        "--data",
        "JSON",
        "--data.json_path",
        rel(data_file),
        "--data.val_split_fraction",
        0.1,
        "--train.max_steps",
        20,
        "--train.global_batch_size",
        8,
        "--train.micro_batch_size",
        8,
        "--train.lr_warmup_steps",
        2,
        "--eval.interval",
        1000,
        "--eval.max_new_tokens",
        8,
        "--precision",
        "32-true",
        "--out_dir",
        rel(out),
    )
    litgpt_ext(
        "generate",
        rel(out / "final"),
        "--prompt",
        "What does Ivel sell?",
        "--max_new_tokens",
        12,
        "--precision",
        "32-true",
    )
    return [("finetuned checkpoint (LoRA)", out / "final")]


STAGES = [_sft_stage]


if __name__ == "__main__":
    main()
