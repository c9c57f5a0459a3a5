"""Tokenizer files for the export, set up so ``AutoTokenizer`` encodes text to the same ids as litgpt.

litgpt decides BOS itself (``Tokenizer.use_bos``); transformers adds it only if the tokenizer says so. When litgpt
adds BOS and ``tokenizer.json`` has no post-processor doing it, one is added to the exported copy, and
``tokenizer_config.json`` gets ``add_bos_token`` / the special tokens spelled out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from litgpt.tokenizer import Tokenizer

from litgpt_ext.io import atomic_write_json


def _token_text(tok: Tokenizer, token_id: int | None) -> str | None:
    if token_id is None:
        return None
    if tok.backend == "huggingface":
        return tok.processor.id_to_token(token_id)
    return tok.processor.id_to_piece(token_id)


def export_tokenizer(checkpoint_dir: Path, out_dir: Path, block_size: int) -> dict[str, int | None]:
    """Copy/adjust tokenizer files into ``out_dir``; return bos/eos/pad ids for the generation config."""
    tok = Tokenizer(checkpoint_dir)
    src_config = {}
    if (checkpoint_dir / "tokenizer_config.json").is_file():
        src_config = json.loads((checkpoint_dir / "tokenizer_config.json").read_text())
    bos, eos = _token_text(tok, tok.bos_id), _token_text(tok, tok.eos_id)
    pad = src_config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = tok.token_to_id(pad) if pad else tok.eos_id

    if (checkpoint_dir / "tokenizer.json").is_file():
        spec = json.loads((checkpoint_dir / "tokenizer.json").read_text())
        if tok.use_bos and bos is not None and not spec.get("post_processor"):
            spec["post_processor"] = {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": bos, "type_id": 1}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {bos: {"id": bos, "ids": [tok.bos_id], "tokens": [bos]}},
            }
        atomic_write_json(out_dir / "tokenizer.json", spec, indent=None)
        tokenizer_class = src_config.get("tokenizer_class") or "PreTrainedTokenizerFast"
    if (checkpoint_dir / "tokenizer.model").is_file():
        shutil.copyfile(checkpoint_dir / "tokenizer.model", out_dir / "tokenizer.model")
        if not (checkpoint_dir / "tokenizer.json").is_file():
            tokenizer_class = src_config.get("tokenizer_class") or "LlamaTokenizer"

    config = {k: v for k, v in src_config.items() if k not in ("added_tokens_decoder",)}
    config |= {
        "tokenizer_class": tokenizer_class,
        "bos_token": bos,
        "eos_token": eos,
        "add_bos_token": tok.use_bos,
        "add_eos_token": False,
        "model_max_length": block_size,
    }
    if pad:
        config["pad_token"] = pad
    atomic_write_json(out_dir / "tokenizer_config.json", config)
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad)) if v is not None}
    atomic_write_json(out_dir / "special_tokens_map.json", special)
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": pad_id}
