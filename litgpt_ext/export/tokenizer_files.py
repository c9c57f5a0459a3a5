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


def export_tokenizer(
    checkpoint_dir: Path, out_dir: Path, block_size: int, template: str | None = None
) -> dict[str, int | None]:
    """Copy/adjust tokenizer files into ``out_dir``; return bos/eos/pad ids for the generation config. ``template``
    becomes the ``chat_template`` of ``tokenizer_config.json`` (see :func:`chosen_chat_template`)."""
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
    if template is not None:
        config["chat_template"] = template
    atomic_write_json(out_dir / "tokenizer_config.json", config)
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad)) if v is not None}
    atomic_write_json(out_dir / "special_tokens_map.json", special)
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": pad_id}


def chosen_chat_template(checkpoint_dir: Path, style) -> tuple[str | None, str]:
    """The ``chat_template`` the export carries, and where it came from.

    The style the student was trained with decides (``prompt_style.yaml``). The checkpoint's own template (an
    instruct model's, with tool calls and more) is kept when it renders a ``[system, user]`` and a ``[user]``
    conversation exactly as that style does; otherwise the style's template replaces it. Without a trained style
    the checkpoint's template, if any, stays as it is."""
    from litgpt.prompts import has_prompt_style

    from litgpt_ext.chat_template import ChatTemplateStyle, chat_template_text
    from litgpt_ext.export.chat_template import chat_template, render

    if isinstance(style, ChatTemplateStyle):
        return style.template.source, "the checkpoint's own chat template, which it was trained with"
    tok = Tokenizer(checkpoint_dir)
    original = chat_template_text(checkpoint_dir)
    if not has_prompt_style(checkpoint_dir):
        return original, "the checkpoint's own" if original else "none in the checkpoint"
    ours = chat_template(style, add_bos=bool(tok.use_bos and tok.bos_id is not None))
    if ours is None:
        return original, f"none: the {type(style).__name__} prompt style cannot be written as a chat template"
    if isinstance(original, str):
        bos, eos = _token_text(tok, tok.bos_id) or "", _token_text(tok, tok.eos_id) or ""
        probes = [
            [{"role": "user", "content": "Hi"}],
            [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
        ]
        try:
            same = all(render(original, m, bos, eos) == render(ours, m, bos, eos) for m in probes)
        except Exception:
            same = False
        if same:
            return original, "the checkpoint's own, which renders as the trained prompt style"
    return ours, f"written from the {type(style).__name__} prompt style in prompt_style.yaml"
