"""``make prune-study``: prune the real SmolLM2-135M-Instruct to about half of its non-embedding weights, by depth
(30 -> 15 blocks) and by width (the same size: MLP 1536 -> 680 channels, 3 -> 2 key/value groups), then train each
student the same steps on the same data — the teacher's own greedy answers — by SFT and by KD from the uncut teacher,
next to a random-init student of the depth shape trained by KD. Measured on held-out prompts against the teacher:
forward KL and top-1 agreement (``evaluate_kd``), the demo task's items F1 against the teacher's greedy answers
from the same run (``evaluate_generations``) and ``generate_batch`` tokens/s at equal work (every row exactly
``--max_new_tokens`` tokens). Every step is the ``litgpt-ext`` command a user types.

The prompts: the demo task's 400 documents (its student prompt: three search queries per document; the 80 held-out
documents are held out here too) and questions about the demo corpus's towns. Outputs go to
``artifacts/runs/prune-study/``; ``table.md`` is what docs/pruning.md shows, ``table.json`` adds the minutes the run
took. ``--smoke`` runs every step of the study on a tiny instruct teacher it makes, a few documents and one training
step, in this process (``make test`` runs it: the study keeps working between its real runs).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill.demo_steps import litgpt_ext, litgpt_ext_in_process

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "artifacts" / "runs" / "prune-study"
TEACHER = REPO / "checkpoints" / "HuggingFaceTB" / "SmolLM2-135M-Instruct"


@dataclass
class Study:
    """Where a study runs and at what size: the real one (the defaults), or a smoke run of every step."""

    teacher: Path = TEACHER
    out: Path = OUT
    cli: object = litgpt_ext
    """How a step runs: each echoed and run as the user types it (a smoke run: in this process)."""
    documents: int | None = None
    """Demo documents to use (training and held-out each); None: all."""
    depth: list = field(default_factory=lambda: ["--n_layer", "15"])
    width: list = field(default_factory=lambda: ["--intermediate_size", "680", "--n_query_groups", "2"])
    calibration: int = 128
    batch: int = 8


def smoke_study(out: Path) -> Study:
    """A tiny instruct teacher (4 blocks, ChatML, its own BPE) and four documents: every step of the study, in
    seconds."""
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip
    teacher = out / "teacher"
    if not (teacher / "lit_model.pth").is_file():
        make_tiny_checkpoint(out_dir=teacher, corpus=REPO / "artifacts" / "demo" / "corpus.txt", n_layer=4,
                             n_embd=64, n_head=4, special_tokens=["<|im_start|>", "<|im_end|>"],
                             chat_template=template)  # fmt: skip
    return Study(teacher=teacher, out=out, cli=litgpt_ext_in_process, documents=4, depth=["--n_layer", "2"],
                 width=["--intermediate_size", "64", "--n_query_groups", "1"], calibration=4, batch=2)  # fmt: skip


def prompts(n_extra: int, documents: int | None = None) -> tuple[list[dict], list[dict]]:
    """(training prompts, held-out prompts): the demo documents under the demo task's student prompt, plus questions
    about the corpus's towns; the demo's 80 held-out documents and every tenth question are held out."""
    template = (REPO / "prompts" / "student_search_queries.md").read_text()
    docs = [json.loads(line) for line in (REPO / "artifacts/demo/records.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (REPO / "artifacts/demo/heldout.jsonl").read_text().splitlines()]
    docs, held = docs[:documents], held[:documents]

    def task(doc: dict) -> dict:
        return {"id": doc["id"], "prompt": template.format(**doc), "task": True}

    towns = sorted({doc["title"].split(",")[0] for doc in docs + held})
    asks = ["What is {t} known for?", "Describe {t} in one sentence.", "Where does {t} lie?",
            "Write a short travel tip for {t}.", "What do visitors remember about {t}?"]  # fmt: skip
    questions = [
        {"id": f"q{i}", "prompt": a.format(t=t)} for i, (t, a) in enumerate((t, a) for t in towns for a in asks)
    ]
    random.Random(0).shuffle(questions)
    questions = questions[:n_extra]
    train = [task(d) for d in docs] + [q for i, q in enumerate(questions) if i % 10]
    heldout = [task(d) for d in held] + [q for i, q in enumerate(questions) if not i % 10]
    return train, heldout


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def teacher_rows(prompts_file: Path, generations: Path) -> list[dict]:
    text = {r["id"]: r["prompt"] for r in map(json.loads, prompts_file.read_text().splitlines())}
    rows = []
    for r in map(json.loads, generations.read_text().splitlines()):
        if r.get("generations"):
            rows.append({"id": r["id"], "instruction": text[r["id"]], "output": r["generations"][0]})
    return rows


def teacher_data(study: Study, data: Path, questions: int, max_new_tokens: int) -> tuple[list[dict], Path, Path, list]:
    """The teacher's greedy answers to the study prompts (made once, then reused): (training prompts, the data
    directory whose ``sft/`` holds train.json + val.json of them, the held-out task prompts, the generation flags)."""
    if not (study.teacher / "lit_model.pth").is_file():
        subprocess.run([sys.executable, "-m", "litgpt_ext.gguf.smollm2", str(study.teacher)], check=True, cwd=REPO)
    train, heldout = prompts(questions, study.documents)
    gen = ["--max_new_tokens", max_new_tokens, "--temperature", 0, "--precision", "32-true", "--max_batch_size", 32]
    for name, rows in (("train", train), ("heldout", heldout)):
        source = write_jsonl(data / f"{name}.prompts.jsonl", rows)
        if not (data / f"{name}.teacher.jsonl").is_file():
            study.cli("generate_batch", study.teacher, "--input", source, "--output",
                      data / f"{name}.teacher.jsonl", *gen)  # fmt: skip
    (data / "sft").mkdir(exist_ok=True)
    for split, name in (("train", "train"), ("val", "heldout")):
        rows = teacher_rows(data / f"{name}.prompts.jsonl", data / f"{name}.teacher.jsonl")
        (data / "sft" / f"{split}.json").write_text(json.dumps(rows))
    task_heldout = write_jsonl(data / "task.prompts.jsonl", [r for r in heldout if r.get("task")])
    return train, data, task_heldout, gen


def random_init(like: Path, out: Path) -> Path:
    """A student of ``like``'s shape with fresh weights (GPT-2-style init, embeddings tied as the teacher's)."""
    import shutil

    import torch
    from litgpt.config import Config
    from litgpt.model import GPT

    from litgpt_ext.tiny_checkpoint import _init_weights

    if (out / "lit_model.pth").is_file():
        return out
    shutil.copytree(like, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("prune_*"))  # not its scores
    config = Config.from_file(like / "model_config.yaml")
    torch.manual_seed(0)
    gpt = GPT(config)
    _init_weights(gpt, config.n_layer)
    state = gpt.state_dict()
    state["lm_head.weight"] = state["transformer.wte.weight"]
    torch.save(state, out / "lit_model.pth")
    return out


def study_arguments(description: str, out: Path = OUT) -> tuple[argparse.Namespace, Study]:
    """The flags of a study on the demo task's prompts (this one, the store study), parsed, and where it runs: the
    real teacher, or with ``--smoke DIR`` the tiny one and the smallest sizes."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps of every student")
    parser.add_argument("--questions", type=int, default=400, help="town questions added to the 400 documents")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--smoke", type=Path, default=None, metavar="DIR",
                        help="every step on a tiny teacher, in DIR: checks the study's script only")  # fmt: skip
    args = parser.parse_args()
    if not args.smoke:
        return args, Study(out=out)
    args.steps, args.questions, args.max_new_tokens = 1, 10, 4
    return args, smoke_study(args.smoke)


def main() -> None:
    args, study = study_arguments(__doc__)
    run(study, args.steps, args.questions, args.max_new_tokens)


def run(study: Study, steps: int, questions: int, max_new_tokens: int) -> dict:
    started, out, cli, teacher = time.perf_counter(), study.out, study.cli, study.teacher
    train, data, task_heldout, gen = teacher_data(study, out / "data", questions, max_new_tokens)

    students = {}
    for shape, flags in (("depth", study.depth), ("width", study.width)):
        pruned = out / f"pruned-{shape}"
        if not (pruned / "lit_model.pth").is_file():
            cli("prune", teacher, "--out_dir", pruned, "--data", data / "sft" / "train.json", "--data.prompt_style",
                "chat_template", *flags, "--calibration_samples", study.calibration, "--max_seq_length", 192)  # fmt: skip
        students[f"{shape}: pruned, no training"] = pruned
    random_student = random_init(out / "pruned-depth", out / "random-depth")
    students["random init (depth shape), no training"] = random_student
    common = ["--data", data / "sft", "--data.prompt_style", "chat_template", "--mode", "full", "--precision",
              "32-true", "--train.max_steps", steps, "--train.epochs", "null", "--train.global_batch_size",
              study.batch, "--train.micro_batch_size", study.batch, "--train.lr_warmup_steps", min(5, steps - 1),
              "--train.log_interval", 10, "--eval.interval", 10_000, "--eval.final_validation", "false",
              "--optimizer.lr", 3e-4, "--train.max_seq_length", 192]  # fmt: skip
    runs = [("depth", "sft", out / "pruned-depth"), ("depth", "kd", out / "pruned-depth"),
            ("width", "sft", out / "pruned-width"), ("width", "kd", out / "pruned-width"),
            ("random", "kd", random_student)]  # fmt: skip
    for shape, method, start in runs:
        trained = out / f"{shape}-{method}"
        if not (trained / "final" / "lit_model.pth").is_file():
            if method == "sft":
                cli("finetune_sft", start, "--out_dir", trained, *common)
            else:
                cli("finetune_kd", start, "--teacher", teacher, "--kd_ratio", 1.0, "--out_dir", trained, *common)
        label = f"{shape}: pruned + {method.upper()}" if shape != "random" else "random init (depth shape) + KD"
        students[label] = trained / "final"

    table = {}
    for label, model in {"teacher": teacher, **students}.items():
        key = (
            label.replace(" ", "_")
            .replace(":", "")
            .replace(",", "")
            .replace("+", "plus")
            .replace("(", "")
            .replace(")", "")
        )
        result = out / "eval" / key
        result.mkdir(parents=True, exist_ok=True)
        kl = None
        if model != teacher and not (result / "kl.json").is_file():
            cli("evaluate_kd", model, "--teacher", teacher, "--data", data / "sft", "--data.prompt_style",
                "chat_template", "--split", "val", "--precision", "32-true", "--output", result / "kl.json")  # fmt: skip
        if model != teacher:
            kl = json.loads((result / "kl.json").read_text())
        if not (result / "task.jsonl").is_file():  # greedy answers, the teacher's first: the reference of the others
            cli("generate_batch", model, "--input", task_heldout, "--output", result / "task.jsonl", *gen)
        cli("evaluate_generations", "--input", result / "task.jsonl", "--reference", out / "eval" / "teacher" /
            "task.jsonl", "--reference_field", "generations", "--items", "lines", "--output_dir",
            result / "fidelity")  # fmt: skip
        fidelity = json.loads((result / "fidelity" / "metrics.json").read_text())
        # speed at equal work: every row generates exactly max_new_tokens (answers of different lengths would
        # weigh prefill differently), alone on the machine
        (result / "speed.jsonl").unlink(missing_ok=True)
        cli("generate_batch", model, "--input", task_heldout, "--output", result / "speed.jsonl", *gen,
            "--min_new_tokens", max_new_tokens)  # fmt: skip
        stats = json.loads((result / "speed.stats.json").read_text())
        params = _parameters(model)
        table[label] = {
            "parameters": params,
            "forward_kl": kl["forward_kl"] if kl else 0.0,
            "top1_agreement": kl["top1_agreement"] if kl else 1.0,
            "items_f1": fidelity["items"]["f1"],
            "tokens_per_s": stats["tokens_per_s"],
        }
    teacher_speed = table["teacher"]["tokens_per_s"]
    lines = [f"| student ({steps} steps each, {len(train)} teacher answers) | parameters | held-out KL(t‖s) | "
             "top-1 agreement | task items F1 | generate tokens/s |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for label, row in table.items():
        lines.append(f"| {label} | {row['parameters'] / 1e6:.1f}M | {row['forward_kl']:.3f} | "
                     f"{row['top1_agreement']:.3f} | {row['items_f1']:.3f} | {row['tokens_per_s']:.0f} "
                     f"({row['tokens_per_s'] / teacher_speed:.2f}×) |")  # fmt: skip
    return write_table(out, steps, started, table, lines)


def write_table(out: Path, steps: int, started: float, table: dict, lines: list[str]) -> dict:
    """A study's ``table.md`` (what its docs page shows) and ``table.json`` (with the minutes the run took)."""
    minutes = (time.perf_counter() - started) / 60
    result = {"steps": steps, "minutes": round(minutes, 1), "rows": table}
    (out / "table.json").write_text(json.dumps(result, indent=2))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines) + f"\n\n({minutes:.1f} min)")
    return result


def _parameters(checkpoint: Path) -> int:
    import torch

    from litgpt_ext.model.tied import state_is_tied

    state = torch.load(checkpoint / "lit_model.pth", mmap=True, weights_only=True)
    state = state.get("model", state)
    total = sum(t.numel() for t in state.values())
    return total - (state["lm_head.weight"].numel() if state_is_tied(state) else 0)


if __name__ == "__main__":
    main()
