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
from litgpt_ext.gguf.reader import GGUFInfo, check_convertible, read_gguf
from litgpt_ext.gguf.tokenizer import read_back_check, write_tokenizer_files
from litgpt_ext.io import atomic_dir, atomic_write_json

CONVERTER_VERSION = 1
"""Bumped whenever the files written change, so checkpoints cached by an older converter are rebuilt."""
INSTRUCT_MARKS = ("instruct", "-it", "chat")
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


def _shape(info: GGUFInfo) -> dict:
    """The GGUF hyperparameters under litgpt's ``Config`` names."""
    return {
        "n_layer": info.get("block_count"),
        "n_embd": info.get("embedding_length"),
        "n_head": info.get("attention.head_count"),
        "n_query_groups": info.get("attention.head_count_kv", info.get("attention.head_count")),
        "intermediate_size": info.get("feed_forward_length"),
        "vocab_size": info.get("vocab_size", len(info.tokens)),
    }


def _differences(config, shape: dict) -> list[str]:
    return [f"{k} {getattr(config, k)} != {v}" for k, v in shape.items() if v is not None and getattr(config, k) != v]


def litgpt_config(info: GGUFInfo, model_name: str | None):
    """The litgpt ``Config`` for this file: ``model_name``'s (checked against the file's shape), else the one
    config of the file's shape and family whose name its metadata (basename, size) points to — the instruct variant
    when the file carries a chat template."""
    from litgpt.config import Config, configs

    shape = _shape(info)
    if model_name is not None:
        try:
            config = Config.from_name(model_name)
        except (ValueError, KeyError):
            raise UserError(f"{model_name!r} is not a litgpt config name", field="model_name") from None
        wrong = _differences(config, shape)
        if wrong:
            raise UserError(f"{model_name!r} does not have this file's shape: {', '.join(wrong)}", field="model_name")
        return config
    same = []
    for entry in configs:
        config = Config(**entry)
        if (
            config.mlp_class_name == "LLaMAMLP"
            and config.norm_class_name == "RMSNorm"
            and not _differences(config, shape)
        ):
            same.append(config)
    hints = [str(info.metadata.get(k, "")).lower() for k in ("general.basename", "general.size_label")]
    named = [c for c in same if all(h in c.name.lower() for h in hints if h)] or same
    instruct = info.chat_template is not None
    kind = [c for c in named if any(m in c.name.lower() for m in INSTRUCT_MARKS) == instruct]
    chosen = kind or named
    if len(chosen) != 1:
        found = ", ".join(c.name for c in chosen[:8]) or "none"
        raise UserError(
            f"cannot tell which litgpt config this file is (configs of its shape: {found}): pass --model_name",
            path=info.path,
            field="model_name",
        )
    return chosen[0]


def _dequantize(info: GGUFInfo, hf_dir: Path, dtype: str) -> None:
    """The model as transformers loads the GGUF (dequantized), saved in safetensors for litgpt's converter."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(info.path.parent), gguf_file=info.path.name, dtype=getattr(torch, dtype)
    )
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
