"""``litgpt-ext convert_gguf``: a GGUF file (llama.cpp, Ollama) -> a litgpt checkpoint directory.

The weights are dequantized by transformers' GGUF loader (gguf-py underneath) and converted by litgpt's own
``convert_hf_checkpoint``; the tokenizer files are written from the GGUF header (:mod:`litgpt_ext.gguf.tokenizer`),
the chat template is kept as ``chat_template.jinja``. The litgpt config is the one of the same shape whose name the
file's metadata points to (``--model_name`` picks it by hand). The directory is built under a ``.partial`` name and
renamed when complete.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

from litgpt_ext.errors import UserError
from litgpt_ext.gguf.configs import litgpt_config, registered, shape_of
from litgpt_ext.gguf.reader import GGUFInfo, check_convertible, check_tensor_shapes, read_gguf
from litgpt_ext.gguf.tokenizer import read_back_check, write_tokenizer_files
from litgpt_ext.io import atomic_dir, atomic_write_json

CONVERTER_VERSION = 1
"""Bumped whenever the files written change, so checkpoints cached by an older converter are rebuilt."""
ROUND_TRIP_PROBES = [
    "Hello, world! 12345 + 678 = 13023",
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "Unicode: héllo wörld, 日本語, emoji 🙂, math ∑ x²",
    "code: def f(x):\n    return x ** 2  # comment",
]


def require_extra() -> None:
    """gguf (to read the file), transformers and accelerate (to dequantize it): the ``gguf`` extra of this package."""
    import importlib.util

    missing = [m for m in ("gguf", "transformers", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"needs {' and '.join(missing)}: pip install 'litgpt-distill[gguf]'", field="convert_gguf")


def _dequantize(info: GGUFInfo, hf_dir: Path, dtype: str) -> None:
    """The model as transformers loads the GGUF (dequantized), saved in safetensors for litgpt's converter. The
    head width comes from the file's ``attention.key_length`` where it has one (transformers' GGUF reader keeps
    its Qwen3 default of 128 otherwise)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    where = {"pretrained_model_name_or_path": str(info.path.parent), "gguf_file": info.path.name}
    config = AutoConfig.from_pretrained(**where)
    width = info.get("attention.key_length")
    if width is not None and hasattr(config, "head_dim"):
        config.head_dim = int(width)
    model = AutoModelForCausalLM.from_pretrained(**where, config=config, dtype=getattr(torch, dtype))
    model.save_pretrained(hf_dir)


def convert_gguf(
    gguf_file: Path,
    out_dir: Path | None = None,
    model_name: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    overwrite: bool = False,
) -> Path:
    """Convert a GGUF model file (llama.cpp, Ollama) into a litgpt checkpoint directory.

    Args:
        gguf_file: The ``.gguf`` file (an Ollama model's blob works too: ``~/.ollama/models/blobs/sha256-...``).
        out_dir: The checkpoint directory to write (default: ``checkpoints/ORG/NAME`` from the file's metadata).
        model_name: litgpt config name (``SmolLM2-135M-Instruct``); default: the config of the file's shape that
            its metadata names.
        dtype: Weights dtype of ``lit_model.pth``. Quantized tensors are dequantized to float32 first; float32
            keeps every value exactly.
        overwrite: Replace a non-empty out_dir.
    """
    started = time.perf_counter()
    require_extra()
    info = read_gguf(Path(gguf_file))
    check_convertible(info)
    check_tensor_shapes(info, shape_of(info))
    config = litgpt_config(info, model_name)
    org = config.hf_config.get("org") or str(info.metadata.get("general.organization") or "gguf")
    out_dir = Path(out_dir) if out_dir is not None else Path("checkpoints") / org / config.name
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError("exists and is not empty (pass --overwrite true to replace it)", path=out_dir, field="out_dir")
    quant = sorted(set(info.tensor_types.values()))
    print(
        f"{info.path.name}: {info.architecture}, {len(info.tensor_types)} tensors ({', '.join(quant)}) -> litgpt config {config.name}"
    )
    with atomic_dir(out_dir) as partial:
        ids = write_tokenizer_files(info, partial, config.block_size)
        read_back_check(partial, ROUND_TRIP_PROBES)
        with tempfile.TemporaryDirectory(dir=partial.parent, prefix=".convert_gguf.") as tmp:
            hf_dir = Path(tmp)
            _dequantize(info, hf_dir, dtype)
            from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint

            with registered(config):  # (a config derived from the file's metadata is known to litgpt meanwhile)
                convert_hf_checkpoint(hf_dir, model_name=config.name, dtype=dtype)
            for name in ("lit_model.pth", "model_config.yaml", "config.json"):
                shutil.move(hf_dir / name, partial / name)
        atomic_write_json(partial / "generation_config.json", {**ids, "_from_model_config": False})
        atomic_write_json(
            partial / "convert_gguf.json",
            {
                "converter_version": CONVERTER_VERSION,
                "source": info.path.name,
                "bytes": info.path.stat().st_size,
                "architecture": info.architecture,
                "tensor_types": quant,
                "model_name": config.name,
                "dtype": dtype,
                "chat_template": info.chat_template is not None,
            },
        )
    template = "chat template kept" if info.chat_template else "no chat template"
    print(f"converted in {time.perf_counter() - started:.1f}s -> {out_dir} ({template})")
    return out_dir
