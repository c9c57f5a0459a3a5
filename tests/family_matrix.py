"""``make families``: every litgpt family shape through the main commands, as a user would run them, and the table
``docs/models.md`` shows.

Each family is a scaled-down litgpt config of a real model (``make_tiny_checkpoint --like NAME``: 2 layers, 64 wide,
random init, the real architecture). For each: ``finetune_sft`` LoRA and full (one step), the reward heads
(``finetune_orm`` and ``finetune_prm``, LoRA, one step), ``generate_batch`` (greedy, 4 tokens) and ``export_hf``. A cell is ``ok``, or the one-line refusal the command gave (exit 2), or ``TRACEBACK`` —
which must never appear; an export is ``ok`` only when transformers loads it cleanly with litgpt's logits (else
``WRONG: ...``, which must not appear either). The whole matrix is not part of ``make test`` (``tests/test_families.py``
and ``tests/test_export_hf.py`` test the equalities behind the ``ok`` cells for the families that needed work);
``--smoke`` runs two families through every cell in this process, which ``make test`` does. The run prints the
minutes it took; docs/models.md quotes that.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {
    "Llama-3.2-1B": "Llama 3 (RoPE scaling, tied)",
    "Llama-3.1-8B": "Llama 3.1 (GQA, RoPE scaling)",
    "SmolLM2-135M-Instruct": "SmolLM2 (tied, ChatML)",
    "Mistral-7B-v0.1": "Mistral (sliding window)",
    "Qwen2.5-0.5B": "Qwen2.5 (qkv bias)",
    "Qwen3-0.6B": "Qwen3 (qk-norm)",
    "Qwen3-30B-A3B": "Qwen3-MoE",
    "Mixtral-8x7B-v0.1": "Mixtral (MoE)",
    "Gemma-2-2b": "Gemma 2 (softcapping, alternating sliding window)",
    "gemma-3-1b-it": "Gemma 3 (sliding window pattern, qk-norm)",
    "Phi-3-mini-4k-instruct": "Phi-3",
    "phi-2": "phi-2 (parallel residual, LM-head bias)",
    "falcon-7b": "Falcon (parallel residual, shared norm)",
    "OLMo-2-1124-7B": "OLMo 2 (qk-norm over all heads, post-norms)",
    "pythia-14m": "Pythia (GPT-NeoX)",
    "Falcon3-1B-Base": "Falcon 3 / Llama 2 / TinyLlama shape (plain RoPE)",
    "stablelm-3b-4e1t": "StableLM 3B (partial rotary, LayerNorm)",
    "falcon-40b": "Falcon 40B (parallel residual, two norms)",
    "OLMo-1B-hf": "OLMo 1 (non-parametric LayerNorm)",
    "Gemma-2b": "Gemma 1 (multi-query)",
    "Gemma-7b": "Gemma 1 7B",
    "Gemma-3-4b-it": "Gemma 3 4B (RoPE scaling on global layers)",
    "Phi-4-mini-instruct": "Phi-4-mini (partial rotary, LongRoPE)",
}
"""One scaled-down config per distinct architecture among litgpt's 210 configs (20 shapes: MLP / norm classes,
residual layout, biases, qk-norm, softcapping, window pattern, RoPE adjustments, partial rotary, experts, post-norms,
embedding scaling, multi-query), plus SmolLM2, Llama 3.2 and Pythia by name."""


IN_PROCESS = False
"""``--smoke``: cells run in this process (no interpreter per cell)."""


def cell(args: list[str]) -> str:
    if IN_PROCESS:
        result = _in_process(args)
    else:
        result = subprocess.run([sys.executable, "-m", "litgpt_ext", *args], cwd=REPO, capture_output=True, text=True)
    if result.returncode == 0:
        return "ok"
    if "Traceback" in result.stderr:
        return "TRACEBACK"
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
    return last.removeprefix("error: ").split(": ", 1)[-1].split("; supported families")[0]


def _in_process(args: list[str]) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import traceback

    from litgpt_ext.cli import main_in_process

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main_in_process(args)
        except Exception:  # a bug: what a subprocess would print
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def exported(d: Path) -> str:
    """export_hf's cell: ``ok`` only when transformers loads the export with no missing or unexpected weight and
    gives litgpt's logits (1e-4) on a text longer than any scaled-down sliding window."""
    result = cell(["export_hf", str(d / "ckpt"), "--out_dir", str(d / "hf")])
    if result != "ok":
        return result
    import torch
    from litgpt.config import Config
    from litgpt.model import GPT
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(d / "hf", dtype=torch.float32, output_loading_info=True)
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        return f"WRONG: transformers reports { ({k: sorted(v)[:2] for k, v in info.items() if v}) }"
    lit = GPT(Config.from_file(d / "ckpt" / "model_config.yaml"))
    lit.load_state_dict(torch.load(d / "ckpt" / "lit_model.pth", weights_only=True))
    ids = torch.randint(4, 400, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((model.eval()(ids).logits - lit.eval()(ids)).abs().max())
    return "ok" if diff < 1e-4 else f"WRONG: logits {diff:.1e} off litgpt's"


def _reward_rows(tmp: Path) -> tuple[str, str]:
    """Four labelled candidates of two questions (ORM rows) and their steps (PRM rows)."""
    import json

    orm, prm = tmp / "orm", tmp / "prm"  # train.jsonl and val.jsonl: the same rows (one step is all that runs)
    candidates = [("q1", "Who sells lamps?", "Ivel sells lamps.", 1), ("q1", "Who sells lamps?", "Nobody.", 0),
                  ("q2", "What is 2 + 2?", "It is 4.", 1), ("q2", "What is 2 + 2?", "It is 5.", 0)]  # fmt: skip
    orm_text = "".join(json.dumps({"prompt": q, "response": a, "label": y, "question_id": g}) + "\n"
                       for g, q, a, y in candidates)  # fmt: skip
    prm_text = "".join(json.dumps({"prompt": q, "completions": ["First,", a], "labels": [True, bool(y)],
                                   "question_id": g}) + "\n" for g, q, a, y in candidates)  # fmt: skip
    for folder, text in ((orm, orm_text), (prm, prm_text)):
        folder.mkdir()
        (folder / "train.jsonl").write_text(text)
        (folder / "val.jsonl").write_text(text)
    return str(orm), str(prm)


def _pair(orm: str, prm: str) -> str:
    return "ok" if orm == prm == "ok" else f"orm: {orm}; prm: {prm}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="litgpt config names (default: all)")
    parser.add_argument("--smoke", action="store_true", help="two families, in this process: checks the script only")
    args = parser.parse_args()
    if args.smoke:
        global IN_PROCESS
        IN_PROCESS, args.only = True, args.only or ["SmolLM2-135M-Instruct", "Gemma-2-2b"]
    import time

    started = time.perf_counter()
    steps = ["--train.max_steps", "1", "--train.epochs", "null", "--train.global_batch_size", "2",
             "--train.micro_batch_size", "2", "--eval.interval", "100", "--eval.final_validation", "false",
             "--precision", "32-true"]  # fmt: skip
    rows = ["| family (litgpt config) | finetune LoRA | finetune full | orm / prm heads | generate_batch | export_hf |",
            "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        orm_rows, prm_rows = _reward_rows(Path(tmp))
        for name in args.only or FAMILIES:
            d = Path(tmp) / name
            made = cell(["make_tiny_checkpoint", "--out_dir", str(d / "ckpt"), "--like", name])
            if made != "ok":
                rows.append(f"| {FAMILIES.get(name, name)} (`{name}`) | {made} | | | | |")
                continue
            (d / "p.jsonl").write_text('{"id": "a", "prompt": "What does Ivel sell?"}\n')
            data = str(REPO / "artifacts/demo/qa.json")
            cells = [
                cell(["finetune_sft", str(d / "ckpt"), "--data", data, "--out_dir", str(d / "lora"), "--mode", "lora",
                      *steps]),
                cell(["finetune_sft", str(d / "ckpt"), "--data", data, "--out_dir", str(d / "full"), "--mode", "full",
                      *steps]),
                _pair(cell(["finetune_orm", str(d / "ckpt"), "--data", orm_rows, "--out_dir", str(d / "orm"), *steps]),
                      cell(["finetune_prm", str(d / "ckpt"), "--data", prm_rows, "--out_dir", str(d / "prm"), *steps])),
                cell(["generate_batch", str(d / "ckpt"), "--input", str(d / "p.jsonl"), "--output", str(d / "g.jsonl"),
                      "--max_new_tokens", "4", "--temperature", "0", "--precision", "32-true"]),
                exported(d),
            ]  # fmt: skip
            rows.append(f"| {FAMILIES.get(name, name)} (`{name}`) | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows) + f"\n\n({(time.perf_counter() - started) / 60:.1f} min)")
    if any("TRACEBACK" in row or "WRONG" in row for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
