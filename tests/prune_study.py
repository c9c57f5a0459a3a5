"""``make prune-study``: prune the real SmolLM2-135M-Instruct to about half of its non-embedding weights, by depth
(30 -> 15 blocks) and by width (the same size: MLP 1536 -> 680 channels, 3 -> 2 key/value groups), then train each
student the same steps on the same data — the teacher's own greedy answers — by SFT and by KD from the uncut teacher,
next to a random-init student of the depth shape trained by KD. Measured on held-out prompts against the teacher:
forward KL and top-1 agreement (``evaluate_kd``), the demo task's items F1 against the teacher's greedy answers
from the same run (``evaluate_generations``) and ``generate_batch`` tokens/s at equal work (every row exactly
``--max_new_tokens`` tokens). Every step is the ``litgpt-ext`` command a user types.

The prompts: the demo task's 400 documents (its student prompt: three search queries per document; the 80 held-out
documents are held out here too) and questions about the demo corpus's towns. Outputs go to
``artifacts/runs/prune-study/``; ``table.md`` is what docs/pruning.md shows.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from distill.demo_steps import litgpt_ext

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "artifacts" / "runs" / "prune-study"
TEACHER = REPO / "checkpoints" / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
cli = litgpt_ext  # each step echoed and run as the user types it
DEPTH = ["--n_layer", "15"]
WIDTH = ["--intermediate_size", "680", "--n_query_groups", "2"]


def prompts(n_extra: int) -> tuple[list[dict], list[dict]]:
    """(training prompts, held-out prompts): the demo documents under the demo task's student prompt, plus questions
    about the corpus's towns; the demo's 80 held-out documents and every tenth question are held out."""
    template = (REPO / "prompts" / "student_search_queries.md").read_text()
    docs = [json.loads(line) for line in (REPO / "artifacts/demo/records.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (REPO / "artifacts/demo/heldout.jsonl").read_text().splitlines()]

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


def teacher_data(data: Path, questions: int, max_new_tokens: int) -> tuple[list[dict], Path, Path, list]:
    """The teacher's greedy answers to the study prompts (made once, then reused): (training prompts, the data
    directory whose ``sft/`` holds train.json + val.json of them, the held-out task prompts, the generation flags)."""
    if not (TEACHER / "lit_model.pth").is_file():
        subprocess.run([sys.executable, "-m", "litgpt_ext.gguf.smollm2", str(TEACHER)], check=True, cwd=REPO)
    train, heldout = prompts(questions)
    gen = ["--max_new_tokens", max_new_tokens, "--temperature", 0, "--precision", "32-true", "--max_batch_size", 32]
    for name, rows in (("train", train), ("heldout", heldout)):
        source = write_jsonl(data / f"{name}.prompts.jsonl", rows)
        if not (data / f"{name}.teacher.jsonl").is_file():
            cli("generate_batch", TEACHER, "--input", source, "--output", data / f"{name}.teacher.jsonl", *gen)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps of every student")
    parser.add_argument("--questions", type=int, default=400, help="town questions added to the 400 documents")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    args = parser.parse_args()
    started = time.perf_counter()
    train, data, task_heldout, gen = teacher_data(OUT / "data", args.questions, args.max_new_tokens)

    students = {}
    for shape, flags in (("depth", DEPTH), ("width", WIDTH)):
        pruned = OUT / f"pruned-{shape}"
        if not (pruned / "lit_model.pth").is_file():
            cli("prune", TEACHER, "--out_dir", pruned, "--data", data / "sft" / "train.json", "--data.prompt_style",
                "chat_template", *flags, "--calibration_samples", 128, "--max_seq_length", 192)  # fmt: skip
        students[f"{shape}: pruned, no training"] = pruned
    random_student = random_init(OUT / "pruned-depth", OUT / "random-depth")
    common = ["--data", data / "sft", "--data.prompt_style", "chat_template", "--mode", "full", "--precision",
              "32-true", "--train.max_steps", args.steps, "--train.epochs", "null", "--train.global_batch_size", 8,
              "--train.micro_batch_size", 8, "--train.lr_warmup_steps", 5, "--train.log_interval", 10,
              "--eval.interval", 10_000, "--eval.final_validation", "false", "--optimizer.lr", 3e-4,
              "--train.max_seq_length", 192]  # fmt: skip
    runs = [("depth", "sft", OUT / "pruned-depth"), ("depth", "kd", OUT / "pruned-depth"),
            ("width", "sft", OUT / "pruned-width"), ("width", "kd", OUT / "pruned-width"),
            ("random", "kd", random_student)]  # fmt: skip
    for shape, method, start in runs:
        out = OUT / f"{shape}-{method}"
        if not (out / "final" / "lit_model.pth").is_file():
            if method == "sft":
                cli("finetune_sft", start, "--out_dir", out, *common)
            else:
                cli("finetune_kd", start, "--teacher", TEACHER, "--kd_ratio", 1.0, "--out_dir", out, *common)
        label = f"{shape}: pruned + {method.upper()}" if shape != "random" else "random init (depth shape) + KD"
        students[label] = out / "final"

    table = {}
    for label, model in {"teacher": TEACHER, **students}.items():
        key = (
            label.replace(" ", "_")
            .replace(":", "")
            .replace(",", "")
            .replace("+", "plus")
            .replace("(", "")
            .replace(")", "")
        )
        result = OUT / "eval" / key
        result.mkdir(parents=True, exist_ok=True)
        kl = None
        if model != TEACHER and not (result / "kl.json").is_file():
            cli("evaluate_kd", model, "--teacher", TEACHER, "--data", data / "sft", "--data.prompt_style",
                "chat_template", "--split", "val", "--precision", "32-true", "--output", result / "kl.json")  # fmt: skip
        if model != TEACHER:
            kl = json.loads((result / "kl.json").read_text())
        if not (result / "task.jsonl").is_file():  # greedy answers, the teacher's first: the reference of the others
            cli("generate_batch", model, "--input", task_heldout, "--output", result / "task.jsonl", *gen)
        cli("evaluate_generations", "--input", result / "task.jsonl", "--reference", OUT / "eval" / "teacher" /
            "task.jsonl", "--reference_field", "generations", "--items", "lines", "--output_dir",
            result / "fidelity")  # fmt: skip
        fidelity = json.loads((result / "fidelity" / "metrics.json").read_text())
        # speed at equal work: every row generates exactly max_new_tokens (answers of different lengths would
        # weigh prefill differently), alone on the machine
        (result / "speed.jsonl").unlink(missing_ok=True)
        cli("generate_batch", model, "--input", task_heldout, "--output", result / "speed.jsonl", *gen,
            "--min_new_tokens", args.max_new_tokens)  # fmt: skip
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
    lines = [f"| student ({args.steps} steps each, {len(train)} teacher answers) | parameters | held-out KL(t‖s) | "
             "top-1 agreement | task items F1 | generate tokens/s |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for label, row in table.items():
        lines.append(f"| {label} | {row['parameters'] / 1e6:.1f}M | {row['forward_kl']:.3f} | "
                     f"{row['top1_agreement']:.3f} | {row['items_f1']:.3f} | {row['tokens_per_s']:.0f} "
                     f"({row['tokens_per_s'] / teacher_speed:.2f}×) |")  # fmt: skip
    minutes = (time.perf_counter() - started) / 60
    (OUT / "table.json").write_text(
        json.dumps({"steps": args.steps, "minutes": round(minutes, 1), "rows": table}, indent=2)
    )
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines) + f"\n\n({minutes:.1f} min)")


def _parameters(checkpoint: Path) -> int:
    import torch

    from litgpt_ext.model.tied import state_is_tied

    state = torch.load(checkpoint / "lit_model.pth", mmap=True, weights_only=True)
    state = state.get("model", state)
    total = sum(t.numel() for t in state.values())
    return total - (state["lm_head.weight"].numel() if state_is_tied(state) else 0)


if __name__ == "__main__":
    main()
