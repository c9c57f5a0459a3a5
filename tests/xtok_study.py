"""``make xtok-study``: distil the real SmolLM2-135M-Instruct (byte-level BPE, 49,152 tokens, ChatML template) into a
small student with another tokenizer — the project's own byte-level BPE trained on the demo corpus (asked for 4,096
tokens, the 185 kB corpus gives 748), random init, no chat template (its prompts render in Alpaca) — by SFT on the teacher's text and by cross-tokenizer
KD (``--cross_tokenizer uld`` and ``align``), the same steps, data and flags.

The data are the prune study's (:func:`tests.prune_study.teacher_data`: the teacher's greedy answers to the demo
task's documents and to questions about the corpus's towns; made once and shared). Measured on the held-out
answers: the student's NLL per token of its own tokenizer (the final validation's ``val_ce_loss``; the three
students share the tokenizer, so the numbers compare) and the demo task's items F1 and ROUGE-L of the student's
greedy answers against the teacher's (``evaluate_generations``). Outputs go to ``artifacts/runs/xtok-study/``;
``table.md`` is what docs/logit-distillation.md shows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tests.prune_study import OUT as PRUNE_OUT
from tests.prune_study import REPO, TEACHER, _parameters, cli, teacher_data

OUT = REPO / "artifacts" / "runs" / "xtok-study"


def student_init(out: Path) -> Path:
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    if not (out / "lit_model.pth").is_file():
        make_tiny_checkpoint(out_dir=out, corpus=REPO / "artifacts" / "demo" / "corpus.txt", tokenizer="bpe",
                             vocab_size=4096, n_layer=4, n_embd=256, n_head=4, block_size=512, seed=0)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of every student")
    parser.add_argument("--questions", type=int, default=400, help="town questions added to the 400 documents")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    args = parser.parse_args()
    started = time.perf_counter()
    train, data, task_heldout, gen = teacher_data(PRUNE_OUT / "data", args.questions, args.max_new_tokens)
    student = student_init(OUT / "student-init")
    common = ["--data", data / "sft", "--mode", "full", "--precision", "32-true", "--train.max_steps", args.steps,
              "--train.epochs", "null", "--train.global_batch_size", 8, "--train.micro_batch_size", 8,
              "--train.lr_warmup_steps", 10, "--train.log_interval", 10, "--eval.interval", 10_000,
              "--optimizer.lr", 2e-3, "--train.max_seq_length", 256]  # fmt: skip
    runs = {
        "SFT on the teacher's text": [],
        "cross-tokenizer KD, uld": ["--cross_tokenizer", "uld"],
        "cross-tokenizer KD, align": ["--cross_tokenizer", "align"],
        "cross-tokenizer KD, align, shared weight 0.9": ["--cross_tokenizer", "align", "--cross_shared_weight", 0.9],
    }
    table = {}
    for label, flags in runs.items():
        key = "sft" if not flags else "-".join(str(f).lstrip("-") for f in flags[1:])
        out = OUT / key
        if not (out / "final" / "lit_model.pth").is_file():
            if flags:
                cli("finetune_kd", student, "--teacher", TEACHER, "--kd_ratio", 0.5, *flags, "--out_dir", out, *common)
            else:
                cli("finetune_sft", student, "--out_dir", out, *common)
        meta = json.loads((out / f"{'kd' if flags else 'sft'}_metadata.json").read_text())
        val = meta["final_val_metrics"]
        nll = val.get("val_ce_loss", val.get("val_loss"))
        result = OUT / "eval" / key
        if not (result / "task.jsonl").is_file():
            cli("generate_batch", out / "final", "--input", task_heldout, "--output", result / "task.jsonl", *gen)
        cli("evaluate_generations", "--input", result / "task.jsonl", "--reference", data / "heldout.teacher.jsonl",
            "--reference_field", "generations", "--items", "lines", "--output_dir", result / "fidelity")  # fmt: skip
        fidelity = json.loads((result / "fidelity" / "metrics.json").read_text())
        table[label] = {
            "nll_per_token": nll,
            "items_f1": fidelity["items"]["f1"],
            "rouge_l": fidelity["rougeL"],
        }
    size = _parameters(student) / 1e6
    lines = [f"| student ({size:.1f}M parameters, {args.steps} steps, {len(train)} teacher answers) | held-out NLL / "
             "token | task items F1 | task ROUGE-L |", "| --- | --- | --- | --- |"]  # fmt: skip
    for label, row in table.items():
        lines.append(f"| {label} | {row['nll_per_token']:.3f} | {row['items_f1']:.3f} | {row['rouge_l']:.3f} |")
    minutes = (time.perf_counter() - started) / 60
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "table.json").write_text(json.dumps({"steps": args.steps, "minutes": round(minutes, 1), "rows": table},
                                               indent=2))  # fmt: skip
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines) + f"\n\n({minutes:.1f} min)")


if __name__ == "__main__":
    main()
