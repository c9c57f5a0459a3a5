"""``make store-study``: which offline store of the real SmolLM2-135M-Instruct teacher trains a student closest to
full distillation at the same bytes — its top-k (k = 8, 20) or tokens drawn from it (``distill_logprobs --sampling
sample``, Random Sampling KD)?

The prune study's setting (:mod:`tests.prune_study`): the teacher's greedy answers to the demo task's documents and
questions about its towns, the student the teacher cut to 15 of its 30 blocks (``litgpt-ext prune``). Every student
starts from that cut and trains the same steps on the same data with pure distillation (``--kd_ratio 1``): from the
teacher online (the full distribution: the reference), from a top-k store, and from a sampled store whose draw
count is chosen so that its bytes per answer token match the top-k store's (the expected number of distinct tokens
among N draws, ``Σ_i 1 − (1 − p_i)^N``, computed on the teacher's own distributions over a sample of the training
positions). Measured on the held-out answers against the live teacher (``evaluate_kd``: forward KL, top-1 agreement)
and on the held-out task prompts (items F1 of the greedy answers against the teacher's), with each store's measured
bytes per answer token. Outputs in ``artifacts/runs/store-study/``; ``table.md`` is what docs/logit-distillation.md
shows. ``--smoke DIR`` runs every step on a tiny instruct teacher, in this process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.prune_study import OUT as PRUNE_OUT
from tests.prune_study import Study, study_arguments, teacher_data, write_table

OUT = PRUNE_OUT.parent / "store-study"
MAX_SEQ_LENGTH = 192


def expected_distinct(teacher: Path, data: Path, samples: int = 96) -> callable:
    """``N -> E[distinct tokens among N draws]`` averaged over every answer position of ``samples`` training samples
    drawn from the whole file, from the teacher's full distributions (fp32)."""
    import lightning as L
    import torch
    from litgpt.tokenizer import Tokenizer

    from litgpt_ext.data.batches import pad_collate
    from litgpt_ext.data.modules import datasets_of, ready_data
    from litgpt_ext.data.sft import SFTData
    from litgpt_ext.training.reference import load_frozen_model

    module = ready_data(
        SFTData(path=data, prompt_style="chat_template"), Tokenizer(teacher), teacher, 8, MAX_SEQ_LENGTH
    )
    train, _ = datasets_of(module)
    model = load_frozen_model(L.Fabric(accelerator="cpu", devices=1, precision="32-true"), teacher)
    # samples spread over the whole file (its task records come first, its open questions last: a prefix would
    # calibrate on the peaked ones only), then positions spread over theirs
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:samples].tolist()
    probs = []
    with torch.no_grad():
        for start in range(0, len(chosen), 8):
            batch = pad_collate([train[i] for i in chosen[start : start + 8]], 0, -100, MAX_SEQ_LENGTH)
            logits = model(batch["input_ids"][:, :-1])
            mask = batch["labels"][:, 1:] != -100
            probs.append(torch.softmax(logits[mask].double(), dim=-1))
    p = torch.cat(probs)
    return lambda n: float((1 - (1 - p).pow(n)).sum(-1).mean())


def draws_for(distinct: callable, entries: float) -> int:
    """The largest draw count whose expected distinct tokens stay at or under ``entries``."""
    n = 1
    while distinct(n * 2) <= entries:
        n *= 2
    lo, hi = n, n * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if distinct(mid) <= entries else (lo, mid)
    return lo


def run(study: Study, steps: int, questions: int, max_new_tokens: int, ks: tuple[int, ...]) -> dict:
    started, out, cli, teacher = time.perf_counter(), study.out, study.cli, study.teacher
    train, data, task_heldout, gen = teacher_data(study, out / "data", questions, max_new_tokens)
    sft = data / "sft"
    student = out / "pruned-depth"
    if not (student / "lit_model.pth").is_file():
        cli("prune", teacher, "--out_dir", student, "--data", sft / "train.json", "--data.prompt_style",
            "chat_template", *study.depth, "--calibration_samples", study.calibration, "--max_seq_length",
            MAX_SEQ_LENGTH)  # fmt: skip
    data_flags = ["--data", sft, "--data.prompt_style", "chat_template"]
    stores: dict[str, tuple[Path, list]] = {}
    distinct = None
    for k in ks:
        stores[f"top-{k}"] = (out / f"store-top{k}", ["--top_k", k])
        # top-k costs k (id int32, log-prob float16) pairs + tail and target (float32) per position; a sampled
        # position costs its distinct (id int32, count float16) pairs + width (int16), entropy, top and target:
        # equal bytes at k - 1 distinct tokens
        samples_file = out / f"samples-for-top{k}.json"
        if not samples_file.is_file():
            distinct = distinct or expected_distinct(teacher, sft)
            n = draws_for(distinct, k - 1)
            samples_file.write_text(json.dumps({"samples": n, "expected_distinct": distinct(n)}))
        n = json.loads(samples_file.read_text())["samples"]
        stores[f"sampled, {n} draws (bytes of top-{k})"] = (out / f"store-sample{k}", ["--sampling", "sample",
                                                                                       "--samples", n])  # fmt: skip
    for path, flags in stores.values():
        if not (path / "manifest.json").is_file():
            cli("distill_logprobs", teacher, *data_flags, "--out", path, "--student", student, "--max_seq_length",
                MAX_SEQ_LENGTH, "--precision", "32-true", *flags)  # fmt: skip
    common = [*data_flags, "--mode", "full", "--precision", "32-true", "--kd_ratio", 1.0, "--train.max_steps", steps,
              "--train.epochs", "null", "--train.global_batch_size", study.batch, "--train.micro_batch_size",
              study.batch, "--train.lr_warmup_steps", min(5, steps - 1), "--train.log_interval", 10,
              "--eval.interval", 10_000, "--eval.final_validation", "false", "--optimizer.lr", 3e-4,
              "--train.max_seq_length", MAX_SEQ_LENGTH]  # fmt: skip
    students = {"pruned, no training": (student, None)}
    runs = {"online KD (full distribution)": ["--teacher", teacher]}
    runs |= {f"offline {label}": ["--teacher_logprobs", path] for label, (path, _) in stores.items()}
    for i, (label, source) in enumerate(runs.items()):
        trained = out / f"student-{i}"
        if not (trained / "final" / "lit_model.pth").is_file():
            cli("finetune_kd", student, *source, "--out_dir", trained, *common)
        store = source[1] if source[0] == "--teacher_logprobs" else None
        students[label] = (trained / "final", store)

    reference = out / "eval" / "teacher" / "task.jsonl"
    if not reference.is_file():
        reference.parent.mkdir(parents=True, exist_ok=True)
        cli("generate_batch", teacher, "--input", task_heldout, "--output", reference, *gen)
    table = {}
    for i, (label, (model, store)) in enumerate(students.items()):
        result = out / "eval" / f"student-{i}"
        result.mkdir(parents=True, exist_ok=True)
        if not (result / "kl.json").is_file():
            cli("evaluate_kd", model, "--teacher", teacher, *data_flags, "--split", "val", "--precision", "32-true",
                "--max_seq_length", MAX_SEQ_LENGTH, "--output", result / "kl.json")  # fmt: skip
        if not (result / "task.jsonl").is_file():
            cli("generate_batch", model, "--input", task_heldout, "--output", result / "task.jsonl", *gen)
        cli("evaluate_generations", "--input", result / "task.jsonl", "--reference", reference, "--reference_field",
            "generations", "--items", "lines", "--output_dir", result / "fidelity")  # fmt: skip
        kl = json.loads((result / "kl.json").read_text())
        fidelity = json.loads((result / "fidelity" / "metrics.json").read_text())
        row = {"forward_kl": kl["forward_kl"], "reverse_kl": kl["reverse_kl"],
               "top1_agreement": kl["top1_agreement"], "items_f1": fidelity["items"]["f1"]}  # fmt: skip
        if store is not None:
            manifest = json.loads((Path(store) / "manifest.json").read_text())
            row["bytes_per_answer_token"] = sum(manifest["bytes"].values()) / sum(manifest["positions"].values())
            if "entries" in manifest:
                row["distinct_per_position"] = sum(manifest["entries"].values()) / sum(manifest["positions"].values())
        table[label] = row
    full = table["online KD (full distribution)"]["forward_kl"]
    lines = [f"| student (the teacher cut to {study.depth[1]} blocks, {steps} steps each, {len(train)} teacher answers) | "
             "store bytes per answer "
             "token | held-out KL(t‖s) | vs online KD | top-1 agreement | task items F1 |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for label, row in table.items():
        size = f"{row['bytes_per_answer_token']:.1f}" if "bytes_per_answer_token" in row else "—"
        if "distinct_per_position" in row:
            size += f" ({row['distinct_per_position']:.1f} distinct tokens)"
        lines.append(f"| {label} | {size} | {row['forward_kl']:.4f} | {row['forward_kl'] / full:.2f}× | "
                     f"{row['top1_agreement']:.3f} | {row['items_f1']:.3f} |")  # fmt: skip
    return write_table(out, steps, started, table, lines)


def main() -> None:
    args, study = study_arguments(__doc__, OUT)
    run(study, args.steps, args.questions, args.max_new_tokens, (4,) if args.smoke else (8, 20))


if __name__ == "__main__":
    main()
