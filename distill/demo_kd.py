"""The demo's logit-distillation stage: a smaller student of the distilled student, trained the same steps five ways
(SFT on the teacher's text, KD with forward KL — online and from a stored top-20 — and with skew KL, on-policy KD) and
measured against its teacher on the held-out records."""

from __future__ import annotations

from pathlib import Path

from distill.demo_steps import RUN, TINY, litgpt_ext, litgpt_ext_side_by_side, rel

KD_STEPS = 300


ONPOLICY_STEPS = 100


KD_ROWS = {
    "sft": "SFT on the teacher's text",
    "kd": "KD (forward KL, tau 2, alpha 0.5)",
    "offline": "KD offline: stored top-20 + tail",
    "skew": "KD (skew KL a 0.1, tau 2, alpha 0.5)",
    "onpolicy": f"SFT + {ONPOLICY_STEPS} on-policy (lambda 1, rev. KL)",
}


def format_kd_table(table: dict) -> str:
    """The distillation comparison: a smaller student against its teacher on the held-out records."""
    lines = [
        f"== logit distillation: a 1-layer student of the distilled student, {KD_STEPS} steps each "
        f"(on-policy: +{ONPOLICY_STEPS} from the SFT one), 80 held-out records ==",
        f"  {'':<38} {'KL(t||s)':>9} {'KL(s||t)':>9} {'top-1 agr.':>11} {'items F1':>9} {'exact':>7}",
    ]
    for name, row in table.items():
        lines.append(
            f"  {KD_ROWS.get(name, name):<38} {row['forward_kl']:>9.4f} {row['reverse_kl']:>9.4f} "
            f"{row['top1_agreement']:>11.4f} {row['items_f1']:>9.3f} {row['exact_match']:>7.3f}"
        )
    return "\n".join(lines)


def teacher_text_data(prompts: Path, generations: Path) -> list[dict]:
    """litgpt JSON rows (``instruction`` = the prompt, ``output`` = the teacher's first generation), joined by id:
    a local teacher's answers as training data for its student."""
    import json

    text = {json.loads(line)["id"]: json.loads(line)["prompt"] for line in prompts.read_text().splitlines()}
    rows = []
    for line in generations.read_text().splitlines():
        row = json.loads(line)
        if row.get("generations"):
            rows.append({"id": row["id"], "instruction": text[row["id"]], "output": row["generations"][0]})
    return rows


def kd_stage(student: Path) -> list[tuple[str, Path]]:
    """Logit distillation against imitation: the distilled student becomes the teacher of a smaller student (1 layer,
    64 wide, the teacher's tokenizer), trained the same steps on the same prompts four ways — finetune_sft on the
    teacher's greedy answers, finetune_kd on its distribution over those answers (forward KL, and DistiLLM's skew
    KL), and finetune_kd on-policy (the
    student's own samples, scored by the teacher) — then measured on the 80 held-out records: KL to the teacher and
    top-1 agreement (evaluate_kd), and items F1 against the teacher's answers."""
    import json

    from litgpt_ext.io import atomic_write_json

    kd = RUN / "kd"
    teacher, data = TINY / "sft-distilled" / "final", kd / "data"
    # the teacher's answers (the pipeline's generate and fidelity stages) as litgpt JSON: train on the training
    # prompts' answers, measure on the held-out ones
    print("\n# the teacher's greedy answers as litgpt JSON (train.json: training prompts, val.json: held-out)")
    atomic_write_json(
        data / "train.json",
        teacher_text_data(TINY / "distilled" / "prompts.jsonl", TINY / "distilled_generations.jsonl"),
    )
    atomic_write_json(data / "val.json", teacher_text_data(TINY / "heldout" / "prompts.jsonl", TINY / "fidelity.jsonl"))
    small = kd / "student"
    if not (small / "lit_model.pth").is_file():
        litgpt_ext("make_tiny_checkpoint", "--out_dir", rel(small), "--n_layer", 1, "--n_embd", 64, "--n_head", 4,
                   "--tokenizer_from", rel(teacher))  # fmt: skip
    common = [
        "--data", rel(data), "--data.prompt_style", "default", "--mode", "full", "--precision", "32-true",
        "--train.max_steps", KD_STEPS, "--train.epochs", "null", "--train.global_batch_size", 16,
        "--train.micro_batch_size", 16, "--train.lr_warmup_steps", 10, "--train.log_interval", 100,
        "--eval.interval", 1000, "--eval.max_iters", 10, "--optimizer.lr", 3e-3,
    ]  # fmt: skip
    runs = {"sft": kd / "sft-on-text", "kd": kd / "kd", "offline": kd / "kd-offline", "skew": kd / "kd-skew",
            "onpolicy": kd / "kd-onpolicy"}  # fmt: skip
    # trained one after the other: each training uses every core (side by side they would contend for them)
    litgpt_ext("finetune_sft", rel(small), "--out_dir", rel(runs["sft"]), *common)
    litgpt_ext("finetune_kd", rel(small), "--teacher", rel(teacher), "--beta", 0.0, "--temperature", 2.0,
               "--kd_ratio", 0.5, "--out_dir", rel(runs["kd"]), *common)  # fmt: skip
    # the same KD from the teacher's top-20 (+ a tail bucket) stored once at the loss's temperature: no teacher in
    # memory while training
    import shutil

    shutil.rmtree(kd / "top20", ignore_errors=True)  # made again from this run's teacher
    litgpt_ext("distill_logprobs", rel(teacher), "--data", rel(data), "--data.prompt_style", "default", "--student",
               rel(small), "--top_k", 20, "--temperature", 2.0, "--out", rel(kd / "top20"))  # fmt: skip
    litgpt_ext("finetune_kd", rel(small), "--teacher_logprobs", rel(kd / "top20"), "--beta", 0.0, "--temperature",
               2.0, "--kd_ratio", 0.5, "--out_dir", rel(runs["offline"]), *common)  # fmt: skip
    # DistiLLM's skew KL: KL(p || 0.1 p + 0.9 q), the same teacher, temperature and mix
    litgpt_ext("finetune_kd", rel(small), "--teacher", rel(teacher), "--divergence", "skew_kl", "--skew_alpha", 0.1,
               "--temperature", 2.0, "--kd_ratio", 0.5, "--out_dir", rel(runs["skew"]), *common)  # fmt: skip
    # on-policy (GKD, lambda 1): every batch's answers are the student's own samples, scored by the teacher. As GKD
    # does, it starts from the SFT student: a random-init student's samples are noise the teacher cannot correct
    # (measured: from scratch at 300 steps it ends at KL 3.6, items F1 0)
    onpolicy = [*common[: common.index("--train.max_steps")], "--train.max_steps", ONPOLICY_STEPS,
                *common[common.index("--train.max_steps") + 2 :]]  # fmt: skip
    litgpt_ext("finetune_kd", rel(runs["sft"] / "final"), "--teacher", rel(teacher), "--lmbda", 1.0, "--beta", 1.0,
               "--kd_ratio", 1.0, "--gen.max_new_tokens", 32, "--out_dir", rel(runs["onpolicy"]),
               *onpolicy)  # fmt: skip
    for name in runs:
        (kd / f"{name}.heldout.jsonl").unlink(missing_ok=True)
    litgpt_ext_side_by_side(
        *[("evaluate_kd", rel(out / "final"), "--teacher", rel(teacher), "--data", rel(data), "--data.prompt_style",
           "default", "--split", "val", "--output", rel(kd / f"{name}.kl.json")) for name, out in runs.items()],
        *[("generate_batch", rel(out / "final"), "--input", rel(TINY / "heldout" / "prompts.jsonl"), "--output",
           rel(kd / f"{name}.heldout.jsonl"), "--max_new_tokens", 32, "--temperature", 0, "--precision", "32-true")
          for name, out in runs.items()],
    )  # fmt: skip
    litgpt_ext_side_by_side(
        *[("evaluate_generations", "--input", rel(kd / f"{name}.heldout.jsonl"), "--reference",
           rel(TINY / "fidelity.jsonl"), "--reference_field", "generations", "--items", "lines", "--output_dir",
           rel(kd / f"{name}.fidelity")) for name in runs]
    )  # fmt: skip
    table = {}
    for name in runs:
        kl = json.loads((kd / f"{name}.kl.json").read_text())
        fidelity = json.loads((kd / f"{name}.fidelity" / "metrics.json").read_text())
        table[name] = {
            "forward_kl": kl["forward_kl"],
            "reverse_kl": kl["reverse_kl"],
            "top1_agreement": kl["top1_agreement"],
            "items_f1": fidelity["items"]["f1"],
            "exact_match": fidelity["exact_match"],
        }
    atomic_write_json(kd / "comparison.json", table)
    return [("logit distillation vs SFT on the teacher's text", kd / "comparison.json")]
