"""``make xtok-study``: distil the real SmolLM2-135M-Instruct (byte-level BPE, 49,152 tokens, ChatML template) into a
small student with another tokenizer — the project's own byte-level BPE trained on the demo corpus (asked for 4,096
tokens, the 185 kB corpus gives 748), random init, no chat template (its prompts render in Alpaca) — by SFT on the teacher's text and by cross-tokenizer
KD (``--cross_tokenizer uld`` and ``align``), the same steps, data and flags.

The data are the prune study's (:func:`tests.prune_study.teacher_data`: the teacher's greedy answers to the demo
task's documents and to questions about the corpus's towns; made once and shared). Measured on the held-out
answers: the student's NLL per token of its own tokenizer (the final validation's ``val_ce_loss``; the three
students share the tokenizer, so the numbers compare), the KD students' top-1 agreement with the teacher on the
aligned spans (the final validation's ``val_top1_agreement``; SFT has no teacher distribution to agree with), and the
demo task's items F1 and ROUGE-L of the student's greedy answers against the teacher's (``evaluate_generations``).
Outputs go to ``artifacts/runs/xtok-study/``; ``table.md`` is what docs/logit-distillation.md shows, ``table.json``
adds the minutes the run took. ``--smoke DIR`` runs every step on the prune study's smoke teacher, in this process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tests.prune_study import OUT as PRUNE_OUT
from tests.prune_study import REPO, Study, _parameters, smoke_study, teacher_data

OUT = REPO / "artifacts" / "runs" / "xtok-study"


def student_init(out: Path, smoke: bool = False) -> Path:
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    size = (
        {"vocab_size": 1024, "n_layer": 1, "n_embd": 64} if smoke else {"vocab_size": 4096, "n_layer": 4, "n_embd": 256}
    )
    if not (out / "lit_model.pth").is_file():
        make_tiny_checkpoint(out_dir=out, corpus=REPO / "artifacts" / "demo" / "corpus.txt", tokenizer="bpe",
                             n_head=4, block_size=512, seed=0, **size)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of every student")
    parser.add_argument("--questions", type=int, default=400, help="town questions added to the 400 documents")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--smoke", type=Path, default=None, metavar="DIR",
                        help="every step on a tiny teacher, in DIR: checks the study's script only")  # fmt: skip
    args = parser.parse_args()
    study, out = Study(), OUT
    if args.smoke:
        study, out = smoke_study(args.smoke), args.smoke / "xtok"
        args.steps, args.questions, args.max_new_tokens = 1, 10, 4
    run(study, out, args.steps, args.questions, args.max_new_tokens)


def run(study: Study, out_dir: Path, steps: int, questions: int, max_new_tokens: int) -> dict:
    started, cli, teacher = time.perf_counter(), study.cli, study.teacher
    data_dir = (PRUNE_OUT if study.out == PRUNE_OUT else study.out) / "data"
    train, data, task_heldout, gen = teacher_data(study, data_dir, questions, max_new_tokens)
    student = student_init(out_dir / "student-init", smoke=study.cli is not Study().cli)
    common = ["--data", data / "sft", "--mode", "full", "--precision", "32-true", "--train.max_steps", steps,
              "--train.epochs", "null", "--train.global_batch_size", study.batch, "--train.micro_batch_size",
              study.batch, "--train.lr_warmup_steps", min(10, steps - 1), "--train.log_interval", 10,
              "--eval.interval", 10_000, "--optimizer.lr", 2e-3, "--train.max_seq_length", 256]  # fmt: skip
    runs = {
        "SFT on the teacher's text": [],
        "cross-tokenizer KD, uld": ["--cross_tokenizer", "uld"],
        "cross-tokenizer KD, align": ["--cross_tokenizer", "align"],
        "cross-tokenizer KD, align, shared weight 0.9": ["--cross_tokenizer", "align", "--cross_shared_weight", 0.9],
    }
    table = {}
    for label, flags in runs.items():
        key = "sft" if not flags else "-".join(str(f).lstrip("-") for f in flags[1:])
        out = out_dir / key
        if not (out / "final" / "lit_model.pth").is_file():
            if flags:
                cli("finetune_kd", student, "--teacher", teacher, "--kd_ratio", 0.5, *flags, "--out_dir", out, *common)
            else:
                cli("finetune_sft", student, "--out_dir", out, *common)
        meta = json.loads((out / f"{'kd' if flags else 'sft'}_metadata.json").read_text())
        val = meta["final_val_metrics"]
        nll = val.get("val_ce_loss", val.get("val_loss"))
        result = out_dir / "eval" / key
        if not (result / "task.jsonl").is_file():
            cli("generate_batch", out / "final", "--input", task_heldout, "--output", result / "task.jsonl", *gen)
        cli("evaluate_generations", "--input", result / "task.jsonl", "--reference", data / "heldout.teacher.jsonl",
            "--reference_field", "generations", "--items", "lines", "--output_dir", result / "fidelity")  # fmt: skip
        fidelity = json.loads((result / "fidelity" / "metrics.json").read_text())
        table[label] = {
            "nll_per_token": nll,
            "top1_agreement": val.get("val_top1_agreement"),
            "items_f1": fidelity["items"]["f1"],
            "rouge_l": fidelity["rougeL"],
        }
    size = _parameters(student) / 1e6
    lines = [f"| student ({size:.1f}M parameters, {steps} steps, {len(train)} teacher answers) | held-out NLL / "
             "token | top-1 agreement | task items F1 | task ROUGE-L |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for label, row in table.items():
        top1 = "—" if row["top1_agreement"] is None else f"{row['top1_agreement']:.3f}"
        lines.append(f"| {label} | {row['nll_per_token']:.3f} | {top1} | {row['items_f1']:.3f} | "
                     f"{row['rouge_l']:.3f} |")  # fmt: skip
    minutes = (time.perf_counter() - started) / 60
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"steps": steps, "minutes": round(minutes, 1), "rows": table}
    (out_dir / "table.json").write_text(json.dumps(result, indent=2))
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines) + f"\n\n({minutes:.1f} min)")
    return result


if __name__ == "__main__":
    main()
